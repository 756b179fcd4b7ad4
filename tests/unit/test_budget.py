"""The learned shutdown budget, its floor and why the threshold is what it is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.domain.budget import FLOOR_MARGIN_S, BudgetSource, ThresholdBasis, estimate
from hecate.domain.runs import NotDone, RunKind, RunRecord, RunResult, StepNotDone


def run(duration: float, *, kind: RunKind = RunKind.shutdown, dry_run: bool = False,
        result: RunResult = RunResult.success, not_done: list[StepNotDone] | None = None) -> RunRecord:
    start = datetime(2026, 11, 27, tzinfo=UTC)
    return RunRecord(id=f"r{duration}", kind=kind, dry_run=dry_run, result=result, duration_s=duration,
                     started_at=start, finished_at=start + timedelta(seconds=duration), not_done=not_done or [])


def test_no_history_uses_the_default() -> None:
    budget = estimate([], default_s=300, history=5, safety_factor=1.1, min_budget_s=60)
    assert (budget.seconds, budget.source, budget.samples) == (300, BudgetSource.default, ())
    assert budget.threshold_s == pytest.approx(330)
    assert budget.basis is ThresholdBasis.default
    assert "the default budget 300 s: no complete executed shutdown recorded yet" in budget.why


def test_only_executed_complete_shutdowns_count() -> None:
    skipped = StepNotDone(stage="drain", action="drain", target="a1", status=NotDone.skipped, detail="API down")
    runs = [
        run(400), run(900, dry_run=True), run(800, result=RunResult.failed), run(700, kind=RunKind.startup),
        run(600, result=RunResult.degraded), run(0.0), run(500, result=RunResult.aborted),
        run(650, not_done=[skipped]),  # a record claiming success with a step not done: never counted
        run(420),
    ]
    budget = estimate(runs, default_s=300, history=5, safety_factor=1.1)
    assert budget.source is BudgetSource.measured
    assert budget.samples == (400, 420)
    assert budget.seconds == 420  # longer than the default: taken at once (the slow one is what the battery covers)
    assert budget.threshold_s == pytest.approx(462)
    assert budget.basis is ThresholdBasis.history


def test_a_longer_run_raises_the_budget_at_once_a_shorter_one_lowers_it_halfway() -> None:
    assert estimate([run(400)], default_s=300, history=5, safety_factor=1.1).seconds == 400
    assert estimate([run(100)], default_s=300, history=5, safety_factor=1.1).seconds == 200
    # The longest of the recent runs is the target: one shorter run does not pull it down while a long one is recent.
    assert estimate([run(100), run(120)], default_s=300, history=5, safety_factor=1.1).seconds == 160
    agreeing = estimate([run(100)] * 8, default_s=300, history=5, safety_factor=1.1)
    assert agreeing.seconds == pytest.approx(100, abs=1)  # runs that agree bring it down to them
    assert agreeing.target_s == 100


def test_only_the_most_recent_runs_make_the_target() -> None:
    runs = [run(500)] + [run(d) for d in (60, 70, 80, 90, 65)]
    budget = estimate(runs, default_s=300, history=5, safety_factor=1.25)
    assert budget.samples == (60, 70, 80, 90, 65)
    assert budget.target_s == 90
    assert budget.seconds == pytest.approx(295)  # 500 left the window: the budget falls halfway towards 90
    assert "falling towards the longest recent one, 90 s" in budget.why


def test_implausible_records_are_ignored() -> None:
    """A hand-edited duration that disagrees with its timestamps (or is absurd) must not set the budget."""
    edited = run(120).model_copy(update={"duration_s": 1e9})
    liar = run(100).model_copy(update={"duration_s": 5000.0})
    budget = estimate([run(90), edited, liar], default_s=300, history=5, safety_factor=1.1)
    assert budget.samples == (90,)


def test_one_run_of_a_few_milliseconds_cannot_take_the_threshold_below_the_floor() -> None:
    """The reported case: one executed shutdown with nothing to do took 9 ms and the threshold became 0.0099 s."""
    budget = estimate([run(0.009)], default_s=300, history=5, safety_factor=1.1, min_budget_s=60)
    assert budget.seconds == pytest.approx(150.0045)  # halfway, not 0.009
    assert budget.threshold_s == pytest.approx(165.005)
    many = estimate([run(0.009)] * 20, default_s=300, history=5, safety_factor=1.1, min_budget_s=60)
    assert many.threshold_s == 60 + FLOOR_MARGIN_S  # the floor, however many agree
    assert many.basis is ThresholdBasis.floor
    assert many.why.startswith("the floor, min_budget_s 60 s + margin 30 s, is above 1.1 x budget")
    small_default = estimate([run(0.009)], default_s=30, history=5, safety_factor=1.1, min_budget_s=60)
    assert (small_default.threshold_s, small_default.basis) == (90, ThresholdBasis.floor)


# -- properties ---------------------------------------------------------------------------------

durations = st.floats(min_value=0.001, max_value=20_000, allow_nan=False)
histories = st.lists(durations, max_size=30)
settings = st.tuples(st.floats(min_value=1, max_value=20_000), st.integers(min_value=1, max_value=10),
                     st.floats(min_value=1.0, max_value=3.0), st.floats(min_value=1, max_value=3600))


@given(histories, durations, settings)
def test_one_run_moves_the_budget_down_at_most_halfway(history: list[float], new: float,
                                                       cfg: tuple[float, int, float, float]) -> None:
    default, window, factor, floor = cfg
    kw = {"default_s": default, "history": window, "safety_factor": factor, "min_budget_s": floor}
    before = estimate([run(d) for d in history], **kw)
    after = estimate([run(d) for d in [*history, new]], **kw)
    assert after.seconds >= min(before.seconds, (before.seconds + new) / 2) * (1 - 1e-9)
    assert after.seconds >= new  # never below the run just recorded
    assert after.seconds >= max(after.samples)  # never below the longest recent run


@given(histories, settings)
def test_the_threshold_is_never_below_the_floor_nor_the_scaled_budget(history: list[float],
                                                                      cfg: tuple[float, int, float, float]) -> None:
    default, window, factor, floor = cfg
    budget = estimate([run(d) for d in history], default_s=default, history=window, safety_factor=factor,
                      min_budget_s=floor)
    assert budget.threshold_s >= floor + FLOOR_MARGIN_S
    assert budget.threshold_s >= factor * budget.seconds
    assert (budget.basis is ThresholdBasis.floor) == (floor + FLOOR_MARGIN_S > factor * budget.seconds)


@given(histories, st.sampled_from([RunResult.degraded, RunResult.failed, RunResult.aborted]), durations)
def test_runs_that_did_not_complete_never_move_the_budget(history: list[float], result: RunResult,
                                                          new: float) -> None:
    kw = {"default_s": 300.0, "history": 5, "safety_factor": 1.1, "min_budget_s": 60.0}
    runs = [run(d) for d in history]
    assert estimate([*runs, run(new, result=result)], **kw) == estimate(runs, **kw)
    assert estimate([*runs, run(new, dry_run=True)], **kw) == estimate(runs, **kw)
