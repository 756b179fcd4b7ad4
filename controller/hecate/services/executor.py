"""The plan executor: runs a plan's stages in order, journaled, resumable, bounded in time.

One executor applies every plan (shutdown and startup). Per stage it runs the
steps wave by wave, up to the stage's parallelism at once; each step has its own timeout
and retries transient errors with backoff; the stage has a deadline after which its
unfinished steps are cancelled and recorded as failed. A failed step with
``on_error: abort`` stops the run; with ``continue`` (the default) the stage is
``degraded`` and the run goes on -- shutdown must reach power-off.

It holds the state dir's run lock for the whole run, and journals every step's start and
end (``journal/<run-id>.jsonl``, fsync'd). A process killed mid-run is resumed by
``resume``: the plan comes back from the journal and finished steps are not repeated.
The run record (per-stage durations, result, what was changed) is written to
``runs.json`` at the end -- and *before* the coordinator powers itself off, which is the
last stage and the one step that cannot report back.

Before each non-disruptive stage the caller's ``power_restored()`` is asked; if mains is
back before the first disruptive stage starts, the run aborts cleanly and undoes what
the finished stages changed (the Flux suspension).

Actions are capabilities handed in by the caller (``hecate.services.shutdown`` wires
them to SSH, Kubernetes, NUT and the local host); an action raises :class:`Skipped` to
skip itself (e.g. the API is unreachable), :class:`StepFailed` to fail (``transient``
ones are retried), and returns a dict of data that is journaled and folded into the
run's ``changes``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from hecate.adapters.store import StateStore, boot_id, new_run_id
from hecate.domain.plan import Action, OnError, Plan, Stage, Step, first_disruptive
from hecate.domain.runs import RunKind, RunRecord, RunResult, StageRecord

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
INTERRUPT_POLL_S = 2.0
"""How often a run's interrupt check (e.g. "is mains failing again?") is asked during a stage."""


class Skipped(Exception):
    """The step did not apply (e.g. the Kubernetes API is unreachable); the run goes on.

    ``data`` keeps what it changed before it had to stop (recorded like a success's data)."""

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


