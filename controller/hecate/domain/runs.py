"""Run records: what Hecate remembers of every startup and shutdown.

``runs.json`` in the state dir holds a list of these records, oldest first. The
shutdown budget is learned from them, so their meaning must stay stable; the schema is
documented in docs/runs.md ("Run records"). This module is pure: it validates and
summarises, the store (``hecate.adapters.store``) reads and writes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1


class RunKind(StrEnum):
    shutdown = "shutdown"
    startup = "startup"
    drill = "drill"


class RunResult(StrEnum):
    success = "success"
    degraded = "degraded"
    failed = "failed"
    aborted = "aborted"


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Stage name, e.g. `stop-agents`."""
    duration_s: float = Field(ge=0)
    """Wall time the stage took."""
    result: RunResult
    """How the stage ended."""
    detail: str = ""
    """Human-readable note (failed nodes, skipped steps)."""


class NotDone(StrEnum):
    failed = "failed"
    skipped = "skipped"
    not_run = "not-run"


class StepNotDone(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stage: str
    """Stage of the step, e.g. `stop-agents`."""
    action: str
    """The step's action, e.g. `stop-service`."""
    target: str
    """What it acts on: a node, a workload tier, a UPS, `flux`, `local`."""
    status: NotDone
    """`failed`, `skipped` (e.g. the Kubernetes API was unreachable) or `not-run` (the run stopped first)."""
    detail: str = ""
    """Why."""


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    schema_version: int = SCHEMA_VERSION
    """Version of this record format."""
    id: str = Field(min_length=1)
    """Unique run id (time-ordered)."""
    kind: RunKind
    """shutdown, startup or drill."""
    trigger: dict[str, Any] = Field(default_factory=dict)
    """What started the run: `source` (`ups`, `manual`, `resume`, `peer`, `boot`, `peer-fallback`); for `ups` also
    `ups`, `reason`, `detail`, `runtime_s`, `threshold_s`, `budget_s`, `budget_source`, `decided_at`; for `peer` (a
    trusted peer host's signed trigger, docs/peers.md) `peer`, `key_id`, the peer's own `reason` and `detail`, `ups`
    (its readings: `name`, `status`, `runtime_s`, `charge_pct`, `load_pct`), `peer_decided_at` and `decided_at`; for
    `peer-fallback` (a peer shutting itself down because its trigger could not be forwarded) `forward`: how the
    forward ended."""
    dry_run: bool
    """True when nothing was touched (plan only)."""
    started_at: datetime
    """Start, timezone-aware UTC."""
    finished_at: datetime | None = None
    """End, or null while in flight."""
    duration_s: float | None = Field(default=None, ge=0)
    """finished_at - started_at."""
    result: RunResult | None = None
    """Outcome, or null while in flight."""
    stages: list[StageRecord] = Field(default_factory=list)
    """Per-stage durations and results, in execution order."""
    changes: dict[str, Any] = Field(default_factory=dict)
    """What the run changed. Shutdown (what startup must undo exactly): `flux_suspended` (refs Hecate
    suspended), `flux_already_suspended` (never resume these), `scaled` (ref -> original replicas),
    `cordoned` (nodes Hecate cordoned), `fsd_set` (UPSes Hecate set FSD on in upsd; only when any). Startup:
    `started` and `woken` (nodes), `uncordoned`, `restarted_pods`, `created` (objects created from the
    bootstrap cache), `flux_resumed`, `cleared_marks` (Hecate's annotations left on objects someone uncordoned
    or resumed by hand), `restored` (ref -> replicas), `deadlock` (the Flux/Gitea deadlock was detected),
    `branch` (`from`, `to`)."""
    not_done: list[StepNotDone] = Field(default_factory=list)
    """Every step that did not complete, in the order the run met it; empty for a `success`. Any entry makes
    the run `degraded` at best. Steps a run `aborted` on purpose (power back) never ran and are not listed."""


RunHistory = TypeAdapter(list[RunRecord])

PEER_FALLBACK = "peer-fallback"
"""The trigger source of a peer's local shutdown after its trigger could not be forwarded."""


def counts_for_budget(run: RunRecord) -> bool:
    """Only executed, complete shutdowns measure the real shutdown budget.

    A run that skipped or failed any step (``degraded``, ``failed``), or stopped early (``aborted``), did less
    than a real shutdown: its short duration must never teach a shorter budget.
    """
    return (
        run.kind is RunKind.shutdown
        and not run.dry_run
        and run.result is RunResult.success
        and not run.not_done
        and run.duration_s is not None
        and not run.trigger.get("resumed")  # its duration includes the time the process was down
        and not run.trigger.get("restarted")  # a crashed attempt did part of its work
        and run.trigger.get("source") != PEER_FALLBACK  # a peer's own power-off says nothing of the cluster's
    )


class RunTally:
    """Finished runs recorded since a point in time (the daemon's start), by kind, result and dry-run.

    ``runs.json`` keeps only the newest runs, so counting it can go down; this only goes up.
    Seeded with the history at start (those are not counted), it counts each finished run
    it has not seen before, whoever recorded it (the daemon, or ``hecate startup``/``drill``).
    """

    def __init__(self, history: list[RunRecord]) -> None:
        self._seen = {r.id for r in history if r.result is not None}
        self.counts: dict[tuple[str, str, bool], int] = {}

    def observe(self, history: list[RunRecord]) -> None:
        for r in history:
            if r.result is None or r.id in self._seen:
                continue
            self._seen.add(r.id)
            key = (r.kind.value, r.result.value, r.dry_run)
            self.counts[key] = self.counts.get(key, 0) + 1

    def as_rows(self) -> list[dict[str, Any]]:
        return [{"kind": k, "result": res, "dry_run": dry, "count": n}
                for (k, res, dry), n in sorted(self.counts.items())]
