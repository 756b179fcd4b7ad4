"""The charge-floor and time-on-battery triggers, untrusted runtimes in the decision, and WAIT."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hecate.domain import battery, trigger
from hecate.domain.battery import Doubt
from hecate.domain.discharge import RuntimeEstimate
from hecate.domain.trigger import AlertKind, Phase, Reason, State, Thresholds
from hecate.domain.ups import Snapshot, failed, from_variables

BASE = Thresholds(threshold_s=330.0, debounce_polls=3, deadtime_s=15.0, protecting=frozenset({"pyr"}))
FLOOR = Thresholds(threshold_s=330.0, debounce_polls=3, protecting=frozenset({"pyr"}), charge_floor_pct=30.0)
TIMEOUT = Thresholds(threshold_s=330.0, debounce_polls=3, deadtime_s=15.0, protecting=frozenset({"pyr"}),
                     max_on_battery_s=10.0)


def snap(status: str = "OB DISCHRG", runtime: str | None = "1800", charge: str | None = "80",
         at: float = 0.0, load: str | None = None) -> Snapshot:
    variables = {"ups.status": status} | ({} if load is None else {"ups.load": load})
    if runtime is not None:
        variables["battery.runtime"] = runtime
    if charge is not None:
        variables["battery.charge"] = charge
    return from_variables("pyr", variables, at)


def run(readings: Iterable[Snapshot], thresholds: Thresholds) -> tuple[State, list[trigger.Outcome]]:
    """One poll per reading, at the reading's own time."""
    state, outcomes = State(), []
    for reading in readings:
        state, outcome = trigger.decide(state, [reading], thresholds, now=reading.at)
        outcomes.append(outcome)
    return state, outcomes


def first(outcomes: list[trigger.Outcome]) -> tuple[int, Reason] | None:
    return next(((i, o.shutdown.reason) for i, o in enumerate(outcomes) if o.shutdown is not None), None)


def kinds(outcome: trigger.Outcome) -> list[AlertKind]:
    return [a.kind for a in outcome.alerts]


# -- untrusted runtimes -------------------------------------------------------------------


def test_a_zero_runtime_at_full_charge_never_triggers_and_raises_the_untrusted_alert() -> None:
    state, outcomes = run([snap("OB DISCHRG", "0", "100", at=i) for i in range(20)], BASE)
    assert first(outcomes) is None
    assert state.ups["pyr"].phase is Phase.on_battery
    assert kinds(outcomes[-1]) == [AlertKind.runtime_untrusted]
    assert "(zero)" in outcomes[-1].alerts[0].message


def test_a_zero_runtime_on_mains_is_neither_runtime_short_nor_alerted() -> None:
    """nutdrv_qx units report 0 on mains at full charge, always: not a weak battery, and an alert nobody can fix.
    Status still shows the doubt; on battery the alert is raised."""
    state, outcomes = run([snap("OL", "0", "100", at=0), snap("OB DISCHRG", "0", "100", at=1),
                           snap("OL CHRG", "0", "100", at=2)], BASE)
    assert [kinds(o) for o in outcomes] == [[], [AlertKind.runtime_untrusted], []]
    assert state.ups["pyr"].runtime.doubt is Doubt.zero


def test_an_implausible_runtime_is_alerted_on_mains_too() -> None:
    _, outcomes = run([snap("OL", "65535", "100")], BASE)
    assert kinds(outcomes[0]) == [AlertKind.runtime_untrusted]


def test_a_trusted_short_runtime_on_mains_is_still_runtime_short() -> None:
    _, outcomes = run([snap("OL", "100", "100")], BASE)
    assert kinds(outcomes[0]) == [AlertKind.runtime_short]


def test_a_missing_runtime_is_not_alerted() -> None:
    _, outcomes = run([snap("OL", None, "100")], BASE)
    assert kinds(outcomes[0]) == []