class StepFailed(Exception):
    """The step failed; ``data`` keeps what it changed before failing (e.g. half the Flux objects)."""

    def __init__(self, message: str, *, transient: bool = False, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.data = data or {}


ActionFn = Callable[[Step], Awaitable[dict[str, Any]]]
Interrupt = Callable[[], Awaitable[str | None]]
"""Asked before every stage but the first: a reason to abort the run now (e.g. mains failed again)."""
UndoFn = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class StepOutcome:
    stage: str
    step: Step
    status: str  # ok | failed | skipped
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    attempts: int = 1

    @property
    def key(self) -> str:
        return self.step.key(self.stage)


class Progress(Protocol):
    """Live progress for people (rich, in the CLI) or JSON lines for journald (daemon)."""

    def stage_started(self, stage: Stage, index: int, total: int) -> None: ...

    def step_finished(self, outcome: StepOutcome) -> None: ...

    def stage_finished(self, record: StageRecord) -> None: ...

    def run_finished(self, record: RunRecord) -> None: ...


class Executor:
    def __init__(
        self,
        store: StateStore,
        actions: Mapping[Action, ActionFn],
        progress: Progress,
        *,
        undo: Mapping[Action, UndoFn] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.actions = actions
        self.undo = undo or {}
        self.progress = progress
        self.clock = clock
        self._closed: set[str] = set()  # runs recorded already (before local power-off): no more journal

    # -- entry points --------------------------------------------------------------------

    async def run(self, plan: Plan, trigger: dict[str, Any], *,
                  power_restored: Callable[[], bool] | None = None, interrupt: Interrupt | None = None) -> RunRecord:
        """Run a new plan under the run lock (``RunInProgress`` if another run holds it)."""
        with self.store.run_lock(f"{plan.kind} run"):
            run_id = new_run_id(datetime.fromtimestamp(self.clock(), UTC))
            started = self.clock()
            self._journal(run_id, {"event": "run", "plan": plan.to_dict(), "trigger": trigger, "t": started,
                                   "boot_id": boot_id()})
            return await self._execute(run_id, plan, trigger, started, {}, power_restored, interrupt=interrupt)

    async def run_or_resume(self, plan: Plan, trigger: dict[str, Any], *,
                            power_restored: Callable[[], bool] | None = None,
                            interrupt: Interrupt | None = None) -> RunRecord:
        """Resume a run of this kind a killed process left in the journal this boot, else run ``plan``.

        One from an earlier boot is recorded as interrupted first, never resumed.
        """
        pending = in_flight(self.store, RunKind(plan.kind))
        if pending is not None and not self.is_stale(pending):
            return await self.resume(pending, plan=plan, power_restored=power_restored, interrupt=interrupt)
        if pending is not None:
            try:
                await self.resume(pending)
            except ValueError as err:  # a journal without a plan: discarded
                log.warning("%s", err)
        return await self.run(plan, trigger, power_restored=power_restored, interrupt=interrupt)

    def is_stale(self, run_id: str) -> bool:
        """True when the run's journal comes from an earlier boot (or has no plan): never resume it."""
        head = next((e for e in self.store.journal_read(run_id) if e.get("event") == "run"), None)
        return head is None or head.get("boot_id") != boot_id()

    async def resume(self, run_id: str, *, plan: Plan | None = None,
                     power_restored: Callable[[], bool] | None = None, interrupt: Interrupt | None = None) -> RunRecord:
        """Finish a run a killed process left in the journal, without repeating finished steps.

        ``plan`` (rebuilt from the host's configuration) is what runs; the journal only says
        which steps are done. Commands are never taken from the journal file.
        """
        with self.store.run_lock(f"resume {run_id}"):
            events = self.store.journal_read(run_id)
            head = next((e for e in events if e.get("event") == "run"), None)
            if head is None:
                self.store.journal_finish(run_id)
                raise ValueError(f"journal of run {run_id} has no plan; discarded it")
            if head.get("boot_id") != boot_id():
                # The machine rebooted mid-run: resuming would shut down a cluster that has
                # come back with the power. Record the run as interrupted instead.
                log.warning("run %s was interrupted by a reboot; recording it, not resuming it", run_id)
                record = RunRecord(
                    id=run_id, kind=RunKind(head["plan"]["kind"]), trigger=head["trigger"], dry_run=False,
                    started_at=datetime.fromtimestamp(head["t"], UTC), result=RunResult.failed,
                    stages=[StageRecord(name="interrupted", duration_s=0, result=RunResult.failed,
                                        detail="the host rebooted before the run finished")])
                self.store.append_run(record)
                self.store.journal_finish(run_id)
                return record
            done = {e["step"]: e for e in events if e.get("event") == "step-end"}
            log.warning("resuming run %s: %d steps already done", run_id, len(done))
            self._journal(run_id, {"event": "resume", "t": self.clock()})
            plan = plan or Plan.from_dict(head["plan"])
            started_steps = {e["step"] for e in events if e.get("event") == "step-start"}
            trigger = {**head["trigger"], "resumed": True}  # its duration includes the downtime
            return await self._execute(run_id, plan, trigger, head["t"], done, power_restored,
                                       past_no_return=_past_no_return(plan, started_steps), interrupt=interrupt)

    # -- the run ---------------------------------------------------------------------------

    async def _execute(self, run_id: str, plan: Plan, trigger: dict[str, Any], started: float,
                       done: dict[str, dict[str, Any]], power_restored: Callable[[], bool] | None,
                       past_no_return: bool = False, interrupt: Interrupt | None = None) -> RunRecord:
        record = RunRecord(id=run_id, kind=RunKind(plan.kind), trigger=trigger, dry_run=False,
                           started_at=datetime.fromtimestamp(started, UTC))
        # A step of the journal the rebuilt plan no longer has (the config changed meanwhile) is history only.
        done = {key: e for key, e in done.items() if _in_plan(plan, key)}
        outcomes: list[StepOutcome] = [_from_journal(plan, e) for e in done.values()]
        stage_records: dict[str, StageRecord] = {}
        disruptive_from = first_disruptive(plan)
        aborted = False
        for index, stage in enumerate(plan.stages):
            if stage.steps[0].action is Action.local_poweroff:
                # Record the run before the coordinator goes dark: nothing reports after this step.
                record = self._finish(record, stage_records, outcomes, started, aborted=False, final=False)
            if (not past_no_return and index <= disruptive_from and power_restored is not None
                    and power_restored()):
                log.warning("power is back before the first disruptive stage: aborting the %s", plan.kind)
                await self._undo(outcomes)
                aborted = True
                break
            watch = interrupt if interrupt is not None and index > 0 else None
            reason = await watch() if watch is not None else None
            stage_outcomes: list[StepOutcome] = []
            if not reason:
                self.progress.stage_started(stage, index, len(plan.stages))
                reason = await self._run_stage_watched(run_id, stage, done, stage_outcomes, watch)
            outcomes.extend(stage_outcomes)
            if reason:
                log.warning("%s: aborting the %s in stage %s", reason, plan.kind, stage.name)
                stage_records["interrupted"] = StageRecord(name="interrupted", duration_s=0,
                                                           result=RunResult.aborted, detail=f"{stage.name}: {reason}")
                aborted = True
                break
            stage_record = _stage_record(stage, [o for o in outcomes if o.stage == stage.name], self.store, run_id)
            stage_records[stage.name] = stage_record
            self.progress.stage_finished(stage_record)
            if any(o.status == "failed" and o.step.on_error is OnError.abort for o in stage_outcomes):
                log.error("stage %s failed a step marked abort: stopping the run", stage.name)
                break
        return self._finish(record, stage_records, outcomes, started, aborted=aborted)

    async def _run_stage_watched(self, run_id: str, stage: Stage, done: Mapping[str, Any],
                                 results: list[StepOutcome], watch: Interrupt | None) -> str | None:
        """Run the stage; with ``watch``, ask it every INTERRUPT_POLL_S meanwhile and cancel the stage
        when it gives a reason (returned). Finished steps' outcomes land in ``results`` either way."""
        if watch is None:
            await self._run_stage(run_id, stage, done, results)
            return None
        stage_task = asyncio.create_task(self._run_stage(run_id, stage, done, results))
        while True:
            finished, _ = await asyncio.wait({stage_task}, timeout=INTERRUPT_POLL_S)
            if finished:
                stage_task.result()
                return None
            try:
                reason = await watch()
            except Exception:  # a broken check must not stop a run
                log.exception("the run's interrupt check failed")
                reason = None
            if reason:
                stage_task.cancel()
                await asyncio.gather(stage_task, return_exceptions=True)
                return reason

    async def _run_stage(self, run_id: str, stage: Stage, done: Mapping[str, Any],
                         results: list[StepOutcome]) -> list[StepOutcome]:
        gate = asyncio.Semaphore(stage.parallelism)
        deadline = time.monotonic() + stage.deadline_s

        async def one(step: Step) -> None:
            async with gate:
                results.append(await self._run_step(run_id, stage, step))

        for index, wave in enumerate(stage.waves()):
            pending = [s for s in wave if s.key(stage.name) not in done]
            if not pending:
                continue
            tasks = {asyncio.create_task(one(s)): s for s in pending}
            # The stage deadline bounds the stage, but a later wave always gets at least its own
            # steps' time: a hung agent wave must never leave the servers un-powered-off.
            budget = deadline - time.monotonic()
            if index > 0:
                budget = max(budget, max(_step_budget(s) for s in pending))
            try:
                _done, unfinished = await asyncio.wait(tasks, timeout=budget)
            except asyncio.CancelledError:  # the run was interrupted: its steps stop with it
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            for task in unfinished:
                step = tasks[task]
                outcome = StepOutcome(stage.name, step, "failed", f"stage deadline of {stage.deadline_s:g} s passed")
                self._journal(run_id, _end_event(outcome, self.clock()))
                results.append(outcome)
                self.progress.step_finished(outcome)
        return results

    async def _run_step(self, run_id: str, stage: Stage, step: Step) -> StepOutcome:
        action = self.actions.get(step.action)
        key = step.key(stage.name)
        self._journal(run_id, {"event": "step-start", "step": key, "t": self.clock()})
        started = time.monotonic()
        attempts = 0
        outcome: StepOutcome
        while True:
            attempts += 1
            try:
                if action is None:
                    raise StepFailed(f"no capability for action {step.action.value}")
                data = await asyncio.wait_for(action(step), timeout=step.timeout_s)
                outcome = StepOutcome(stage.name, step, "ok", data.pop("detail", ""), data)
            except Skipped as err:
                log.warning("step %s skipped: %s", key, err)
                outcome = StepOutcome(stage.name, step, "skipped", str(err), err.data)
            except StepFailed as err:
                if err.transient and attempts <= step.retries:
                    await asyncio.sleep(BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)])
                    continue
                outcome = StepOutcome(stage.name, step, "failed", str(err), err.data)
            except TimeoutError:
                outcome = StepOutcome(stage.name, step, "failed", f"timed out after {step.timeout_s:g} s")
            except Exception as err:  # a bug in one step must not stop a shutdown
                log.exception("step %s crashed", key)
                outcome = StepOutcome(stage.name, step, "failed", f"unexpected error: {err!r}")
            break
        outcome.duration_s = time.monotonic() - started
        outcome.attempts = attempts
        self._journal(run_id, _end_event(outcome, self.clock()))
        self.progress.step_finished(outcome)
        return outcome

    async def _undo(self, outcomes: list[StepOutcome]) -> None:
        for outcome in reversed(outcomes):
            undo = self.undo.get(outcome.step.action)
            if undo is not None and outcome.status == "ok":
                try:
                    await undo(outcome.data)
                except Exception:
                    log.exception("undoing %s failed", outcome.key)

    def _finish(self, record: RunRecord, stage_records: Mapping[str, StageRecord], outcomes: list[StepOutcome],
                started: float, *, aborted: bool, final: bool = True) -> RunRecord:
        finished = self.clock()
        stages = list(stage_records.values())
        failed_abort = any(o.status == "failed" and o.step.on_error is OnError.abort for o in outcomes)
        if aborted:
            result = RunResult.aborted
        elif failed_abort:
            result = RunResult.failed
        elif any(s.result is not RunResult.success for s in stages):
            result = RunResult.degraded
        else:
            result = RunResult.success
        result_record = record.model_copy(update={
            "finished_at": datetime.fromtimestamp(finished, UTC), "duration_s": max(0.0, finished - started),
            "result": result, "stages": stages, "changes": _changes(outcomes, record.kind),
        })
        self.store.append_run(result_record)
        self.store.journal_finish(record.id)
        self._closed.add(record.id)
        if final:
            self.progress.run_finished(result_record)
        return result_record

    def _journal(self, run_id: str, event: dict[str, Any]) -> None:
        if run_id not in self._closed:
            self.store.journal_append(run_id, event)


