"""The plan executor: runs a plan's stages in order, journaled, resumable, bounded in time.

One executor applies every plan (shutdown and startup). Per stage it runs the
steps wave by wave, up to the stage's parallelism at once; each step has its own timeout
and retries transient errors with backoff; the stage has a deadline after which its
unfinished steps are cancelled and recorded as failed. A failed step with
``on_error: abort`` stops the run; with ``continue`` (the default) the stage is
``degraded`` and the run goes on -- shutdown must reach power-off. A skipped step degrades
its stage too: a run is ``success`` only when every step of it completed, and its record
lists every step that did not (``not_done``), which progress shows as the run's summary.

It holds the state dir's run lock for the whole run, and journals every step's start and
end (typed events, ``hecate.domain.journal``, in ``journal/<run-id>.jsonl``, fsync'd). A
process killed mid-run is resumed by ``resume``: the journal says which steps finished
(and what they changed), and those are not repeated. The journal file is read only to
resume; during a run the executor keeps what it needs in memory. The run record
(per-stage durations, result, what was changed) is written to ``runs.json`` at the end --
and *before* the coordinator powers itself off, which is the last stage and the one step
that cannot report back.

Bookkeeping never stops a run: a journal line or the run record that cannot be written
(a full or read-only disk) is counted and reported by the store, and the run goes on in
memory. With ``lock_required=False`` (the daemon's armed shutdown) a run lock whose file
cannot be opened does not stop the run either; a lock another run holds always does.

Before each non-disruptive stage the caller's ``power_restored()`` is asked; if mains is
back before the first disruptive stage starts, the run aborts cleanly and undoes what
the finished stages changed (the Flux suspension).

Actions are capabilities handed in by the caller (``hecate.services.shutdown`` wires
them to SSH, Kubernetes, NUT and the local host); an action raises :class:`Skipped` to
skip itself (e.g. the API is unreachable), :class:`StepFailed` to fail (``transient``
ones are retried), and returns a typed result (``hecate.domain.results``) that is
journaled and knows its line in the stage record and its part of the run's ``changes``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from hecate.adapters.store import StateStore, boot_id, new_run_id
from hecate.domain import results, text
from hecate.domain.journal import Event, RunResumed, RunStarted, StepFinished, StepStarted, StepStatus
from hecate.domain.plan import Action, OnError, Plan, Stage, Step, first_disruptive
from hecate.domain.results import NOTHING, StepResult
from hecate.domain.runs import NotDone, RunKind, RunRecord, RunResult, StageRecord, StepNotDone

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
INTERRUPT_POLL_S = 2.0
"""How often a run's interrupt check (e.g. "is mains failing again?") is asked during a stage."""


class Skipped(Exception):
    """The step did not apply (e.g. the Kubernetes API is unreachable); the run goes on.

    ``result`` keeps what it changed before it had to stop (recorded like a success's)."""

    def __init__(self, message: str, *, result: StepResult | None = None) -> None:
        super().__init__(message)
        self.result = NOTHING if result is None else result


