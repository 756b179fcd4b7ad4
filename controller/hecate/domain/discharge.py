"""The learned discharge model: a runtime estimate for a UPS that does not report one.

316 of the 718 device dumps in NUT's device-data library have no ``battery.runtime``; with
none, the runtime trigger has nothing to read. But every UPS reports its charge, and most
its load, so Hecate records each outage's on-battery samples (``discharge.json`` in the
state dir, written by :mod:`hecate.adapters.store`) and learns from them how fast the charge
falls. This module is the pure part: the file's format, the per-outage fall rate, the
per-UPS model and the estimate with its uncertainty. Purely computational; nothing here
raises on garbage samples (a sample that is not a finite number in range is skipped).

The model, per UPS (docs/decisions.md, "The learned discharge model"):

* **Per outage**, the charge fall rate (%/s) is the least-squares slope of charge over time,
  and the outage's load the mean of its load readings. An outage counts only with at least
  :data:`MIN_SAMPLES` charge readings over :data:`MIN_SPAN_S` seconds in which the fitted
  charge fell by at least :data:`MIN_DROP_PCT` points: a short blip says nothing.
* **Across outages**, the rate is a line in the load, ``rate = a + b x load``, fitted by least
  squares when at least two counting outages have loads at least :data:`MIN_LOAD_RANGE_PCT`
  apart (a negative slope -- more load, slower fall -- is noise: the line is then flat);
  otherwise the rate is the mean of the outages' rates. The rate used is never below
  :data:`RATE_FLOOR_FRACTION` of the fastest recorded one (a line extrapolated to a light
  load cannot promise an endless battery); above the heaviest recorded load it is at least the
  rate at that load times load / heaviest (a flat model, learned at one load, scales too); with
  no load reading now, it is the fastest.
* **The estimate** is ``(charge - empty) / rate``: ``empty`` is the charge at which the UPS
  reports low battery (``battery.charge.low``) when it says, else 0 %.
* **The uncertainty** is the estimate times a relative error ``sqrt(spread^2 + PRIOR^2 / n)``:
  ``spread`` is the RMS of the outages' relative deviations from the model, and the prior
  term (:data:`PRIOR_REL`) stands for what few outages cannot show (one outage: +-30 %),
  shrinking as consistent outages add up. The trigger uses the conservative bound, the
  estimate minus its uncertainty. At :data:`MAX_REL` or more the outages disagree too much
  to say anything: the model gives no estimate (:attr:`Model.scattered`), and the UPS keeps
  the triggers it has without a runtime.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hecate.domain.ups import MAX_LOAD_PCT, MAX_RUNTIME_S, MAX_VOLTAGE

SCHEMA_VERSION = 1
MAX_OUTAGES_PER_UPS = 20
"""Outages kept per UPS in the state file (the most recent)."""
MAX_SAMPLES = 300
"""Samples kept per outage (a longer outage keeps every other sample, repeatedly: its whole span stays)."""
MIN_SAMPLES = 5
MIN_SPAN_S = 10.0
MIN_DROP_PCT = 3.0
MIN_LOAD_RANGE_PCT = 5.0
RATE_FLOOR_FRACTION = 0.25
PRIOR_REL = 0.3
MAX_REL = 0.5
"""At this relative uncertainty or more there is no estimate: a bound of less than half the estimate (down to
0, which would trigger at once) says the outages disagree, not how long the battery lasts."""
SCATTERED = "outages too scattered to estimate"


class Corrupt(ValueError):
    """The discharge history is not one Hecate wrote (not JSON, or not its shape)."""


@dataclass(frozen=True)
class Sample:
    """One on-battery poll: seconds since the outage began and what the UPS reported."""

    t: float
    charge_pct: float | None
    load_pct: float | None = None
    battery_voltage: float | None = None
    runtime_s: float | None = None


@dataclass(frozen=True)
class Outage:
    """One stretch on battery of one UPS, as recorded."""

    ups: str
    started_at: str
    """Wall time (RFC 3339) the outage began: with ``ups`` it names the outage (a later write replaces it)."""
    samples: tuple[Sample, ...]
    ended: bool = True
    """False when written before its end (at the shutdown decision, or when its run ended)."""


@dataclass(frozen=True)
class OutageRate:
    """What one counting outage says: how fast the charge fell, at what load."""

    started_at: str
    rate_pct_per_s: float
    load_pct: float | None
    span_s: float


@dataclass(frozen=True)
class RuntimeEstimate:
    """The model's remaining runtime now, with its uncertainty."""

    seconds: float
    uncertainty_s: float
    outages: int
    """How many recorded outages the model learned from."""
    rate_pct_per_s: float
    empty_pct: float

    @property
    def conservative_s(self) -> float:
        """The estimate minus its uncertainty, never negative: what the trigger uses."""
        return max(0.0, self.seconds - self.uncertainty_s)