def in_flight(store: StateStore, kind: RunKind) -> str | None:
    """The id of a run of this kind a killed process left in the journal, if any."""
    for run_id in store.in_flight_runs():
        head = next((e for e in store.journal_read(run_id) if e.get("event") == "run"), None)
        if head and head.get("plan", {}).get("kind") == kind.value:
            return run_id
    return None


def _step_budget(step: Step) -> float:
    """The longest one step can legitimately take: every attempt plus the backoffs between them."""
    return step.timeout_s * (step.retries + 1) + sum(BACKOFF_S[: step.retries])


def _end_event(outcome: StepOutcome, t: float) -> dict[str, Any]:
    return {"event": "step-end", "step": outcome.key, "status": outcome.status, "detail": outcome.detail,
            "data": outcome.data, "t": t, "duration_s": outcome.duration_s, "attempts": outcome.attempts}


def _past_no_return(plan: Plan, started_steps: set[str]) -> bool:
    """Whether any step of a disruptive stage had started before the process died."""
    first = first_disruptive(plan)
    disruptive = {st.key(s.name) for s in plan.stages[first:] for st in s.steps}
    return bool(started_steps & disruptive)


def _in_plan(plan: Plan, key: str) -> bool:
    return any(st.key(s.name) == key for s in plan.stages for st in s.steps)


