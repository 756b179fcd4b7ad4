"""The learned discharge model: per-outage rates, the per-UPS fit, the estimate and its uncertainty,
the state file's format; and the runtime trigger on the estimate's conservative bound."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.domain import discharge, trigger
from hecate.domain.discharge import Outage, Sample
from hecate.domain.ups import from_variables


def linear(ups: str, start: str, rate: float, load: float | None = 40.0, seconds: int = 60, charge0: float = 100.0,
           every: float = 2.0) -> Outage:
    """An outage whose charge falls ``rate`` %/s at ``load``."""
    n = int(seconds / every) + 1
    return Outage(ups, start, tuple(Sample(i * every, max(0.0, charge0 - rate * i * every), load) for i in range(n)))


def test_before_any_usable_outage_there_is_no_model() -> None:
    assert discharge.fit("pyr", []) is None
    short = linear("pyr", "2026-01-01T00:00:00Z", 0.5, seconds=8)  # under MIN_SPAN_S
    few = Outage("pyr", "2026-01-02T00:00:00Z", tuple(Sample(t, 100 - t) for t in (0, 10, 20)))  # < MIN_SAMPLES
    flat = linear("pyr", "2026-01-03T00:00:00Z", 0.01, seconds=60)  # fell 0.6 points
    rising = Outage("pyr", "2026-01-04T00:00:00Z", tuple(Sample(t, 50 + t) for t in range(0, 30, 3)))
    assert discharge.fit("pyr", [short, few, flat, rising]) is None


def test_one_outage_gives_the_estimate_with_the_prior_uncertainty() -> None:
    model = discharge.fit("pyr", [linear("pyr", "2026-01-01T00:00:00Z", 0.1, seconds=100)])
    assert model is not None
    est = model.estimate(50.0, 40.0)
    assert est is not None
    assert est.seconds == pytest.approx(500.0)
    assert est.uncertainty_s == pytest.approx(500.0 * discharge.PRIOR_REL)
    assert est.outages == 1
    assert est.conservative_s == pytest.approx(350.0)
    # down to the UPS's own low-battery level when it says
    low = model.estimate(50.0, 40.0, empty_pct=20.0)
    assert low is not None
    assert low.seconds == pytest.approx(300.0)


def test_the_rate_follows_the_load() -> None:
    outages = [linear("pyr", f"2026-01-0{i}T00:00:00Z", rate, load)
               for i, (rate, load) in enumerate([(0.05, 20.0), (0.1, 40.0), (0.2, 80.0)], start=1)]
    model = discharge.fit("pyr", outages)
    assert model is not None
    assert model.slope == pytest.approx(0.0025)
    assert model.rate_at(60.0) == pytest.approx(0.15)
    assert model.rate_at(None) == pytest.approx(0.2)  # no load now: the fastest recorded
    assert model.rate_at(0.0) >= discharge.RATE_FLOOR_FRACTION * 0.2


def test_a_load_above_the_recorded_ones_scales_the_rate_at_least_proportionally() -> None:
    flat = discharge.fit("pyr", [linear("pyr", "2026-01-01T00:00:00Z", 0.05, 10.0, seconds=100)])
    assert flat is not None
    assert flat.rate_at(10.0) == pytest.approx(0.05)
    assert flat.rate_at(5.0) == pytest.approx(0.05)  # lighter: the flat rate (no promise of a longer runtime)
    assert flat.rate_at(90.0) == pytest.approx(0.45)  # nine times the load: nine times the rate
    at_90 = flat.estimate(80.0, 90.0)
    assert at_90 is not None
    assert at_90.seconds == pytest.approx(80.0 / 0.45)
    # a line with an intercept would grow slower than the load: beyond the heaviest it is proportional
    line = discharge.fit("pyr", [linear("pyr", "2026-01-01T00:00:00Z", 0.1, 20.0),
                                 linear("pyr", "2026-01-02T00:00:00Z", 0.12, 40.0)])
    assert line is not None
    assert line.rate_at(30.0) == pytest.approx(0.11)  # inside the recorded loads: the line
    assert line.rate_at(80.0) == pytest.approx(0.24)  # 0.12 x 80/40, above the line's 0.16


def test_other_upses_outages_do_not_count() -> None:
    assert discharge.fit("sta", [linear("pyr", "2026-01-01T00:00:00Z", 0.1)]) is None


charges = st.floats(min_value=0, max_value=100)
loads = st.one_of(st.none(), st.floats(min_value=0, max_value=400))
rates = st.floats(min_value=0.06, max_value=5.0)
outage_sets = st.lists(st.tuples(rates, st.one_of(st.none(), st.floats(min_value=1, max_value=100))),
                       min_size=1, max_size=8)


def model_of(specs: list[tuple[float, float | None]]) -> discharge.Model:
    outages = [linear("pyr", f"2026-01-01T00:{i:02d}:00Z", rate, load, seconds=50, charge0=100.0)
               for i, (rate, load) in enumerate(specs)]
    model = discharge.fit("pyr", outages)
    assert model is not None
    return model


@given(outage_sets, charges, charges, loads)
def test_the_estimate_is_monotone_in_charge_and_never_negative(specs: list[tuple[float, float | None]], a: float,
                                                              b: float, load: float | None) -> None:
    model = model_of(specs)
    low, high = sorted((a, b))
    e_low, e_high = model.estimate(low, load), model.estimate(high, load)
    if model.scattered:
        assert e_low is None
        assert e_high is None
        return
    assert e_low is not None
    assert e_high is not None
    assert 0 <= e_low.seconds <= e_high.seconds
    assert 0 <= e_low.conservative_s <= e_low.seconds
    assert e_low.uncertainty_s >= 0
    assert math.isfinite(e_high.seconds)


@given(rates, st.floats(min_value=1, max_value=100), st.integers(min_value=1, max_value=10))
def test_uncertainty_shrinks_with_more_consistent_outages(rate: float, load: float, n: int) -> None:
    fewer = model_of([(rate, load)] * n).estimate(80.0, load)
    more = model_of([(rate, load)] * (n + 1)).estimate(80.0, load)
    assert fewer is not None
    assert more is not None
    assert more.uncertainty_s < fewer.uncertainty_s
    assert more.seconds == pytest.approx(fewer.seconds)


@given(outage_sets, loads, loads)
def test_a_heavier_load_never_gives_a_slower_fall(specs: list[tuple[float, float | None]], a: float | None,
                                                       b: float | None) -> None:
    if a is None or b is None:
        return
    model = model_of(specs)
    light, heavy = sorted((a, b))
    assert model.rate_at(heavy) >= model.rate_at(light)


def test_inconsistent_outages_are_less_certain_than_consistent_ones() -> None:
    same = model_of([(0.1, 40.0)] * 4).estimate(80.0, 40.0)
    scattered = model_of([(0.05, 40.0), (0.15, 40.0), (0.1, 40.0), (0.1, 40.0)]).estimate(80.0, 40.0)
    assert same is not None
    assert scattered is not None
    assert scattered.uncertainty_s / scattered.seconds > same.uncertainty_s / same.seconds


def test_scattered_outages_give_no_estimate_rather_than_a_bound_of_zero() -> None:
    model = model_of([(0.1, 40.0), (0.1, 40.0), (1.0, 40.0)])  # one outage ten times faster than the others
    assert model.scattered
    assert model.estimate(100.0, 40.0) is None
    assert model.estimate(100.0, None) is None


@given(outage_sets, st.floats(min_value=50, max_value=100), loads)
def test_a_scattered_history_never_bounds_the_runtime_at_zero(specs: list[tuple[float, float | None]], charge: float,
                                                              load: float | None) -> None:
    est = model_of(specs).estimate(charge, load)
    assert est is None or est.conservative_s >= (1 - discharge.MAX_REL) * est.seconds > 0


def test_status_says_why_a_scattered_model_gives_no_estimate() -> None:
    from hecate.cli.runtime_lines import runtime_lines

    row = {"name": "pyr", "polled": True, "reachable": True, "stale": False, "runtime_untrusted_reason": "missing",
           "runtime_estimate": None, "triggers": ["low_battery", "fsd", "deadtime"], "discharge_recorded": 3,
           "discharge_note": discharge.SCATTERED}
    [line] = runtime_lines([row], {})
    assert line.endswith("it triggers on LB, FSD, deadtime (3 outages recorded, outages too scattered to estimate)")


garbage_numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                            st.floats(min_value=-1e300, max_value=1e300))


@given(st.lists(st.tuples(garbage_numbers, garbage_numbers, garbage_numbers), max_size=40),
       garbage_numbers, garbage_numbers, garbage_numbers)
def test_garbage_samples_never_raise(raw: list[tuple[float | None, float | None, float | None]],
                                     charge: float | None, load: float | None, empty: float | None) -> None:
    samples = tuple(Sample(t if t is not None else 0.0, c, ld) for t, c, ld in raw)
    model = discharge.fit("pyr", [Outage("pyr", "2026-01-01T00:00:00Z", samples)])
    if model is not None:
        est = model.estimate(charge, load, empty)
        assert est is None or ((1 - discharge.MAX_REL) * est.seconds <= est.conservative_s <= est.seconds
                               and math.isfinite(est.seconds))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=5), max_leaves=30)


@given(json_values)
def test_any_file_parses_or_is_corrupt_never_another_error(doc: object) -> None:
    for data in (json.dumps(doc).encode(), json.dumps({"version": 1, "ups": {"pyr": [
            {"started_at": "x", "samples": doc if isinstance(doc, list) else [doc]}]}}).encode()):
        try:
            history = discharge.parse(data)
        except discharge.Corrupt:
            continue
        discharge.fit_all(history)


def test_the_file_round_trips_and_is_capped() -> None:
    outages = [linear("pyr", f"2026-01-{i:02d}T00:00:00Z", 0.1, seconds=2000, every=1.0) for i in range(1, 26)]
    history = discharge.merge({}, outages)
    assert len(history["pyr"]) == discharge.MAX_OUTAGES_PER_UPS
    assert history["pyr"][0].started_at == "2026-01-06T00:00:00Z"  # the oldest went
    assert all(len(o.samples) <= discharge.MAX_SAMPLES for o in history["pyr"])
    assert history["pyr"][0].samples[-1].t == 2000.0  # thinned, the whole span kept
    assert discharge.parse(discharge.dump(history)) == history
    replaced = discharge.merge(history, [Outage("pyr", "2026-01-25T00:00:00Z", (Sample(0, 90),), ended=True)])
    assert len(replaced["pyr"]) == discharge.MAX_OUTAGES_PER_UPS
    assert replaced["pyr"][-1].samples == (Sample(0, 90),)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"version": 2, "ups": {}}', b'{"version": 1, "ups": []}',
                                  b'{"version": 1, "ups": {"pyr": [{"samples": []}]}}'])
def test_a_file_of_another_shape_is_corrupt(data: bytes) -> None:
    with pytest.raises(discharge.Corrupt):
        discharge.parse(data)


# -- the trigger on the estimate --------------------------------------------------------------

def snap(charge: float, at: float, runtime: float | None = None) -> trigger.Snapshot:
    variables = {"ups.status": "OB DISCHRG", "battery.charge": str(charge), "ups.load": "40"}
    if runtime is not None:
        variables["battery.runtime"] = str(runtime)
    return from_variables("pyr", variables, at)


def test_the_runtime_trigger_uses_the_conservative_bound_when_the_ups_reports_no_runtime() -> None:
    est = discharge.RuntimeEstimate(seconds=400.0, uncertainty_s=100.0, outages=3, rate_pct_per_s=0.1, empty_pct=0)
    thresholds = trigger.Thresholds(threshold_s=330.0, debounce_polls=3, protecting=frozenset({"pyr"}),
                                    estimates={"pyr": est})
    state = trigger.State()
    outcomes = []
    for i in range(3):  # 300 s conservative <= 330 s: debounced like a reported runtime
        state, outcome = trigger.decide(state, [snap(40, float(i))], thresholds, float(i))
        outcomes.append(outcome)
    assert [o.shutdown is not None for o in outcomes] == [False, False, True]
    decision = outcomes[-1].shutdown
    assert decision is not None
    assert decision.reason is trigger.Reason.runtime
    assert decision.runtime_s == 300.0
    assert "estimated runtime 300 s (400 s - 100 s, from 3 recorded outages)" in decision.detail
    # the UPS's own runtime, when it reports one, wins over the estimate
    state, outcome = trigger.decide(trigger.State(), [snap(40, 0.0, runtime=900)] * 3, thresholds, 0.0)
    assert outcome.shutdown is None
    assert state.ups["pyr"].below_polls == 0
    # without an estimate an unknown runtime neither counts nor triggers
    plain = trigger.Thresholds(threshold_s=330.0, debounce_polls=1, protecting=frozenset({"pyr"}))
    assert trigger.decide(trigger.State(), [snap(5, 0.0)], plain, 0.0)[1].shutdown is None