def test_low_battery_still_triggers_with_an_untrusted_runtime() -> None:
    _, outcomes = run([snap("OB DISCHRG", "0", "100", at=0), snap("OB LB", "0", "100", at=1)], BASE)
    assert first(outcomes) == (1, Reason.low_battery)
    assert outcomes[1].shutdown is not None
    assert outcomes[1].shutdown.runtime_s is None  # not trusted: not quoted as the runtime


def test_a_frozen_runtime_at_or_below_the_threshold_still_counts() -> None:
    """Frozen at 300 s (below the threshold) while the charge falls fast: the doubt is that it is too high."""
    readings = [snap("OB DISCHRG", "300", str(100 - 3 * i), at=i) for i in range(10)]
    thresholds = Thresholds(threshold_s=330.0, debounce_polls=6, protecting=frozenset({"pyr"}))
    state, outcomes = run(readings, thresholds)
    assert state.ups["pyr"].runtime.doubt is Doubt.frozen  # frozen from the 5th poll (5 polls, 12 points down)
    assert first(outcomes) == (5, Reason.runtime)
    assert outcomes[5].shutdown is not None
    assert outcomes[5].shutdown.detail == ("runtime 300 s (frozen: doubted as too high, counted at or below) <= "
                                           "threshold 330 s for 6 consecutive polls")
    assert "runtime not trusted (frozen)" in outcomes[5].alerts[0].message


def test_a_low_first_reading_does_not_delay_the_runtime_trigger() -> None:
    """Right after the transfer one reading of 200 s, then the real runtime, falling 10 s a poll from 1500 s."""
    thresholds = Thresholds(threshold_s=1200.0, debounce_polls=3, protecting=frozenset({"pyr"}))
    readings = [snap("OB DISCHRG", "200", "100", at=0, load="30")] + [
        snap("OB DISCHRG", str(1500 - 10 * i), f"{99 - i * 0.5:g}", at=1 + i, load="30") for i in range(120)]
    state, outcomes = run(readings, thresholds)
    below = next(i for i, r in enumerate(readings[1:], 1) if r.runtime_s is not None and r.runtime_s <= 1200)
    assert first(outcomes) == (below + 2, Reason.runtime)
    assert outcomes[below + 2].shutdown is not None
    assert "for 3 consecutive polls" in outcomes[below + 2].shutdown.detail
    _, before = run(readings[:below], thresholds)  # the level held: trusted again, the count starts over
    assert [kinds(o) for o in before[6:]] == [[]] * (below - 6)
    state, _ = run(readings[:below], thresholds)
    assert state.ups["pyr"].below_polls == 0
    assert state.ups["pyr"].phase is Phase.on_battery


statuses = st.sampled_from(["OB DISCHRG", "OB", "OL", "OB DISCHRG", "WAIT"])
runtimes = st.one_of(st.sampled_from([0, 100, 300, 900, 1200, 1201, 2000, 5000]), st.integers(0, 6000))
charges = st.one_of(st.none(), st.sampled_from([100, 60, 50, 49, 20]), st.integers(0, 100))


@settings(max_examples=300)
@example([("OB DISCHRG", 100, 80, 30), ("OB DISCHRG", 500, 80, 30)], 2, 5)  # rising, at or below: counts
@example([("OB DISCHRG", 300, 100 - 3 * i, 30) for i in range(8)], 6, 5)  # frozen, at or below: counts
@given(st.lists(st.tuples(statuses, runtimes, charges, st.integers(25, 35)), max_size=40),
       st.integers(1, 5), st.integers(2, 8))
