"""The shutdown decision, table-driven and property-based."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from hecate.domain import trigger
from hecate.domain.trigger import AlertKind, Phase, Reason, State, Thresholds
from hecate.domain.ups import MAX_RUNTIME_S, Snapshot, failed, from_variables, parse_number

THRESHOLDS = Thresholds(threshold_s=330.0, debounce_polls=3, deadtime_s=15.0, protecting=frozenset({"pyr", "sta"}))


def snap(status: str = "OL", runtime: str | None = "1800", charge: str = "100", ups: str = "pyr",
         at: float = 0.0) -> Snapshot:
    variables = {"ups.status": status, "battery.charge": charge}
    if runtime is not None:
        variables["battery.runtime"] = runtime
    return from_variables(ups, variables, at)


def run(readings: Iterable[Snapshot | Sequence[Snapshot]], thresholds: Thresholds = THRESHOLDS,
        dt: float = 1.0) -> list[trigger.Outcome]:
    """Feed one poll per item (a snapshot or several), ``dt`` seconds apart."""
    state, outcomes = State(), []
    for i, item in enumerate(readings):
        polls = [item] if isinstance(item, Snapshot) else list(item)
        state, outcome = trigger.decide(state, polls, thresholds, now=i * dt)
        outcomes.append(outcome)
    return outcomes


def first_shutdown(outcomes: list[trigger.Outcome]) -> int | None:
    return next((i for i, o in enumerate(outcomes) if o.shutdown is not None), None)


def test_steady_mains_never_triggers() -> None:
    assert first_shutdown(run([snap()] * 50)) is None


def test_on_battery_above_threshold_does_not_trigger() -> None:
    assert first_shutdown(run([snap("OB DISCHRG", "900")] * 50)) is None


def test_runtime_crossing_triggers_after_exactly_debounce_polls() -> None:
    outcomes = run([snap("OB DISCHRG", "900"), snap("OB DISCHRG", "330"), snap("OB DISCHRG", "300"),
                    snap("OB DISCHRG", "290"), snap("OB DISCHRG", "280")])
    assert first_shutdown(outcomes) == 3  # polls 1, 2, 3 at or below 330 s
    decision = outcomes[3].shutdown
    assert decision is not None
    assert (decision.ups, decision.reason, decision.runtime_s, decision.threshold_s) == (
        "pyr", Reason.runtime, 290.0, 330.0)
    assert outcomes[3].fresh
    assert not outcomes[4].fresh
    assert outcomes[4].shutdown == decision  # latched


def test_one_poll_glitch_does_not_trigger() -> None:
    readings = [snap("OB DISCHRG", "900"), snap("OB DISCHRG", "0")] + [snap("OB DISCHRG", "900")] * 10
    assert first_shutdown(run(readings)) is None


def test_mains_flapping_faster_than_debounce_does_not_trigger() -> None:
    flapping = [snap("OB DISCHRG", "100"), snap("OB DISCHRG", "100"), snap("OL CHRG", "100")] * 20
    assert first_shutdown(run(flapping)) is None


def test_unknown_runtime_neither_counts_nor_resets() -> None:
    readings = [snap("OB", "300"), snap("OB", "unknown"), snap("OB", "300"), snap("OB", None), snap("OB", "300")]
    assert first_shutdown(run(readings)) == 4


def test_low_battery_triggers_on_the_first_poll() -> None:
    outcomes = run([snap(), snap("OB LB DISCHRG", "900")])
    assert first_shutdown(outcomes) == 1
    assert outcomes[1].shutdown is not None
    assert outcomes[1].shutdown.reason is Reason.low_battery


def test_lb_on_mains_does_not_trigger() -> None:
    assert first_shutdown(run([snap("OL LB CHRG", "60")] * 5)) is None


def test_fsd_triggers() -> None:
    outcomes = run([snap(), snap("FSD OL")])
    assert outcomes[1].shutdown is not None
    assert outcomes[1].shutdown.reason is Reason.fsd


def test_calibration_discharge_does_not_trigger_but_fsd_does() -> None:
    assert first_shutdown(run([snap("OB CAL DISCHRG LB", "10")] * 10)) is None
    assert first_shutdown(run([snap("OB CAL FSD", "10")])) == 0


def lost(at: float = 0.0, stale: bool = False, ups: str = "pyr") -> Snapshot:
    return failed(ups, at, "connection refused", stale=stale)


def test_lost_on_mains_is_an_alert_never_a_shutdown() -> None:
    outcomes = run([snap(at=0)] + [lost(at=i) for i in range(1, 200)])
    assert first_shutdown(outcomes) is None
    assert {a.kind for a in outcomes[-1].alerts} == {AlertKind.unreachable}


def test_stale_on_mains_is_an_alert() -> None:
    outcomes = run([snap(at=0)] + [lost(at=i, stale=True) for i in range(1, 60)])
    assert first_shutdown(outcomes) is None
    assert outcomes[-1].alerts[0].kind is AlertKind.stale


def test_lost_on_battery_triggers_after_deadtime_not_before() -> None:
    """NUT #2454: comm loss on battery must wait DEADTIME, counted from when it was last seen."""
    readings = [snap("OB DISCHRG", "900", at=0)] + [lost(at=i) for i in range(1, 30)]
    outcomes = run(readings)
    index = first_shutdown(outcomes)
    assert index == 16  # last seen at 0, deadtime 15 s: first poll with silence > 15 s
    decision = outcomes[16].shutdown
    assert decision is not None
    assert decision.reason is Reason.deadtime