@dataclass(frozen=True)
class Model:
    """One UPS's charge fall rate as a function of load, learned from its outages."""

    ups: str
    rates: tuple[OutageRate, ...]
    intercept: float
    """%/s at no load (the mean rate when the line is flat)."""
    slope: float
    """%/s per load percent (0: flat)."""
    rel_uncertainty: float

    @property
    def scattered(self) -> bool:
        """The outages disagree too much (:data:`MAX_REL`): the model gives no estimate."""
        return self.rel_uncertainty >= MAX_REL

    def rate_at(self, load_pct: float | None) -> float:
        """The fall rate at ``load_pct``: along the line (floored at :data:`RATE_FLOOR_FRACTION` of the fastest
        recorded rate); above the heaviest recorded load, at least the rate there scaled by load / that load (a
        flat model learned at one load knows nothing of a heavier one); with no load, the fastest."""
        fastest = max(r.rate_pct_per_s for r in self.rates)
        if load_pct is None or not math.isfinite(load_pct):
            return fastest
        rate = max(self.intercept + self.slope * load_pct, RATE_FLOOR_FRACTION * fastest)
        heaviest = max((r.load_pct for r in self.rates if r.load_pct is not None), default=None)
        if heaviest is not None and load_pct > heaviest:
            at_heaviest = max(self.intercept + self.slope * heaviest, RATE_FLOOR_FRACTION * fastest)
            rate = max(rate, at_heaviest * load_pct / max(heaviest, 1.0))
        return rate

    def estimate(self, charge_pct: float | None, load_pct: float | None, empty_pct: float | None = None) -> \
            RuntimeEstimate | None:
        """The runtime from ``charge_pct`` at ``load_pct`` down to ``empty_pct`` (None: 0 %); None without a
        usable charge, or when the model is :attr:`scattered`."""
        if self.scattered:
            return None
        if charge_pct is None or not math.isfinite(charge_pct) or not 0 <= charge_pct <= 100:
            return None
        empty = empty_pct if empty_pct is not None and math.isfinite(empty_pct) and 0 <= empty_pct < 100 else 0.0
        if load_pct is not None and not (math.isfinite(load_pct) and 0 <= load_pct <= MAX_LOAD_PCT):
            load_pct = None
        rate = self.rate_at(load_pct)
        seconds = min(max(0.0, charge_pct - empty) / rate, MAX_RUNTIME_S)
        return RuntimeEstimate(seconds, seconds * self.rel_uncertainty, len(self.rates), rate, empty)


def _finite(value: float | None, low: float, high: float) -> float | None:
    if value is None or not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def outage_rate(outage: Outage) -> OutageRate | None:
    """The outage's charge fall rate, or None when it does not count (too short, too few samples, no fall)."""
    points = sorted((s.t, c) for s in outage.samples
                    if _finite(s.t, 0.0, MAX_RUNTIME_S) is not None
                    and (c := _finite(s.charge_pct, 0, 100)) is not None)
    if len(points) < MIN_SAMPLES:
        return None
    span = points[-1][0] - points[0][0]
    if span < MIN_SPAN_S:
        return None
    slope = _slope(points)
    if slope is None or -slope * span < MIN_DROP_PCT:
        return None
    loads = [v for s in outage.samples if (v := _finite(s.load_pct, 0, MAX_LOAD_PCT)) is not None]
    load = sum(loads) / len(loads) if loads else None
    return OutageRate(outage.started_at, -slope, load, span)


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def fit(ups: str, outages: Iterable[Outage]) -> Model | None:
    """The UPS's model from its recorded outages; None before any outage counts."""
    rates = tuple(r for o in outages if o.ups == ups and (r := outage_rate(o)) is not None)
    if not rates:
        return None
    with_load = [r for r in rates if r.load_pct is not None]
    loads = [r.load_pct for r in with_load if r.load_pct is not None]
    intercept, slope, used = sum(r.rate_pct_per_s for r in rates) / len(rates), 0.0, rates
    if len(with_load) >= 2 and max(loads) - min(loads) >= MIN_LOAD_RANGE_PCT:
        line = _slope([(load, r.rate_pct_per_s) for load, r in zip(loads, with_load, strict=True)])
        if line is not None and line > 0:
            mean_load = sum(loads) / len(loads)
            mean_rate = sum(r.rate_pct_per_s for r in with_load) / len(with_load)
            intercept, slope, used = mean_rate - line * mean_load, line, tuple(with_load)
    model = Model(ups, used, intercept, slope, 0.0)
    deviations = [r.rate_pct_per_s / model.rate_at(r.load_pct if slope else 0.0) - 1 for r in used]
    spread = math.sqrt(sum(d * d for d in deviations) / len(deviations))
    rel = math.sqrt(spread ** 2 + PRIOR_REL ** 2 / len(used))
    return Model(ups, used, intercept, slope, rel)