class StepFailed(Exception):
    """The step failed; ``result`` keeps what it changed before failing (e.g. half the Flux objects)."""

    def __init__(self, message: str, *, transient: bool = False, result: StepResult | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.result = NOTHING if result is None else result


ActionFn = Callable[[Step], Awaitable[StepResult]]
Interrupt = Callable[[], Awaitable[str | None]]
"""Asked before every stage but the first: a reason to abort the run now (e.g. mains failed again)."""
UndoFn = Callable[[StepResult], Awaitable[None]]


@dataclass
class StepOutcome:
    stage: str
    step: Step
    status: StepStatus
    detail: str = ""
    result: StepResult = NOTHING
    duration_s: float = 0.0
    attempts: int = 1

    def __post_init__(self) -> None:
        # A detail can quote the API, a node or upsd (names, messages, output): fit to print.
        self.detail = text.clean(self.detail)

    @property
    def key(self) -> str:
        return self.step.key(self.stage)


class Progress(Protocol):
    """Live progress for people (rich, in the CLI) or JSON lines for journald (daemon)."""

    def stage_started(self, stage: Stage, index: int, total: int) -> None: ...

    def step_finished(self, outcome: StepOutcome) -> None: ...

    def stage_finished(self, record: StageRecord) -> None: ...

    def run_finished(self, record: RunRecord) -> None: ...


class _Journal:
    """One run's journal: appended through the store, with each step's journaled times kept in
    memory (a stage's wall time spans its steps' first start to last end, across a resume too)."""

    def __init__(self, store: StateStore, run_id: str, earlier: Iterable[Event] = ()) -> None:
        self.store = store
        self.run_id = run_id
        self.closed = False
        """The run is recorded already (before the local power-off): nothing more is journaled."""
        self.headless = False
        """Its RunStarted could not be written: a journal without its plan could never resume, so none is kept."""
        self._times: dict[str, list[float]] = {}
        for event in earlier:
            self._note(event)

    def append(self, event: Event) -> None:
        if not self.closed:
            if not self.headless and not self.store.journal_append(self.run_id, event):
                self.headless = isinstance(event, RunStarted)
            self._note(event)

    def close(self) -> None:
        self.store.journal_finish(self.run_id)
        self.closed = True

    def times(self, keys: Iterable[str]) -> list[float]:
        return [t for key in keys for t in self._times.get(key, ())]

    def _note(self, event: Event) -> None:
        if isinstance(event, StepStarted | StepFinished):
            self._times.setdefault(event.step, []).append(event.t)


class Executor:
    def __init__(
        self,
        store: StateStore,
        actions: Mapping[Action, ActionFn],
        progress: Progress,
        *,
        undo: Mapping[Action, UndoFn] | None = None,
        clock: Callable[[], float] = time.time,
        lock_required: bool = True,
    ) -> None:
        self.store = store
        self.lock_required = lock_required
        self.actions = actions
        self.undo = undo or {}
        self.progress = progress
        self.clock = clock

    # -- entry points --------------------------------------------------------------------

    async def run(self, plan: Plan, trigger: dict[str, Any], *,
                  power_restored: Callable[[], bool] | None = None, interrupt: Interrupt | None = None) -> RunRecord:
        """Run a new plan under the run lock (``RunInProgress`` if another run holds it)."""
        with self.store.run_lock(f"{plan.kind} run", required=self.lock_required):
            run_id = new_run_id(datetime.fromtimestamp(self.clock(), UTC))
            started = self.clock()
            journal = _Journal(self.store, run_id)
            journal.append(RunStarted(plan, trigger, started, boot_id()))
            return await self._execute(journal, plan, trigger, started, {}, power_restored, interrupt=interrupt)

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
        head = _head(self.store.journal_read(run_id))
        return head is None or head.boot_id != boot_id()

    async def resume(self, run_id: str, *, plan: Plan | None = None,
                     power_restored: Callable[[], bool] | None = None, interrupt: Interrupt | None = None) -> RunRecord:
        """Finish a run a killed process left in the journal, without repeating finished steps.

        ``plan`` (rebuilt from the host's configuration) is what runs; the journal only says
        which steps are done. Commands are never taken from the journal file.
        """
        with self.store.run_lock(f"resume {run_id}", required=self.lock_required):
            events = self.store.journal_read(run_id)
            head = _head(events)
            if head is None:
                self.store.journal_finish(run_id)
                raise ValueError(f"journal of run {run_id} has no plan; discarded it")
            if head.boot_id != boot_id():
                # The machine rebooted mid-run: resuming would shut down a cluster that has
                # come back with the power. Record the run as interrupted instead.
                log.warning("run %s was interrupted by a reboot; recording it, not resuming it", run_id)
                record = RunRecord(
                    id=run_id, kind=RunKind(head.plan.kind), trigger=head.trigger, dry_run=False,
                    started_at=datetime.fromtimestamp(head.t, UTC), result=RunResult.failed,
                    stages=[StageRecord(name="interrupted", duration_s=0, result=RunResult.failed,
                                        detail="the host rebooted before the run finished")])
                self.store.append_run(record)
                self.store.journal_finish(run_id)
                return record
            done = {e.step: e for e in events if isinstance(e, StepFinished)}
            log.warning("resuming run %s: %d steps already done", run_id, len(done))
            journal = _Journal(self.store, run_id, events)
            journal.append(RunResumed(self.clock()))
            plan = plan or head.plan
            started_steps = {e.step for e in events if isinstance(e, StepStarted)}
            trigger = {**head.trigger, "resumed": True}  # its duration includes the downtime
            return await self._execute(journal, plan, trigger, head.t, done, power_restored,
                                       past_no_return=_past_no_return(plan, started_steps), interrupt=interrupt)

    # -- the run ---------------------------------------------------------------------------

    async def _execute(self, journal: _Journal, plan: Plan, trigger: dict[str, Any], started: float,
                       done: dict[str, StepFinished], power_restored: Callable[[], bool] | None,
                       past_no_return: bool = False, interrupt: Interrupt | None = None) -> RunRecord:
        record = RunRecord(id=journal.run_id, kind=RunKind(plan.kind), trigger=trigger, dry_run=False,
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
                record = self._finish(journal, plan, record, stage_records, outcomes, started, aborted=False,
                                      final=False)
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
                reason = await self._run_stage_watched(journal, stage, done, stage_outcomes, watch)
            outcomes.extend(stage_outcomes)
            if reason:
                log.warning("%s: aborting the %s in stage %s", reason, plan.kind, stage.name)
                stage_records["interrupted"] = StageRecord(name="interrupted", duration_s=0,
                                                           result=RunResult.aborted, detail=f"{stage.name}: {reason}")
                aborted = True
                break
            stage_record = _stage_record(stage, [o for o in outcomes if o.stage == stage.name], journal)
            stage_records[stage.name] = stage_record
            self.progress.stage_finished(stage_record)
            if any(o.status is StepStatus.failed and o.step.on_error is OnError.abort for o in stage_outcomes):
                log.error("stage %s failed a step marked abort: stopping the run", stage.name)
                break
        return self._finish(journal, plan, record, stage_records, outcomes, started, aborted=aborted)

    async def _run_stage_watched(self, journal: _Journal, stage: Stage, done: Mapping[str, StepFinished],
                                 outcomes: list[StepOutcome], watch: Interrupt | None) -> str | None:
        """Run the stage; with ``watch``, ask it every INTERRUPT_POLL_S meanwhile and cancel the stage
        when it gives a reason (returned). Finished steps' outcomes land in ``outcomes`` either way."""
        if watch is None:
            await self._run_stage(journal, stage, done, outcomes)
            return None
        stage_task = asyncio.create_task(self._run_stage(journal, stage, done, outcomes))
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

    async def _run_stage(self, journal: _Journal, stage: Stage, done: Mapping[str, StepFinished],
                         outcomes: list[StepOutcome]) -> list[StepOutcome]:
        gate = asyncio.Semaphore(stage.parallelism)
        deadline = time.monotonic() + stage.deadline_s

        async def one(step: Step) -> None:
            async with gate:
                outcomes.append(await self._run_step(journal, stage, step))

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
                outcome = StepOutcome(stage.name, step, StepStatus.failed,
                                      f"stage deadline of {stage.deadline_s:g} s passed")
                journal.append(_finished(outcome, self.clock()))
                outcomes.append(outcome)
                self.progress.step_finished(outcome)
        return outcomes

    async def _run_step(self, journal: _Journal, stage: Stage, step: Step) -> StepOutcome:
        action = self.actions.get(step.action)
        key = step.key(stage.name)
        journal.append(StepStarted(key, self.clock()))
        started = time.monotonic()
        attempts = 0
        outcome: StepOutcome
        while True:
            attempts += 1
            try:
                if action is None:
                    raise StepFailed(f"no capability for action {step.action.value}")
                result = await asyncio.wait_for(action(step), timeout=step.timeout_s)
                outcome = StepOutcome(stage.name, step, StepStatus.ok, result.detail, result)
            except Skipped as err:  # progress reports it (and the run's summary): not logged twice
                outcome = StepOutcome(stage.name, step, StepStatus.skipped, str(err), err.result)
            except StepFailed as err:
                if err.transient and attempts <= step.retries:
                    await asyncio.sleep(BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)])
                    continue
                outcome = StepOutcome(stage.name, step, StepStatus.failed, str(err), err.result)
            except TimeoutError:
                outcome = StepOutcome(stage.name, step, StepStatus.failed, f"timed out after {step.timeout_s:g} s")
            except Exception as err:  # a bug in one step must not stop a shutdown
                log.exception("step %s crashed", key)
                outcome = StepOutcome(stage.name, step, StepStatus.failed, f"unexpected error: {err!r}")
            break
        outcome.duration_s = time.monotonic() - started
        outcome.attempts = attempts
        journal.append(_finished(outcome, self.clock()))
        self.progress.step_finished(outcome)
        return outcome

    async def _undo(self, outcomes: list[StepOutcome]) -> None:
        for outcome in reversed(outcomes):
            undo = self.undo.get(outcome.step.action)
            if undo is not None and outcome.status is StepStatus.ok:
                try:
                    await undo(outcome.result)
                except Exception:
                    log.exception("undoing %s failed", outcome.key)

    def _finish(self, journal: _Journal, plan: Plan, record: RunRecord, stage_records: Mapping[str, StageRecord],
                outcomes: list[StepOutcome], started: float, *, aborted: bool, final: bool = True) -> RunRecord:
        finished = self.clock()
        stages = list(stage_records.values())
        failed_abort = any(o.status is StepStatus.failed and o.step.on_error is OnError.abort for o in outcomes)
        if aborted:
            result = RunResult.aborted
        elif failed_abort:
            result = RunResult.failed
        elif any(s.result is not RunResult.success for s in stages):
            result = RunResult.degraded
        else:
            result = RunResult.success
        shortfall = not_done(plan, stage_records, outcomes, stopped=failed_abort and not aborted)
        result_record = record.model_copy(update={
            "finished_at": datetime.fromtimestamp(finished, UTC), "duration_s": max(0.0, finished - started),
            "result": result, "stages": stages, "not_done": shortfall,
            "changes": results.changes(record.kind, ((o.step.target, o.result) for o in outcomes)),
        })
        self.store.append_run(result_record)
        journal.close()
        if final:
            self.progress.run_finished(result_record)
        return result_record


