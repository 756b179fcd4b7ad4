"""The shutdown budget: how long a graceful shutdown takes, measured from Hecate's own runs.

Every other UPS tool shuts down on a runtime someone typed in. Hecate records every
shutdown it executes (``runs.json``) and estimates the budget from them:

* only executed (not dry-run), successful, finished shutdowns count -- a dry-run or a
  failed run says nothing about how long the real thing takes;
* the estimate is the **longest** of the most recent ``history`` such runs (default 5):
  conservative, because the slow shutdown is the one the battery must cover, and recent,
  because the cluster changes;
* a record whose duration disagrees with its own timestamps, or exceeds 6 h, is ignored;
* with no such run, the configured ``default_budget_s`` is the budget.

The trigger threshold is ``safety_factor x budget``. Purely computational.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hecate.domain.runs import RunRecord, counts_for_budget


class BudgetSource(StrEnum):
    default = "default"
    measured = "measured"


@dataclass(frozen=True)
class Budget:
    seconds: float
    """Estimated shutdown duration."""
    source: BudgetSource
    """`measured` from recorded runs, or the configured `default`."""
    samples: tuple[float, ...]
    """Durations of the runs the estimate used, oldest first."""
    safety_factor: float

    @property
    def threshold_s(self) -> float:
        """Shut down when a protecting UPS on battery reports at most this runtime."""
        return self.safety_factor * self.seconds


MAX_BUDGET_S = 6 * 3600.0


def plausible(run: RunRecord) -> bool:
    """A duration that agrees with its own timestamps and is not absurd (a hand-edited file)."""
    if run.duration_s is None or not 0 < run.duration_s <= MAX_BUDGET_S:
        return False
    if run.finished_at is None:
        return False
    wall = (run.finished_at - run.started_at).total_seconds()
    return abs(wall - run.duration_s) <= max(1.0, 0.01 * wall)


def estimate(runs: Sequence[RunRecord], *, default_s: float, history: int, safety_factor: float) -> Budget:
    """The budget from ``runs`` (oldest first), or ``default_s`` when none counts."""
    durations = tuple(r.duration_s for r in runs if counts_for_budget(r) and plausible(r) and r.duration_s)[-history:]
    if not durations:
        return Budget(default_s, BudgetSource.default, (), safety_factor)
    return Budget(max(durations), BudgetSource.measured, durations, safety_factor)