def test_property_a_runtime_at_or_below_the_threshold_on_battery_decides(
        readings: list[tuple[str, int, int | None, int]], debounce: int, frozen_polls: int) -> None:
    """Whatever came before, debounce_polls on-battery polls at or below the threshold decide (a runtime of 0
    excepted from a UPS that reported 0 at a high charge: firmware with no estimate)."""
    thresholds = Thresholds(threshold_s=1200.0, debounce_polls=debounce, protecting=frozenset({"pyr"}),
                            sanity=battery.Limits(frozen_polls=frozen_polls))
    state = State()
    run_of = 0
    zero_means_unknown = False  # the UPS reported 0 at a high charge: its every later 0 is "no estimate"
    for i, (status, runtime, charge, load) in enumerate(readings):
        variables = {"ups.status": status, "battery.runtime": str(runtime), "ups.load": str(load)}
        if charge is not None:
            variables["battery.charge"] = str(charge)
        reading = from_variables("pyr", variables, float(i))
        state, outcome = trigger.decide(state, [reading], thresholds, now=float(i))
        if outcome.shutdown is not None:
            return
        if status == "WAIT":  # no data yet: neither counts nor resets
            continue
        high_zero = runtime == 0 and charge is not None and charge >= thresholds.sanity.zero_charge_pct
        zero_means_unknown = zero_means_unknown or high_zero
        if not reading.on_battery:
            run_of = 0
        elif not (runtime == 0 and zero_means_unknown):
            run_of = run_of + 1 if runtime <= thresholds.threshold_s else 0
        assert run_of < debounce, (i, state.ups["pyr"])


# -- the charge floor ---------------------------------------------------------------------


def test_the_charge_floor_triggers_after_debounce_polls() -> None:
    readings = [snap(charge=c, at=i) for i, c in enumerate(["40", "31", "30", "29", "28", "27"])]
    _, outcomes = run(readings, FLOOR)
    assert first(outcomes) == (4, Reason.charge_floor)  # at or below 30 % on polls 2, 3, 4
    assert outcomes[4].shutdown is not None
    assert outcomes[4].shutdown.detail == "charge 28 % <= charge floor 30 % for 3 consecutive polls"


def test_the_charge_floor_is_off_by_default() -> None:
    _, outcomes = run([snap(charge="5", at=i) for i in range(10)], BASE)
    assert first(outcomes) is None


def test_the_charge_floor_debounces_a_glitch_and_ignores_an_unknown_charge() -> None:
    readings = [snap(charge=c, at=i) for i, c in enumerate(["25", "25", "90", "25", "unknown", "25", "25"])]
    _, outcomes = run(readings, FLOOR)
    assert first(outcomes) == (6, Reason.charge_floor)


def test_the_charge_floor_on_mains_does_not_trigger() -> None:
    _, outcomes = run([snap("OL CHRG", charge="5", at=i) for i in range(10)], FLOOR)
    assert first(outcomes) is None


def test_the_charge_floor_works_for_a_ups_without_runtime() -> None:
    readings = [snap(runtime=None, charge=c, at=i) for i, c in enumerate(["80", "30", "20", "10"])]
    _, outcomes = run(readings, FLOOR)
    assert first(outcomes) == (3, Reason.charge_floor)


# -- the longest time on battery ------------------------------------------------------------


def test_time_on_battery_counts_from_the_first_on_battery_poll_and_debounces() -> None:
    readings = [snap(at=float(t)) for t in range(0, 20)]
    _, outcomes = run(readings, TIMEOUT)
    assert first(outcomes) == (12, Reason.time_on_battery)  # 10 s at t=10; 3 polls: 10, 11, 12


def test_time_on_battery_survives_lost_polls() -> None:
    readings = [snap(at=0.0), snap(at=1.0)] + [failed("pyr", float(t), "timed out", stale=False)
                                               for t in range(2, 8)] + [snap(at=float(t)) for t in range(8, 20)]
    _, outcomes = run(readings, TIMEOUT)
    assert first(outcomes) == (12, Reason.time_on_battery)


def test_time_on_battery_resets_on_mains() -> None:
    readings = [snap(at=float(t)) for t in range(0, 9)] + [snap("OL CHRG", at=9.0)] + [
        snap(at=float(t)) for t in range(10, 30)]
    _, outcomes = run(readings, TIMEOUT)
    assert first(outcomes) == (22, Reason.time_on_battery)  # the clock starts again at t=10


def test_calibration_does_not_count_as_time_on_battery() -> None:
    _, outcomes = run([snap("OB CAL DISCHRG", at=float(t)) for t in range(30)], TIMEOUT)
    assert first(outcomes) is None


# -- combining --------------------------------------------------------------------------


