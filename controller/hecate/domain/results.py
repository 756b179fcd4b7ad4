"""Typed step results: what each action did, and how that reads in the run record.

An action returns one of these -- or raises ``Skipped``/``StepFailed`` carrying one for
what it changed before it stopped (a failed drain still cordoned its node). Each result
knows its line for the stage record (:attr:`StepResult.detail`) and its part of the run
record's ``changes`` (:meth:`StepResult.record`), so the executor folds no payload by
key. The journal keeps :meth:`StepResult.to_data` (the JSON keys earlier versions wrote)
and :func:`from_data` reads it back when a killed run resumes, so what the steps
finished before the crash changed still counts -- and is still undone. Purely
computational.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from hecate.domain.plan import Action
from hecate.domain.runs import RunKind


@dataclass(frozen=True)
class BranchChange:
    """The GitRepository pointed at another branch (``previous`` None: it named none)."""

    previous: str | None
    to: str

    def to_data(self) -> dict[str, str | None]:
        return {"from": self.previous, "to": self.to}

    @classmethod
    def from_data(cls, data: Any) -> BranchChange | None:
        return cls(data.get("from"), str(data.get("to"))) if isinstance(data, Mapping) and data else None


@dataclass
class RunChanges:
    """What a run changed, filled by its steps' results; :meth:`as_record` is the record's ``changes``.

    The fields are those the run record documents (``hecate.domain.runs.RunRecord.changes``).
    """

    # shutdown: the UPSes Hecate set FSD on (startup has nothing to undo: upsd clears FSD when it restarts)
    fsd_set: list[str] = field(default_factory=list)
    # shutdown: what startup must undo exactly
    flux_suspended: list[str] = field(default_factory=list)
    flux_already_suspended: list[str] = field(default_factory=list)
    scaled: dict[str, int] = field(default_factory=dict)
    cordoned: list[str] = field(default_factory=list)
    # startup
    started: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    uncordoned: list[str] = field(default_factory=list)
    restarted_pods: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    flux_resumed: list[str] = field(default_factory=list)
    cleared_marks: list[str] = field(default_factory=list)
    restored: dict[str, int] = field(default_factory=dict)
    deadlock: bool = False
    branch: BranchChange | None = None

    def as_record(self, kind: RunKind) -> dict[str, Any]:
        if kind is not RunKind.startup:
            shutdown: dict[str, Any] = {
                "flux_suspended": self.flux_suspended, "flux_already_suspended": self.flux_already_suspended,
                "scaled": self.scaled, "cordoned": self.cordoned}
            if self.fsd_set:
                shutdown["fsd_set"] = self.fsd_set
            return shutdown
        record: dict[str, Any] = {
            "started": self.started, "woken": self.woken, "uncordoned": self.uncordoned,
            "restarted_pods": self.restarted_pods, "created": self.created, "flux_resumed": self.flux_resumed,
            "cleared_marks": self.cleared_marks, "restored": self.restored, "deadlock": self.deadlock}
        if self.branch is not None:
            record["branch"] = self.branch.to_data()
        return record


@dataclass(frozen=True)
class StepResult:
    """What a finished step did. This base changed nothing the run must remember."""

    @property
    def detail(self) -> str:
        """The step's line in its stage's record ("" for none). A resumed run reads the line from the
        journal instead: a result read back there knows what the step changed, not how long it took."""
        return ""

    def record(self, target: str, changes: RunChanges) -> None:
        """Add what the step (on ``target``) changed to the run's changes; failed and skipped steps too."""

    def to_data(self) -> dict[str, Any]:
        """The journal's form of the result."""
        return {}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """Read back what :meth:`to_data` wrote (or an earlier version); what is missing was not done."""
        return cls()


@dataclass(frozen=True)
class Done(StepResult):
    """A step whose only outcome is a line for the record (a node command, a wait, the preflight)."""

    note: str = ""

    @property
    def detail(self) -> str:
        return self.note


NOTHING = Done()
"""The result of a step that failed or was skipped before it changed anything."""


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(v) for v in data.get(key) or ())


def _counts(data: Mapping[str, Any], key: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in (data.get(key) or {}).items()}


# -- shutdown -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxSuspended(StepResult):
    suspended: tuple[str, ...] = ()
    """What Hecate suspended: startup resumes exactly these."""
    already_suspended: tuple[str, ...] = ()
    """Suspended before (by someone else): never resumed."""

    @property
    def detail(self) -> str:
        return f"suspended {len(self.suspended)}, already suspended {len(self.already_suspended)}"

    def record(self, target: str, changes: RunChanges) -> None:
        changes.flux_suspended += self.suspended
        changes.flux_already_suspended += self.already_suspended

    def to_data(self) -> dict[str, Any]:
        return {"suspended": list(self.suspended), "already_suspended": list(self.already_suspended)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_strings(data, "suspended"), _strings(data, "already_suspended"))


