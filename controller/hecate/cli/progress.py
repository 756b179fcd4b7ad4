"""Live run progress for people (rich): one line per step and stage, as it happens."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hecate.domain import text
from hecate.domain.plan import Plan, Stage
from hecate.domain.runs import RunRecord, StageRecord
from hecate.services.executor import StepOutcome

STYLE = {"ok": "green", "skipped": "yellow", "failed": "red", "success": "green", "degraded": "yellow",
         "aborted": "yellow"}


def shown(value: object) -> str:
    """Outside text (a detail, an error) as rich prints it literally: cleaned, and ``[`` escaped so
    that it is never taken for markup (a stray ``[/x]`` would even raise)."""
    return escape(text.clean(value))


class RichProgress:
    def __init__(self, console: Console | None = None) -> None:
        # Piped output (logs, CI) gets a wide fixed width so plan tables are never truncated.
        self.console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self.started = time.monotonic()

    def _t(self) -> str:
        return f"[dim]{time.monotonic() - self.started:7.2f}s[/dim]"

    def stage_started(self, stage: Stage, index: int, total: int) -> None:
        self.console.print(f"{self._t()} [bold]stage {index + 1}/{total} {stage.name}[/bold] "
                           f"({len(stage.steps)} steps)")

    def step_finished(self, outcome: StepOutcome) -> None:
        style = STYLE.get(outcome.status, "white")
        detail = f" — {shown(outcome.detail)}" if outcome.detail else ""
        retries = f" after {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        self.console.print(f"{self._t()}   [{style}]{outcome.status:<7}[/{style}] {outcome.step.action.value} "
                           f"{shown(outcome.step.target)} ({outcome.duration_s:.2f}s{retries}){detail}")

    def stage_finished(self, record: StageRecord) -> None:
        style = STYLE.get(record.result.value, "white")
        self.console.print(f"{self._t()}   [{style}]{record.name}: {record.result.value}[/{style}] "
                           f"in {record.duration_s:.2f}s")

    def run_finished(self, record: RunRecord) -> None:
        result = record.result.value if record.result else "?"
        style = STYLE.get(result, "white")
        if record.not_done:
            self.console.print(not_done_table(record))
        count = len(record.not_done)
        summary = f": {count} step{'s' if count != 1 else ''} not done (above)" if count else ""
        self.console.print(f"{self._t()} [bold {style}]{record.kind.value} run {record.id}: {result}[/] "
                           f"in {record.duration_s or 0:.1f}s{summary}")


def not_done_table(record: RunRecord) -> Table:
    """The run's summary: every step that did not complete, per stage and target, and why."""
    table = Table(title=f"Not done in {record.kind.value} run {record.id}", title_justify="left")
    for column in ("stage", "step", "target", "status", "why"):
        table.add_column(column, overflow="fold")
    for row in record.not_done:
        style = STYLE.get(row.status.value, "yellow")
        table.add_row(shown(row.stage), shown(row.action), shown(row.target), f"[{style}]{row.status.value}[/{style}]",
                      shown(row.detail))
    return table


def plan_table(plan: Plan) -> Table:
    """The dry-run view: every stage and step with its targets, order and timeout."""
    table = Table(title=f"{plan.kind} plan (dry-run: nothing is touched)", title_justify="left")
    for column in ("#", "stage", "action", "targets (in order)", "parallel", "timeout", "on error"):
        table.add_column(column)
    for i, stage in enumerate(plan.stages, 1):
        first = True
        by_action: dict[str, list[str]] = {}
        for wave in stage.waves():
            for step in wave:
                by_action.setdefault(step.action.value, []).append(step.target)
        for action, targets in by_action.items():
            steps = [s for s in stage.steps if s.action.value == action]
            waves = stage.waves()
            order = " → ".join(", ".join(s.target for s in w if s.action.value == action) for w in waves
                               if any(s.action.value == action for s in w)) if len(waves) > 1 else ", ".join(targets)
            table.add_row(str(i) if first else "", stage.name if first else "", action, order,
                          str(stage.parallelism), f"{max(s.timeout_s for s in steps):g}s", steps[0].on_error.value)
            first = False
    return table