def _from_journal(plan: Plan, event: dict[str, Any]) -> StepOutcome:
    stage_name, _, _ = event["step"].partition("/")
    stage = next(s for s in plan.stages if s.name == stage_name)
    step = next(st for st in stage.steps if st.key(stage.name) == event["step"])
    return StepOutcome(stage_name, step, event["status"], event.get("detail", ""), event.get("data", {}),
                       event.get("duration_s", 0.0), event.get("attempts", 1))


def _stage_record(stage: Stage, outcomes: list[StepOutcome], store: StateStore, run_id: str) -> StageRecord:
    """Stage wall time from the journal (first step start to last step end; survives a resume)."""
    keys = {s.key(stage.name) for s in stage.steps}
    times = [e["t"] for e in store.journal_read(run_id)
             if e.get("event") in ("step-start", "step-end") and e.get("step") in keys]
    duration = max(times) - min(times) if times else sum(o.duration_s for o in outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    missing = len(keys) - len({o.key for o in outcomes})
    result = RunResult.success if not failed and not missing else RunResult.degraded
    notes = [f"{o.step.target}: {o.detail}" for o in failed] + [f"{o.step.target} skipped: {o.detail}" for o in skipped]
    notes += [f"{o.step.target}: {o.detail}" for o in outcomes if o.status == "ok" and o.detail]
    if missing:
        notes.append(f"{missing} step(s) not run")
    return StageRecord(name=stage.name, duration_s=round(duration, 3), result=result, detail="; ".join(notes))


def _changes(outcomes: list[StepOutcome], kind: RunKind = RunKind.shutdown) -> dict[str, Any]:
    if kind is RunKind.startup:
        return _startup_changes(outcomes)
    changes: dict[str, Any] = {"flux_suspended": [], "flux_already_suspended": [], "scaled": {}, "cordoned": []}
    for o in outcomes:  # failed steps count too: they may have changed part of what they touch
        if o.step.action is Action.flux_suspend:
            changes["flux_suspended"] += o.data.get("suspended", [])
            changes["flux_already_suspended"] += o.data.get("already_suspended", [])
        elif o.step.action is Action.scale_down:
            changes["scaled"].update(o.data.get("scaled", {}))
        elif o.step.action is Action.drain and o.data.get("cordoned"):
            changes["cordoned"].append(o.step.target)
    return changes


def _startup_changes(outcomes: list[StepOutcome]) -> dict[str, Any]:
    changes: dict[str, Any] = {"started": [], "woken": [], "uncordoned": [], "restarted_pods": [],
                               "created": [], "flux_resumed": [], "cleared_marks": [], "restored": {},
                               "deadlock": False}
    for o in outcomes:
        data = o.data
        if o.step.action is Action.start_service and data.get("started"):
            changes["started"].append(o.step.target)
        elif o.step.action is Action.wake and data.get("woken"):
            changes["woken"].append(o.step.target)
        elif o.step.action is Action.uncordon:
            changes["uncordoned"] += data.get("uncordoned", [])
        elif o.step.action is Action.wait_workload:
            changes["restarted_pods"] += data.get("restarted", [])
            changes["created"] += data.get("applied", [])
        elif o.step.action is Action.flux_resume:
            changes["flux_resumed"] += data.get("resumed", [])
            changes["cleared_marks"] += data.get("cleared_marks", [])
            if data.get("branch"):
                changes["branch"] = data["branch"]
        elif o.step.action is Action.flux_bootstrap:
            changes["deadlock"] = bool(data.get("deadlock"))
            changes["created"] += data.get("applied", [])
            if data.get("branch"):
                changes["branch"] = data["branch"]
        elif o.step.action is Action.restore:
            changes["restored"].update(data.get("restored", {}))
    return changes