def test_first_one_wins_and_runtime_comes_first_on_the_same_poll() -> None:
    both = Thresholds(threshold_s=330.0, debounce_polls=3, protecting=frozenset({"pyr"}), charge_floor_pct=30.0)
    _, outcomes = run([snap(runtime="100", charge="20", at=i) for i in range(5)], both)
    assert first(outcomes) == (2, Reason.runtime)


def test_the_charge_floor_wins_when_it_crosses_first() -> None:
    readings = [snap(runtime=str(r), charge=c, at=i)
                for i, (r, c) in enumerate([(900, "28"), (800, "27"), (300, "26"), (290, "25")])]
    _, outcomes = run(readings, FLOOR)
    assert first(outcomes) == (2, Reason.charge_floor)


@given(st.lists(st.tuples(st.sampled_from(["OL", "OB", "OB DISCHRG", "OL CHRG", "WAIT", ""]),
                          st.integers(0, 100), st.one_of(st.none(), st.integers(0, 5000))), max_size=40))
def test_property_mains_alone_never_triggers_with_every_trigger_on(
        readings: list[tuple[str, int, int | None]]) -> None:
    every = Thresholds(threshold_s=330.0, debounce_polls=1, protecting=frozenset({"pyr"}), charge_floor_pct=95.0,
                       max_on_battery_s=1.0)
    on_mains = [snap("OL" if "OB" in s else s, None if r is None else str(r), str(c), at=i)
                for i, (s, c, r) in enumerate(readings)]
    _, outcomes = run(on_mains, every)
    assert first(outcomes) is None


# -- WAIT -----------------------------------------------------------------------------------


def test_wait_at_driver_start_is_no_data_yet() -> None:
    state, outcomes = run([snap("WAIT", None, None, at=0), snap("OL", at=1)], BASE)
    assert kinds(outcomes[0]) == []
    assert outcomes[0].transitions == ()
    assert state.ups["pyr"].phase is Phase.on_mains


def test_wait_during_an_outage_keeps_the_phase_and_the_counts() -> None:
    readings = [snap(runtime="300", charge="20", at=0), snap(runtime="300", charge="20", at=1),
                snap("WAIT", None, None, at=2), snap(runtime="300", charge="20", at=3)]
    state, outcomes = run(readings, BASE)
    assert outcomes[2].transitions == ()
    assert kinds(outcomes[2]) == []
    assert first(outcomes) == (3, Reason.runtime)  # the WAIT neither counted nor reset
    assert state.ups["pyr"].last_on_battery


# -- an untrusted runtime and the discharge model's estimate --------------------------------


def test_the_estimate_takes_over_from_a_runtime_once_it_is_untrusted() -> None:
    """Runtime frozen at 18358 while the charge falls: trusted at first (the estimate is not used), untrusted
    after the frozen polls, and then the discharge model's conservative bound decides -- said as estimated."""
    estimate = RuntimeEstimate(seconds=300.0, uncertainty_s=60.0, outages=3, rate_pct_per_s=0.2, empty_pct=0.0)
    with_model = replace(BASE, estimates={"pyr": estimate})  # 240 s <= 330 s: the estimate alone would trigger
    readings = [snap("OB DISCHRG", "18358", str(90 - 2 * i), at=i) for i in range(12)]

    state, outcomes = run(readings, with_model)
    _, without = run(readings, BASE)

    frozen_at = next(i for i, o in enumerate(outcomes) if AlertKind.runtime_untrusted in kinds(o))
    decided = first(outcomes)
    assert frozen_at > 0  # trusted at first: the runtime's 18358 s, above the threshold, kept the estimate out
    assert decided == (frozen_at + BASE.debounce_polls - 1, Reason.runtime)
    decision = outcomes[decided[0]].shutdown
    assert decision is not None
    assert decision.runtime_s == 240.0
    assert "estimated runtime 240 s (300 s - 60 s, from 3 recorded outages)" in decision.detail
    assert first(without) is None  # no model: an untrusted runtime alone never triggers
    assert state.ups["pyr"].phase is Phase.critical