@dataclass(frozen=True)
class ScaledDown(StepResult):
    scaled: Mapping[str, int] = field(default_factory=dict)
    """Workload ref -> its replicas before Hecate scaled it to zero."""

    @property
    def detail(self) -> str:
        return f"{len(self.scaled)} workloads to 0"

    def record(self, target: str, changes: RunChanges) -> None:
        changes.scaled.update(self.scaled)

    def to_data(self) -> dict[str, Any]:
        return {"scaled": dict(self.scaled)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_counts(data, "scaled"))


@dataclass(frozen=True)
class VolumesWaited(StepResult):
    remaining: tuple[str, ...] = ()
    """VolumeAttachments still there when the wait ended."""

    @property
    def detail(self) -> str:
        return f"{len(self.remaining)} volume attachments remain" if self.remaining else ""

    def to_data(self) -> dict[str, Any]:
        return {"remaining": list(self.remaining)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_strings(data, "remaining"))


@dataclass(frozen=True)
class Drained(StepResult):
    cordoned: bool = False
    """Hecate cordoned the node (startup uncordons it), also when the drain itself then failed."""
    report: Mapping[str, Any] = field(default_factory=dict)
    """The drain's report (pods evicted, blocked, skipped, failed, terminating; ``timed_out``)."""

    @property
    def detail(self) -> str:
        if not self.report.get("timed_out"):
            return ""
        return f"drain timeout: {len(self.report.get('blocked', []))} pods left (PodDisruptionBudget)"

    def record(self, target: str, changes: RunChanges) -> None:
        if self.cordoned:
            changes.cordoned.append(target)

    def to_data(self) -> dict[str, Any]:
        return {**self.report, "cordoned": self.cordoned}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(bool(data.get("cordoned")), {k: v for k, v in data.items() if k != "cordoned"})


@dataclass(frozen=True)
class FsdSet(StepResult):
    login: str = "PRIMARY"
    """The login verb upsd granted before ``FSD`` (``MASTER`` on upsd before NUT 2.8)."""

    @property
    def detail(self) -> str:
        return f"FSD set in upsd (as {self.login.lower()}): its upsmon secondaries shut down"

    def record(self, target: str, changes: RunChanges) -> None:
        changes.fsd_set.append(target)

    def to_data(self) -> dict[str, Any]:
        return {"login": self.login}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data.get("login", "PRIMARY")))


@dataclass(frozen=True)
class PowerCycled(StepResult):
    command: str = ""
    """The NUT instant command upsd accepted."""

    @property
    def detail(self) -> str:
        return f"{self.command} sent: the UPS cuts its outputs and restores them when mains returns"

    def to_data(self) -> dict[str, Any]:
        return {"command": self.command}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data.get("command", "")))


# -- startup --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Woken(StepResult):
    woken: bool = False
    """False: the node's sshd answered already."""
    note: str = ""

    @property
    def detail(self) -> str:
        return self.note

    def record(self, target: str, changes: RunChanges) -> None:
        if self.woken:
            changes.woken.append(target)

    def to_data(self) -> dict[str, Any]:
        return {"woken": True} if self.woken else {}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(bool(data.get("woken")))


@dataclass(frozen=True)
class ServiceStarted(StepResult):
    unit: str = ""
    started: bool = False
    """False: the unit was running already."""

    @property
    def detail(self) -> str:
        return f"started {self.unit}" if self.started else f"{self.unit} already running"

    def record(self, target: str, changes: RunChanges) -> None:
        if self.started:
            changes.started.append(target)

    def to_data(self) -> dict[str, Any]:
        return {"started": True} if self.started else {}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(started=bool(data.get("started")))


@dataclass(frozen=True)
class Uncordoned(StepResult):
    nodes: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        return f"uncordoned {', '.join(self.nodes)}" if self.nodes else ""

    def record(self, target: str, changes: RunChanges) -> None:
        changes.uncordoned += self.nodes

    def to_data(self) -> dict[str, Any]:
        return {"uncordoned": list(self.nodes)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_strings(data, "uncordoned"))


@dataclass(frozen=True)
class WorkloadRecovery(StepResult):
    """A foundation workload waited for, and what its recovery did (restarted pods, objects created)."""

    restarted: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    """Objects created from the bootstrap cache."""
    waited_s: float = 0.0

    @property
    def detail(self) -> str:
        notes = [f"available after {self.waited_s:.1f} s"] if self.waited_s > 1 else []
        if self.restarted:
            notes.append(f"restarted {', '.join(self.restarted)}")
        if self.applied:
            notes.append(f"created from the cache: {', '.join(self.applied)}")
        return "; ".join(notes)

    def record(self, target: str, changes: RunChanges) -> None:
        changes.restarted_pods += self.restarted
        changes.created += self.applied

    def to_data(self) -> dict[str, Any]:
        return {"restarted": list(self.restarted), "applied": list(self.applied)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_strings(data, "restarted"), _strings(data, "applied"))