def fit_all(history: Mapping[str, Sequence[Outage]]) -> dict[str, Model]:
    """A model for each UPS that has a counting outage."""
    return {ups: m for ups, outages in history.items() if (m := fit(ups, outages)) is not None}


def thin(samples: Sequence[Sample], limit: int = MAX_SAMPLES) -> tuple[Sample, ...]:
    """At most ``limit`` samples spanning the same time: every other one is dropped until they fit (the
    last one is always kept)."""
    kept = list(samples)
    while len(kept) > max(2, limit):
        kept = [*kept[:-1:2], kept[-1]]
    return tuple(kept)


def merge(history: Mapping[str, Sequence[Outage]], outages: Iterable[Outage]) -> dict[str, list[Outage]]:
    """``history`` with ``outages`` added (one with the same UPS and start replaces the one recorded), each
    UPS's list oldest first and capped at :data:`MAX_OUTAGES_PER_UPS`, each outage at :data:`MAX_SAMPLES`."""
    merged = {ups: list(items) for ups, items in history.items()}
    for outage in outages:
        items = [o for o in merged.get(outage.ups, []) if o.started_at != outage.started_at]
        items.append(Outage(outage.ups, outage.started_at, thin(outage.samples), outage.ended))
        items.sort(key=lambda o: o.started_at)
        merged[outage.ups] = items[-MAX_OUTAGES_PER_UPS:]
    return merged


# -- the state file (docs/runs.md, "Discharge history") -------------------------------------------

def dump(history: Mapping[str, Sequence[Outage]]) -> bytes:
    doc = {"version": SCHEMA_VERSION, "ups": {
        ups: [{"started_at": o.started_at, "ended": o.ended,
               "samples": [[s.t, s.charge_pct, s.load_pct, s.battery_voltage, s.runtime_s] for s in o.samples]}
              for o in outages]
        for ups, outages in sorted(history.items())}}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def parse(data: bytes) -> dict[str, list[Outage]]:
    """The history in ``data``; :class:`Corrupt` when it is not the file's shape. A sample whose values are
    not numbers in range keeps ``None`` for them (or is dropped, without a time): never an error."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise Corrupt(f"not JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("version") != SCHEMA_VERSION or not isinstance(doc.get("ups"), dict):
        raise Corrupt(f"not a version {SCHEMA_VERSION} discharge history")
    history: dict[str, list[Outage]] = {}
    for ups, items in doc["ups"].items():
        if not isinstance(items, list):
            raise Corrupt(f"UPS {ups!r}: not a list of outages")
        outages = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("started_at"), str) \
                    or not isinstance(item.get("samples"), list):
                raise Corrupt(f"UPS {ups!r}: an outage without started_at and samples")
            samples = tuple(s for raw in item["samples"] if (s := _sample(raw)) is not None)
            outages.append(Outage(ups, item["started_at"], thin(samples), item.get("ended") is not False))
        outages.sort(key=lambda o: o.started_at)
        history[ups] = outages[-MAX_OUTAGES_PER_UPS:]
    return history


def _sample(raw: object) -> Sample | None:
    if not isinstance(raw, list) or len(raw) < 2:
        return None
    values = [_number(v) for v in raw[:5]] + [None] * (5 - len(raw[:5]))
    t = _finite(values[0], 0.0, MAX_RUNTIME_S)
    if t is None:
        return None
    return Sample(t, _finite(values[1], 0, 100), _finite(values[2], 0, MAX_LOAD_PCT),
                  _finite(values[3], 0, MAX_VOLTAGE), _finite(values[4], 0, MAX_RUNTIME_S))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
