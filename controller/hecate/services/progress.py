"""Run progress as JSON lines (one object per event) for journald and log shippers."""

from __future__ import annotations

import json
import logging

from hecate.domain.plan import Stage
from hecate.domain.runs import RunRecord, StageRecord
from hecate.services.executor import StepOutcome

log = logging.getLogger("hecate.run")


class JsonLines:
    def _emit(self, **event: object) -> None:
        log.info("%s", json.dumps(event, separators=(",", ":"), default=str))

    def stage_started(self, stage: Stage, index: int, total: int) -> None:
        self._emit(event="stage-start", stage=stage.name, index=index + 1, total=total, steps=len(stage.steps))

    def step_finished(self, outcome: StepOutcome) -> None:
        self._emit(event="step-end", stage=outcome.stage, action=outcome.step.action.value,
                   target=outcome.step.target, status=outcome.status, detail=outcome.detail,
                   duration_s=round(outcome.duration_s, 3), attempts=outcome.attempts)

    def stage_finished(self, record: StageRecord) -> None:
        self._emit(event="stage-end", stage=record.name, result=record.result.value,
                   duration_s=record.duration_s, detail=record.detail)

    def run_finished(self, record: RunRecord) -> None:
        # The run's summary: one line per step that did not complete, then the end with their count.
        for row in record.not_done:
            self._emit(event="not-done", run=record.id, stage=row.stage, action=row.action, target=row.target,
                       status=row.status.value, detail=row.detail)
        self._emit(event="run-end", run=record.id, kind=record.kind.value, result=record.result,
                   duration_s=record.duration_s, not_done=len(record.not_done))
