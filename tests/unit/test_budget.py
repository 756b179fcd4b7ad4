"""The learned shutdown budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hecate.domain.budget import BudgetSource, estimate
from hecate.domain.runs import RunKind, RunRecord, RunResult


def run(duration: float, *, kind: RunKind = RunKind.shutdown, dry_run: bool = False,
        result: RunResult = RunResult.success) -> RunRecord:
    start = datetime(2026, 11, 27, tzinfo=UTC)
    return RunRecord(id=f"r{duration}", kind=kind, dry_run=dry_run, result=result, duration_s=duration,
                     started_at=start, finished_at=start + timedelta(seconds=duration))


def test_no_history_uses_the_default() -> None:
    budget = estimate([], default_s=300, history=5, safety_factor=1.1)
    assert (budget.seconds, budget.source, budget.samples) == (300, BudgetSource.default, ())
    assert budget.threshold_s == pytest.approx(330)


def test_only_executed_successful_shutdowns_count() -> None:
    runs = [
        run(100), run(900, dry_run=True), run(800, result=RunResult.failed), run(700, kind=RunKind.startup),
        run(600, result=RunResult.degraded), run(0.0), run(120),
    ]
    budget = estimate(runs, default_s=300, history=5, safety_factor=1.1)
    assert budget.source is BudgetSource.measured
    assert budget.samples == (100, 120)
    assert budget.seconds == 120  # the longest of the recent ones: conservative
    assert budget.threshold_s == pytest.approx(132)


def test_only_the_most_recent_runs_count() -> None:
    runs = [run(500)] + [run(d) for d in (60, 70, 80, 90, 65)]
    budget = estimate(runs, default_s=300, history=5, safety_factor=1.25)
    assert budget.samples == (60, 70, 80, 90, 65)
    assert budget.seconds == 90
    assert budget.threshold_s == pytest.approx(112.5)


def test_implausible_records_are_ignored() -> None:
    """A hand-edited duration that disagrees with its timestamps (or is absurd) must not set the budget."""
    edited = run(120).model_copy(update={"duration_s": 1e9})
    liar = run(100).model_copy(update={"duration_s": 5000.0})
    budget = estimate([run(90), edited, liar], default_s=300, history=5, safety_factor=1.1)
    assert budget.samples == (90,)
