"""The shutdown budget: how long a graceful shutdown takes, measured from Hecate's own runs.

Every other UPS tool shuts down on a runtime someone typed in. Hecate records every
shutdown it executes (``runs.json``) and estimates the budget from them:

* only executed (not dry-run), complete (``success``: no step failed or skipped), finished
  shutdowns count -- a dry-run, or a run that skipped its Kubernetes steps or could not reach
  a node, says nothing about how long the real thing takes;
* the *target* is the **longest** of the most recent ``history`` such runs (default 5):
  conservative, because the slow shutdown is the one the battery must cover, and recent,
  because the cluster changes;
* the budget starts at the configured ``default_budget_s`` and follows the target run by run:
  it **rises at once** to a longer target, and **falls at most halfway** towards a shorter one
  (:data:`FALL_STEP`). One run far shorter than the history (nothing to do: no node reachable,
  a test) can at most halve the budget; only runs that agree bring it down to them;
* a record whose duration disagrees with its own timestamps, or exceeds 6 h, is ignored.

The trigger threshold is ``safety_factor x budget``, but never below the **floor**:
``min_budget_s`` plus :data:`FLOOR_MARGIN_S`. The margin covers what a run's duration cannot
contain: the coordinator's own power-off (the run is recorded before it), the debounce polls
before the decision, and a UPS's coarse runtime estimate near the end of its battery.
:attr:`Budget.basis` says which of default, history or floor sets the threshold. Purely
computational.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hecate.domain.runs import RunRecord, counts_for_budget


class BudgetSource(StrEnum):
    default = "default"
    measured = "measured"


class ThresholdBasis(StrEnum):
    """What sets the threshold now."""

    default = "default"
    """safety_factor x the configured default budget: no complete executed shutdown recorded yet."""
    history = "history"
    """safety_factor x the budget learned from recorded shutdowns."""
    floor = "floor"
    """min_budget_s + the margin: higher than safety_factor x the budget."""


FLOOR_MARGIN_S = 30.0
"""Added to ``min_budget_s`` for the threshold's floor (see the module's doc)."""
FALL_STEP = 0.5
"""How far one run may move the budget down towards a shorter target: half the gap."""
MAX_BUDGET_S = 6 * 3600.0


@dataclass(frozen=True)
class Budget:
    seconds: float
    """Estimated shutdown duration."""
    source: BudgetSource
    """`measured` from recorded runs, or the configured `default`."""
    samples: tuple[float, ...]
    """Durations of the runs the target is taken from (the most recent ``history``), oldest first."""
    safety_factor: float
    min_budget_s: float = 0.0
    """The configured floor under the budget (the threshold adds :data:`FLOOR_MARGIN_S`)."""
    target_s: float | None = None
    """The longest recent run: where the budget is heading (None: no run counts)."""

    @property
    def floor_s(self) -> float:
        """The lowest the threshold can be."""
        return self.min_budget_s + FLOOR_MARGIN_S

    @property
    def threshold_s(self) -> float:
        """Shut down when a protecting UPS on battery reports at most this runtime."""
        return max(self.safety_factor * self.seconds, self.floor_s)

    @property
    def basis(self) -> ThresholdBasis:
        """Why the threshold is what it is."""
        if self.floor_s > self.safety_factor * self.seconds:
            return ThresholdBasis.floor
        return ThresholdBasis.default if self.source is BudgetSource.default else ThresholdBasis.history

    @property
    def why(self) -> str:
        """The threshold's reason in one sentence, for people (``hecate status``)."""
        scaled = self.safety_factor * self.seconds
        if self.basis is ThresholdBasis.floor:
            return (f"the floor, min_budget_s {self.min_budget_s:g} s + margin {FLOOR_MARGIN_S:g} s, is above "
                    f"{self.safety_factor:g} x budget {self.seconds:.4g} s = {scaled:.4g} s")
        if self.basis is ThresholdBasis.default:
            return (f"{self.safety_factor:g} x the default budget {self.seconds:.4g} s: no complete executed shutdown "
                    "recorded yet")
        count = len(self.samples)
        why = (f"{self.safety_factor:g} x budget {self.seconds:.4g} s, learned from {count} recorded "
               f"shutdown{'s' if count != 1 else ''}")
        if self.target_s is not None and self.target_s < self.seconds:
            why += f" (falling towards the longest recent one, {self.target_s:.4g} s, at most halfway per run)"
        return why


def plausible(run: RunRecord) -> bool:
    """A duration that agrees with its own timestamps and is not absurd (a hand-edited file)."""
    if run.duration_s is None or not 0 < run.duration_s <= MAX_BUDGET_S:
        return False
    if run.finished_at is None:
        return False
    wall = (run.finished_at - run.started_at).total_seconds()
    return abs(wall - run.duration_s) <= max(1.0, 0.01 * wall)


def estimate(runs: Sequence[RunRecord], *, default_s: float, history: int, safety_factor: float,
             min_budget_s: float = 0.0) -> Budget:
    """The budget from ``runs`` (oldest first): ``default_s`` moved run by run towards the longest recent one."""
    durations = [r.duration_s for r in runs if counts_for_budget(r) and plausible(r) and r.duration_s]
    if not durations:
        return Budget(default_s, BudgetSource.default, (), safety_factor, min_budget_s)
    budget = default_s
    target = default_s
    for i in range(len(durations)):
        target = max(durations[max(0, i + 1 - history): i + 1])
        budget = target if target >= budget else max(target, budget - FALL_STEP * (budget - target))
    return Budget(budget, BudgetSource.measured, tuple(durations[-history:]), safety_factor, min_budget_s, target)