def not_done(plan: Plan, stage_records: Mapping[str, StageRecord], outcomes: Iterable[StepOutcome], *,
             stopped: bool) -> list[StepNotDone]:
    """Every step that did not complete: failed or skipped (in the order they ended), then those never run.

    A step never run counts when its stage ran (a deadline, a cancelled wave) or, when ``stopped`` (a failed
    ``on_error: abort`` step ended the run), anywhere in the plan. A run aborted on purpose (power back,
    mains failing again) leaves the rest of its plan undone by design: not listed.
    """
    ended = list(outcomes)
    rows = [StepNotDone(stage=o.stage, action=o.step.action.value, target=o.step.target,
                        status=NotDone(o.status.value), detail=o.detail)
            for o in ended if o.status is not StepStatus.ok]
    seen = {o.key for o in ended}
    for stage in plan.stages:
        if not stopped and stage.name not in stage_records:
            continue
        rows += [StepNotDone(stage=stage.name, action=step.action.value, target=step.target, status=NotDone.not_run,
                             detail="the run stopped before this step" if stage.name not in stage_records
                             else "not run within the stage")
                 for step in stage.steps if step.key(stage.name) not in seen]
    return rows


def in_flight(store: StateStore, kind: RunKind) -> str | None:
    """The id of a run of this kind a killed process left in the journal, if any."""
    for run_id in store.in_flight_runs():
        head = _head(store.journal_read(run_id))
        if head is not None and head.plan.kind == kind.value:
            return run_id
    return None