def test_lost_then_back_within_deadtime_does_not_trigger() -> None:
    readings = [snap("OB", "900", at=0)] + [lost(at=i) for i in range(1, 10)] + [
        snap("OB", "900", at=i) for i in range(10, 40)]
    assert first_shutdown(run(readings)) is None


def test_never_seen_and_unreachable_does_not_trigger() -> None:
    assert first_shutdown(run([lost(at=i) for i in range(100)])) is None


def test_two_ups_only_the_falling_one_is_named() -> None:
    readings = [[snap(ups="pyr"), snap("OB", "100", ups="sta")] for _ in range(3)]
    outcomes = run(readings)
    decision = outcomes[2].shutdown
    assert decision is not None
    assert decision.ups == "sta"


def test_a_ups_that_does_not_protect_the_cluster_never_triggers() -> None:
    thresholds = Thresholds(threshold_s=330, protecting=frozenset({"pyr"}))
    outcomes = run([[snap(ups="pyr"), snap("OB LB FSD", "1", ups="other")]] * 5, thresholds)
    assert first_shutdown(outcomes) is None


def test_runtime_cannot_cover_the_budget_alarm() -> None:
    [short] = run([snap("OL", "200", charge="100")])
    assert [a.kind for a in short.alerts] == [AlertKind.runtime_short]
    [charging] = run([snap("OL CHRG", "200", charge="40")])
    assert charging.alerts == ()  # not full yet: says nothing about the batteries


def test_transitions_are_edges() -> None:
    outcomes = run([snap(), snap(), snap("OB", "900"), snap("OB", "300"), snap("OB", "300"), snap("OB", "300")])
    edges = [(t.before, t.after) for o in outcomes for t in o.transitions]
    assert edges == [
        (Phase.unknown, Phase.on_mains), (Phase.on_mains, Phase.on_battery),
        (Phase.on_battery, Phase.below_threshold), (Phase.below_threshold, Phase.critical),
    ]


def test_reset_clears_the_latch() -> None:
    state, outcome = trigger.decide(State(), [snap("OB LB")], THRESHOLDS, 0)
    assert outcome.shutdown is not None
    state = trigger.reset(state)
    assert state.latched is None
    state, outcome = trigger.decide(state, [snap("OL")], THRESHOLDS, 1)
    assert outcome.shutdown is None


# -- properties -------------------------------------------------------------------------

garbage = st.one_of(
    st.sampled_from(["", " ", "unknown", "nan", "NaN", "inf", "-inf", "-5", "1e309", "9" * 40, "0x10",
                     "12,5", "null", "ÿ", "\x00"]),
    st.text(max_size=12),
).filter(lambda text: parse_number(text, 0.0, MAX_RUNTIME_S) is None)  # text can spell a valid number
mains_status = st.sampled_from(["OL", "OL CHRG", "OL BOOST", "OL TRIM", "OL LB", "OL RB", "OL HB", "OL BYPASS",
                                "OL OVER", "OL CHRG LB", "OL ECO", "OL ALARM"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(mains_status, st.one_of(garbage, st.integers(0, 5000).map(str)), garbage),
                min_size=1, max_size=60))
def test_property_readings_that_stay_on_mains_never_trigger(readings: list[tuple[str, str, str]]) -> None:
    outcomes = run([snap(status, runtime, charge) for status, runtime, charge in readings])
    assert first_shutdown(outcomes) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["OB", "OB DISCHRG", "OL", ""]), garbage, garbage), min_size=1,
                max_size=60))
def test_property_garbage_values_never_trigger(readings: list[tuple[str, str, str]]) -> None:
    # Runtime and charge are garbage; no LB/FSD in the status: nothing may trigger.
    outcomes = run([snap(status, runtime, charge) for status, runtime, charge in readings])
    assert first_shutdown(outcomes) is None


@settings(max_examples=300, deadline=None)
@given(
    # from 1 s: a 0 at full charge marks the UPS's firmware as one whose 0 means "no estimate" (battery.py)
    before=st.lists(st.tuples(st.sampled_from(["OL", "OB DISCHRG", "OL CHRG"]), st.integers(1, 5000)),
                    max_size=20),
    runtimes=st.lists(st.integers(0, 330), min_size=3, max_size=10),
    debounce=st.integers(1, 5),
)
def test_property_sustained_crossing_triggers_within_debounce_polls(
    before: list[tuple[str, int]], runtimes: list[int], debounce: int
) -> None:
    thresholds = Thresholds(threshold_s=330, debounce_polls=debounce, protecting=frozenset({"pyr"}))
    prefix = [snap(status, str(rt)) for status, rt in before]
    crossing = [snap("OB DISCHRG", str(rt), charge="20") for rt in runtimes + [0] * debounce]
    outcomes = run(prefix + crossing, thresholds)
    index = first_shutdown(outcomes)
    assert index is not None
    # Never later than debounce polls into the sustained crossing (earlier only if the prefix
    # already ended below the threshold on battery).
    assert index <= len(prefix) + debounce - 1


def test_a_driver_restart_does_not_erase_last_seen_on_battery() -> None:
    readings = [snap("OB DISCHRG", "900", at=0), snap("WAIT", None, at=1)] + [lost(at=i) for i in range(2, 30)]
    outcomes = run(readings)
    assert first_shutdown(outcomes) == 16  # deadtime counted from the last reading with data, at t=0 (WAIT has none)


def test_calibration_raises_an_alert() -> None:
    [outcome] = run([snap("OB CAL DISCHRG", "100")])
    assert [a.kind for a in outcome.alerts] == [AlertKind.calibrating]