@dataclass(frozen=True)
class FluxResumed(StepResult):
    resumed: tuple[str, ...] = ()
    """Only what Hecate had suspended."""
    cleared_marks: tuple[str, ...] = ()
    """Hecate's marks left on objects someone resumed by hand."""
    branch: BranchChange | None = None

    @property
    def detail(self) -> str:
        notes = [f"resumed {len(self.resumed)}"]
        if self.branch is not None and self.branch.previous != self.branch.to:
            notes.append(f"GitRepository branch {self.branch.previous} -> {self.branch.to}")
        if self.cleared_marks:
            notes.append(f"cleared Hecate's stale marks on {', '.join(self.cleared_marks)}")
        return ", ".join(notes)

    def record(self, target: str, changes: RunChanges) -> None:
        changes.flux_resumed += self.resumed
        changes.cleared_marks += self.cleared_marks
        if self.branch is not None:
            changes.branch = self.branch

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"resumed": list(self.resumed), "cleared_marks": list(self.cleared_marks)}
        if self.branch is not None:
            data["branch"] = self.branch.to_data()
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_strings(data, "resumed"), _strings(data, "cleared_marks"),
                   BranchChange.from_data(data.get("branch")))


@dataclass(frozen=True)
class FluxBootstrapped(StepResult):
    deadlock: bool = False
    """The Flux/Gitea deadlock was detected."""
    fallback: bool = False
    """The bootstrap cache was applied to break it."""
    applied: tuple[str, ...] = ()
    """Objects the fallback created."""
    apply_failed: Mapping[str, Any] = field(default_factory=dict)
    branch: BranchChange | None = None
    ready_after_s: float | None = None
    """Seconds until Flux was Ready (None: it was not)."""

    @property
    def detail(self) -> str:
        notes = [] if self.ready_after_s is None else [f"Flux Ready after {self.ready_after_s:.1f} s"]
        if self.fallback:
            notes.append(f"deadlock broken: created {', '.join(self.applied) or 'nothing'}")
        return "; ".join(notes)

    def record(self, target: str, changes: RunChanges) -> None:
        changes.deadlock = self.deadlock
        changes.created += self.applied
        if self.branch is not None:
            changes.branch = self.branch

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"deadlock": self.deadlock, "fallback": self.fallback, "applied": list(self.applied)}
        if self.fallback:
            data["apply_failed"] = dict(self.apply_failed)
        if self.branch is not None:
            data["branch"] = self.branch.to_data()
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(bool(data.get("deadlock")), bool(data.get("fallback")), _strings(data, "applied"),
                   dict(data.get("apply_failed") or {}), BranchChange.from_data(data.get("branch")))


@dataclass(frozen=True)
class Restored(StepResult):
    restored: Mapping[str, int] = field(default_factory=dict)
    """Workload ref -> the replicas it got back."""

    @property
    def detail(self) -> str:
        return ", ".join(f"{r} -> {n}" for r, n in sorted(self.restored.items()))

    def record(self, target: str, changes: RunChanges) -> None:
        changes.restored.update(self.restored)

    def to_data(self) -> dict[str, Any]:
        return {"restored": dict(self.restored)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(_counts(data, "restored"))


RESULTS: dict[Action, type[StepResult]] = {
    Action.flux_suspend: FluxSuspended, Action.scale_down: ScaledDown, Action.wait_volumes: VolumesWaited,
    Action.drain: Drained, Action.ups_power_cycle: PowerCycled, Action.set_fsd: FsdSet,
    Action.wake: Woken, Action.start_service: ServiceStarted, Action.uncordon: Uncordoned,
    Action.wait_workload: WorkloadRecovery, Action.flux_resume: FluxResumed,
    Action.flux_bootstrap: FluxBootstrapped, Action.restore: Restored,
}
"""The result each action returns; any other action's is :class:`Done`."""


def from_data(action: Action, data: Mapping[str, Any]) -> StepResult:
    """A step's result as the journal kept it."""
    return RESULTS.get(action, Done).from_data(data)


def changes(kind: RunKind, results: Iterable[tuple[str, StepResult]]) -> dict[str, Any]:
    """The run record's ``changes`` from every step's (target, result), in the order they ran."""
    folded = RunChanges()
    for target, result in results:
        result.record(target, folded)
    return folded.as_record(kind)
