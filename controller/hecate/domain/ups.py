"""UPS snapshots: NUT variables turned into typed, defensive readings.

This is a purely computational module. A UPS (or its driver, or a cable) can report
anything: ``unknown``, blanks, negative runtimes, NaN, a charge of 4000 %. None of that
may raise, and none of it may look like a reason to shut a cluster down -- a value that
cannot be trusted becomes ``None`` ("not known") and the trigger treats it as such.
Status tokens Hecate does not know are kept (and shown) but never fatal.

The status is parsed from the raw value, as upsmon does (a token with a control character
in it is not a flag); what a snapshot keeps to be shown -- the status, the unknown tokens,
the variables -- is cleaned (:func:`hecate.domain.text.clean`) and capped, since upsd is
not Hecate's to trust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hecate.domain import text


class Flag(StrEnum):
    """The ``ups.status`` tokens NUT defines that Hecate understands."""

    OL = "OL"  # on line (mains)
    OB = "OB"  # on battery
    LB = "LB"  # low battery
    HB = "HB"  # high battery
    RB = "RB"  # replace battery
    CHRG = "CHRG"  # charging
    DISCHRG = "DISCHRG"  # discharging
    BYPASS = "BYPASS"  # on bypass
    CAL = "CAL"  # runtime calibration (a deliberate discharge)
    OFF = "OFF"  # output off
    OVER = "OVER"  # overloaded
    TRIM = "TRIM"  # trimming voltage
    BOOST = "BOOST"  # boosting voltage
    FSD = "FSD"  # forced shutdown (set by upsmon/upsd: everyone must go down)


KNOWN_FLAGS = frozenset(f.value for f in Flag)

# Plausible ranges; anything outside is "not known" rather than an exception or a trigger.
MAX_RUNTIME_S = 7 * 24 * 3600.0
MAX_LOAD_PCT = 400.0
MAX_VOLTAGE = 1000.0
MAX_UNKNOWN_TOKENS = 16
"""Unknown status tokens kept to show; the rest are dropped (the status itself is kept, capped)."""


def parse_number(raw: str | None, low: float, high: float) -> float | None:
    """A finite number within [low, high], or None for anything else (never raises)."""
    if raw is None:
        return None
    text = raw.strip()
    if not text or text.lower() in ("unknown", "n/a", "na", "none", "null", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < low or value > high:
        return None
    return value


def parse_status(raw: str | None) -> tuple[frozenset[Flag], tuple[str, ...]]:
    """Known flags and the unknown tokens (kept, in order) of a ``ups.status`` value."""
    flags: set[Flag] = set()
    unknown: list[str] = []
    for token in (raw or "").split():
        if token in KNOWN_FLAGS:
            flags.add(Flag(token))
        elif token not in unknown:
            unknown.append(token)
    return frozenset(flags), tuple(unknown)


@dataclass(frozen=True)
class Snapshot:
    """One poll of one UPS: either readings, or why there are none.

    ``reachable`` is False when upsd could not be asked at all; ``stale`` when upsd
    answered but has no current data (driver gone, ``DATA-STALE``). Either way the
    readings are empty and ``error`` says why.
    """

    ups: str
    at: float
    reachable: bool = True
    stale: bool = False
    error: str | None = None
    status: str | None = None
    flags: frozenset[Flag] = frozenset()
    unknown_tokens: tuple[str, ...] = ()
    runtime_s: float | None = None
    charge_pct: float | None = None
    load_pct: float | None = None
    input_voltage: float | None = None
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """upsd answered with current data."""
        return self.reachable and not self.stale

    @property
    def on_battery(self) -> bool:
        return self.ok and Flag.OB in self.flags

    @property
    def on_mains(self) -> bool:
        return self.ok and Flag.OL in self.flags and Flag.OB not in self.flags

    @property
    def waiting(self) -> bool:
        """upsd serves ``WAIT`` alone: its driver has started and sent no data yet (about a second)."""
        return self.ok and not self.flags and self.unknown_tokens == ("WAIT",)


def from_variables(ups: str, variables: Mapping[str, str], at: float) -> Snapshot:
    """Parse the variables upsd served for ``ups`` (``LIST VAR``) into a snapshot.

    Flags and numbers come from the raw values; the text kept to be shown is cleaned.
    """
    status = variables.get("ups.status")
    flags, unknown = parse_status(status)
    shown_unknown = tuple(dict.fromkeys(text.clean(t, text.MAX_VALUE_CHARS) or "?" for t in unknown))
    return Snapshot(
        ups=ups,
        at=at,
        status=None if status is None else text.clean(status, text.MAX_VALUE_CHARS),
        flags=flags,
        unknown_tokens=shown_unknown[:MAX_UNKNOWN_TOKENS],
        runtime_s=parse_number(variables.get("battery.runtime"), 0.0, MAX_RUNTIME_S),
        charge_pct=parse_number(variables.get("battery.charge"), 0.0, 100.0),
        load_pct=parse_number(variables.get("ups.load"), 0.0, MAX_LOAD_PCT),
        input_voltage=parse_number(variables.get("input.voltage"), 0.0, MAX_VOLTAGE),
        variables={text.clean(k, text.MAX_VALUE_CHARS): text.clean(v, text.MAX_VALUE_CHARS)
                   for k, v in variables.items()},
    )


def failed(ups: str, at: float, error: str, *, stale: bool) -> Snapshot:
    """A poll that got no current data: upsd unreachable (``stale=False``) or data stale.

    ``error`` may quote upsd: it is cleaned."""
    return Snapshot(ups=ups, at=at, reachable=stale, stale=stale, error=text.clean(error))