def _head(events: Iterable[Event]) -> RunStarted | None:
    return next((e for e in events if isinstance(e, RunStarted)), None)


def _step_budget(step: Step) -> float:
    """The longest one step can legitimately take: every attempt plus the backoffs between them."""
    return step.timeout_s * (step.retries + 1) + sum(BACKOFF_S[: step.retries])


def _finished(outcome: StepOutcome, t: float) -> StepFinished:
    return StepFinished(outcome.key, outcome.status, outcome.detail, outcome.result, t, outcome.duration_s,
                        outcome.attempts)


def _past_no_return(plan: Plan, started_steps: set[str]) -> bool:
    """Whether any step of a disruptive stage had started before the process died."""
    first = first_disruptive(plan)
    disruptive = {st.key(s.name) for s in plan.stages[first:] for st in s.steps}
    return bool(started_steps & disruptive)


def _in_plan(plan: Plan, key: str) -> bool:
    return any(st.key(s.name) == key for s in plan.stages for st in s.steps)


def _from_journal(plan: Plan, event: StepFinished) -> StepOutcome:
    stage_name, _, _ = event.step.partition("/")
    stage = next(s for s in plan.stages if s.name == stage_name)
    step = next(st for st in stage.steps if st.key(stage.name) == event.step)
    return StepOutcome(stage_name, step, event.status, event.detail, event.result, event.duration_s, event.attempts)


def _stage_record(stage: Stage, outcomes: list[StepOutcome], journal: _Journal) -> StageRecord:
    """Stage wall time from the journal (first step start to last step end; survives a resume)."""
    keys = {s.key(stage.name) for s in stage.steps}
    times = journal.times(keys)
    duration = max(times) - min(times) if times else sum(o.duration_s for o in outcomes)
    failed = [o for o in outcomes if o.status is StepStatus.failed]
    skipped = [o for o in outcomes if o.status is StepStatus.skipped]
    missing = len(keys) - len({o.key for o in outcomes})
    # Anything not done -- failed, skipped (e.g. the API was unreachable) or never run -- degrades the stage.
    result = RunResult.success if not failed and not skipped and not missing else RunResult.degraded
    notes = [f"{o.step.target}: {o.detail}" for o in failed] + [f"{o.step.target} skipped: {o.detail}" for o in skipped]
    notes += [f"{o.step.target}: {o.detail}" for o in outcomes if o.status is StepStatus.ok and o.detail]
    if missing:
        notes.append(f"{missing} step(s) not run")
    return StageRecord(name=stage.name, duration_s=round(duration, 3), result=result, detail="; ".join(notes))
