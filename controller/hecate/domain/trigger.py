"""The shutdown decision: ``decide(previous, snapshots, thresholds, now) -> (state, decision)``.

This is a purely computational function with no side-effects; the monitor loop feeds it
one snapshot per UPS per poll and acts on what it returns. Each UPS runs a small state
machine, modelled on NUT's upsmon and hardened against its users' worst complaints:

    on_mains -> on_battery -> below_threshold (debouncing) -> critical

* **Runtime**: a protecting UPS on battery whose ``battery.runtime <= threshold`` for
  ``debounce_polls`` consecutive polls is critical. A reading above the threshold, or
  mains, resets the count (a one-poll glitch, or mains flapping faster than the debounce,
  never triggers). A poll whose runtime is not known neither counts nor resets -- unless the
  learned discharge model (:mod:`hecate.domain.discharge`) has an estimate for the UPS: then its
  conservative bound (estimate minus uncertainty) stands in for the runtime, debounced the same way.
* **Charge floor / time on battery** (optional, off by default; apcupsd's BATTERYLEVEL and
  TIMEOUT): a protecting UPS on battery whose ``battery.charge <= charge_floor_pct``, or
  that has been on battery for ``max_on_battery_s`` since the first on-battery poll of the
  outage (lost polls do not reset it, mains does), is critical after ``debounce_polls``
  consecutive polls, counted like the runtime's. The first trigger to fire wins.
* **Runtime sanity** (:mod:`hecate.domain.battery`): a runtime that is missing, implausible,
  ``0`` at a high charge, frozen, or rising against the charge is not trusted: the runtime
  trigger treats it as not known, and an untrusted reading raises ``runtime_untrusted`` (``zero`` only on
  battery: a nutdrv_qx unit reports it on mains always, an alert nobody can fix). ``frozen`` and
  ``rising`` doubt that the runtime is too *high*: such a reading at or below the threshold still counts.
* **Low battery / FSD**: ``OB`` + ``LB`` is critical on the first poll that shows it, as is
  ``FSD`` (another upsmon forcing shutdown).
* **Calibration** (``CAL``) is a deliberate discharge: its runtime and LB readings do not
  trigger (NUT #2104: a self-test led to a shutdown); FSD still does.
* **Driver starting** (``WAIT``): no data yet -- nothing changes but the deadtime clock.
* **Lost contact** (upsd unreachable, or data stale): critical only if the UPS was last
  seen on battery *and* has not been seen for longer than ``deadtime`` (NUT's DEADTIME;
  NUT #2454 shut down at once). Lost contact while last seen on mains -- or never seen --
  is an alert, never a shutdown.
* Only UPSes that protect the cluster can trigger; the others only raise alerts.
* A signed trigger from a peer host (:mod:`hecate.domain.peer`) is a decision too, reason
  ``peer``: :func:`latch` puts it in the same latch, so it starts the same shutdown.
* Once a shutdown is decided it is **latched** (like NUT's FSD): later polls return the
  same decision until the caller ``reset``s the state when the run ends.

"Runtime cannot cover the budget": a UPS on mains at full charge whose runtime is
already below the threshold raises an alert -- the batteries can no longer carry a full
shutdown, which no other UPS tool can say because none measures the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hecate.domain import battery
from hecate.domain.discharge import RuntimeEstimate
from hecate.domain.ups import Flag, Snapshot

FULL_CHARGE_PCT = 95.0


class Phase(StrEnum):
    unknown = "unknown"  # never read
    on_mains = "on_mains"
    on_battery = "on_battery"
    below_threshold = "below_threshold"  # on battery, runtime at or below threshold, debouncing
    critical = "critical"
    lost = "lost"  # no current data (unreachable or stale); see UpsState.last_on_battery


class Reason(StrEnum):
    runtime = "runtime"
    low_battery = "low_battery"
    fsd = "fsd"
    deadtime = "deadtime"
    peer = "peer"  # a trusted peer host's signed trigger (its own UPS ran out)
    charge_floor = "charge_floor"
    time_on_battery = "time_on_battery"


class AlertKind(StrEnum):
    unreachable = "unreachable"
    stale = "stale"
    runtime_short = "runtime_short"
    replace_battery = "replace_battery"
    overload = "overload"
    unknown_status = "unknown_status"
    calibrating = "calibrating"
    runtime_untrusted = "runtime_untrusted"


@dataclass(frozen=True)
class Thresholds:
    """What the decision needs to know, already resolved from config and the budget."""

    threshold_s: float
    debounce_polls: int = 3
    deadtime_s: float = 15.0
    protecting: frozenset[str] = frozenset()
    """UPS names that feed the cluster; only these can trigger a shutdown."""
    charge_floor_pct: float | None = None
    """On battery, ``battery.charge`` at or below this triggers (debounced); None: off."""
    max_on_battery_s: float | None = None
    """On battery this long (from the outage's first on-battery poll) triggers (debounced); None: off."""
    sanity: battery.Limits = field(default_factory=battery.Limits)
    estimates: Mapping[str, RuntimeEstimate] = field(default_factory=dict)
    """The discharge model's runtime estimate per UPS, used when the UPS reports no runtime."""


@dataclass(frozen=True)
class UpsState:
    phase: Phase = Phase.unknown
    below_polls: int = 0
    """Consecutive polls on battery with runtime <= threshold."""
    last_seen_at: float | None = None
    """When upsd last served current data for this UPS."""
    last_on_battery: bool = False
    """Whether that last current reading was on battery."""
    floor_polls: int = 0
    """Consecutive polls on battery with the charge <= the charge floor."""
    overtime_polls: int = 0
    """Consecutive polls on battery past ``max_on_battery_s``."""
    on_battery_since: float | None = None
    """When the first on-battery poll of this outage read (None on mains)."""
    runtime: battery.Verdict = field(default_factory=battery.Verdict)
    """Whether the last current reading's runtime is trusted, and if not why."""
    runtime_memory: battery.Memory = field(default_factory=battery.Memory)


@dataclass(frozen=True)
class PeerTrigger:
    """What a peer host said when it decided (its signed, schema-checked trigger)."""

    peer: str
    key_id: str
    reason: str
    """The peer's own reason (``runtime``, ``low_battery``, ...)."""
    detail: str
    decided_at: str
    """When the peer decided, RFC 3339, as it sent it."""
    ups: tuple[Mapping[str, object], ...] = ()
    """The peer's UPS readings (name, status, runtime_s, charge_pct, load_pct)."""


@dataclass(frozen=True)
class Decision:
    """A shutdown decision: which UPS, why, with the readings that led to it."""

    ups: str
    reason: Reason
    at: float
    detail: str
    runtime_s: float | None = None
    threshold_s: float | None = None
    peer: PeerTrigger | None = None
    """Set for ``Reason.peer``: who triggered and on what readings (``ups`` then names its UPSes)."""


@dataclass(frozen=True)
class Alert:
    ups: str
    kind: AlertKind
    message: str


@dataclass(frozen=True)
class Transition:
    ups: str
    before: Phase
    after: Phase
    at: float


@dataclass(frozen=True)
class State:
    ups: Mapping[str, UpsState] = field(default_factory=dict)
    latched: Decision | None = None


@dataclass(frozen=True)
class Outcome:
    """What one poll decided: the (possibly latched) shutdown, alerts, and phase edges."""

    shutdown: Decision | None
    fresh: bool = False
    """True on the poll that decided the shutdown (False while it is merely latched)."""
    alerts: tuple[Alert, ...] = ()
    transitions: tuple[Transition, ...] = ()


def reset(state: State) -> State:
    """Clear the latch (the run ended) and every debounce count; keep what was last seen."""
    return State(
        ups={name: replace(s, below_polls=0, floor_polls=0, overtime_polls=0, phase=_settled(s.phase))
             for name, s in state.ups.items()},
        latched=None,
    )


def latch(state: State, decision: Decision) -> tuple[State, bool]:
    """Latch a decision made outside the polls (a peer's trigger); True when it is fresh, False when a
    shutdown was already latched (that one stands)."""
    if state.latched is not None:
        return state, False
    return State(state.ups, decision), True


def decide(previous: State, snapshots: Iterable[Snapshot], thresholds: Thresholds, now: float) -> tuple[State, Outcome]:
    states = dict(previous.ups)
    alerts: list[Alert] = []
    transitions: list[Transition] = []
    criticals: list[Decision] = []
    for snap in snapshots:
        before = states.get(snap.ups, UpsState())
        after, decision = _step(before, snap, thresholds, now)
        states[snap.ups] = after
        alerts.extend(_alerts(snap, after, thresholds))
        if after.phase is not before.phase:
            transitions.append(Transition(snap.ups, before.phase, after.phase, now))
        if decision is not None and snap.ups in thresholds.protecting:
            criticals.append(decision)
    latched = previous.latched or (criticals[0] if criticals else None)
    fresh = previous.latched is None and latched is not None
    return State(states, latched), Outcome(latched, fresh, tuple(alerts), tuple(transitions))


def _step(state: UpsState, snap: Snapshot, thresholds: Thresholds, now: float) -> tuple[UpsState, Decision | None]:
    if not snap.ok or snap.waiting:  # no current data (a starting driver's WAIT: none yet)
        silent_for = None if state.last_seen_at is None else now - state.last_seen_at
        if state.last_on_battery and silent_for is not None and silent_for > thresholds.deadtime_s:
            detail = (f"last seen on battery {silent_for:.1f} s ago, longer than deadtime "
                      f"{thresholds.deadtime_s:g} s ({snap.error or snap.status})")
            return replace(state, phase=Phase.critical), Decision(snap.ups, Reason.deadtime, now, detail)
        if state.phase is Phase.critical or snap.waiting:
            return state, None
        return replace(state, phase=Phase.lost), None

    # Only a reading that says OB or OL updates "last seen on battery": a driver restarting
    # (WAIT, OFF, empty) must not erase it, or a UPS that then goes silent never reaches deadtime.
    knows = Flag.OB in snap.flags or Flag.OL in snap.flags
    verdict, memory = battery.judge(state.runtime_memory, snap, thresholds.sanity)
    seen = replace(state, last_seen_at=snap.at, last_on_battery=snap.on_battery if knows else state.last_on_battery,
                   runtime=verdict, runtime_memory=memory)
    runtime = snap.runtime_s if verdict.trusted or _too_high_at_most(verdict, snap, thresholds) else None
    if Flag.FSD in snap.flags:
        return replace(seen, phase=Phase.critical), Decision(
            snap.ups, Reason.fsd, now, f"UPS reports forced shutdown ({snap.status})", runtime)
    if not snap.on_battery:
        since = None if snap.on_mains else state.on_battery_since
        return replace(seen, phase=Phase.on_mains if snap.on_mains else Phase.unknown, below_polls=0, floor_polls=0,
                       overtime_polls=0, on_battery_since=since), None
    if Flag.CAL in snap.flags:  # a deliberate discharge: watch, do not act
        return replace(seen, phase=Phase.on_battery, below_polls=0, floor_polls=0, overtime_polls=0,
                       on_battery_since=None), None
    if Flag.LB in snap.flags:
        return replace(seen, phase=Phase.critical), Decision(
            snap.ups, Reason.low_battery, now, f"UPS on battery reports low battery ({snap.status})",
            runtime, thresholds.threshold_s)
    estimate = None  # no trusted runtime: the discharge model's conservative bound stands in, when it has one
    if runtime is None and (estimate := thresholds.estimates.get(snap.ups)) is not None:
        runtime = estimate.conservative_s
    since = snap.at if state.on_battery_since is None else state.on_battery_since
    floor, limit = thresholds.charge_floor_pct, thresholds.max_on_battery_s
    below = _count(state.below_polls, None if runtime is None else runtime <= thresholds.threshold_s)
    low = _count(state.floor_polls, None if floor is None or snap.charge_pct is None else snap.charge_pct <= floor)
    over = _count(state.overtime_polls, None if limit is None else snap.at - since >= limit)
    after = replace(seen, below_polls=below, floor_polls=low, overtime_polls=over, on_battery_since=since)
    n = thresholds.debounce_polls
    decision = None
    if runtime is not None and below >= n:  # a trigger fires on a poll that shows its condition
        doubted = "" if verdict.trusted else f" ({verdict.doubt}: doubted as too high, counted at or below)"
        what = f"runtime {runtime:g} s{doubted}" if estimate is None else (
            f"estimated runtime {runtime:.0f} s ({estimate.seconds:.0f} s - {estimate.uncertainty_s:.0f} s, "
            f"from {estimate.outages} recorded outage{'s' if estimate.outages != 1 else ''})")
        detail = f"{what} <= threshold {thresholds.threshold_s:g} s for {below} consecutive polls"
        decision = Decision(snap.ups, Reason.runtime, now, detail, runtime, thresholds.threshold_s)
    elif floor is not None and snap.charge_pct is not None and low >= n:
        detail = f"charge {snap.charge_pct:g} % <= charge floor {floor:g} % for {low} consecutive polls"
        decision = Decision(snap.ups, Reason.charge_floor, now, detail, runtime, thresholds.threshold_s)
    elif limit is not None and over >= n:
        detail = f"on battery for {snap.at - since:.1f} s >= max_on_battery_s {limit:g} s for {over} consecutive polls"
        decision = Decision(snap.ups, Reason.time_on_battery, now, detail, runtime, thresholds.threshold_s)
    if decision is not None:
        return replace(after, phase=Phase.critical), decision
    return replace(after, phase=Phase.below_threshold if below or low or over else Phase.on_battery), None


def _too_high_at_most(verdict: battery.Verdict, snap: Snapshot, thresholds: Thresholds) -> bool:
    """A runtime doubted as too high (frozen, rising) that is at or below the threshold anyway: it counts."""
    return (verdict.doubt in (battery.Doubt.frozen, battery.Doubt.rising) and snap.runtime_s is not None
            and snap.runtime_s <= thresholds.threshold_s)


def _count(polls: int, holds: bool | None) -> int:
    """A debounce count after one poll: ``holds`` None (not known) neither counts nor resets."""
    return polls if holds is None else (polls + 1 if holds else 0)


def _alerts(snap: Snapshot, state: UpsState, thresholds: Thresholds) -> list[Alert]:
    out: list[Alert] = []
    if not snap.reachable:
        out.append(Alert(snap.ups, AlertKind.unreachable, f"upsd unreachable: {snap.error}"))
    elif snap.stale:
        out.append(Alert(snap.ups, AlertKind.stale, f"no current data: {snap.error}"))
    if not snap.ok or snap.waiting:
        return out
    trusted = state.runtime.trusted
    doubt = state.runtime.doubt
    # missing is shown in status, not alerted; nutdrv_qx units report a zero on mains always: on battery only
    if not trusted and doubt is not battery.Doubt.missing and (doubt is not battery.Doubt.zero or snap.on_battery):
        ignored = ("counts it only at or below the threshold" if doubt in (battery.Doubt.frozen, battery.Doubt.rising)
                   else "ignores it")
        out.append(Alert(snap.ups, AlertKind.runtime_untrusted,
                         f"runtime not trusted ({doubt}): {state.runtime.why}; the runtime trigger {ignored}"))
    if (trusted and snap.on_mains and snap.charge_pct is not None and snap.charge_pct >= FULL_CHARGE_PCT
            and snap.runtime_s is not None and snap.runtime_s < thresholds.threshold_s):
        out.append(Alert(snap.ups, AlertKind.runtime_short, (
            f"on mains at {snap.charge_pct:g} % charge the runtime is {snap.runtime_s:g} s, below the "
            f"shutdown threshold {thresholds.threshold_s:g} s: the batteries cannot carry a full shutdown")))
    if Flag.CAL in snap.flags and snap.on_battery:
        out.append(Alert(snap.ups, AlertKind.calibrating,
                         "runtime calibration (a deliberate discharge): runtime and LB do not trigger, FSD still does"))
    if Flag.RB in snap.flags:
        out.append(Alert(snap.ups, AlertKind.replace_battery, "UPS asks for its battery to be replaced"))
    if Flag.OVER in snap.flags:
        out.append(Alert(snap.ups, AlertKind.overload, "UPS is overloaded"))
    if snap.unknown_tokens or not snap.flags:
        out.append(Alert(snap.ups, AlertKind.unknown_status, f"status not understood: {snap.status!r}"))
    return out


def _settled(phase: Phase) -> Phase:
    return Phase.on_battery if phase in (Phase.below_threshold, Phase.critical) else phase
