"""The plan executor with fake capabilities: order, waves, retries, deadlines, abort, resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Quiet
from hecate.adapters.store import RunInProgress, StateStore, boot_id
from hecate.domain.budget import estimate
from hecate.domain.journal import RunStarted
from hecate.domain.plan import Action, OnError, Plan, Stage, Step
from hecate.domain.results import Done, StepResult
from hecate.domain.runs import NotDone, RunKind, RunRecord, RunResult, counts_for_budget
from hecate.services.executor import Executor, Skipped, StepFailed, in_flight

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Touched(StepResult):
    """What the fake capabilities return: the target they were called for."""

    target: str = ""

    def to_data(self) -> dict[str, Any]:
        return {"target": self.target}


class Log:
    """Fake capabilities that log every call (to a file, so a killed child's calls survive)."""

    def __init__(self, path: Path, behaviour: dict[str, Any] | None = None) -> None:
        self.path = path
        self.behaviour = behaviour or {}
        self.active = 0
        self.max_active = 0

    def calls(self) -> list[str]:
        return self.path.read_text().split() if self.path.exists() else []

    async def __call__(self, step: Step) -> StepResult:
        with open(self.path, "a") as fh:
            fh.write(f"{step.target}\n")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            what = self.behaviour.get(step.target)
            if callable(what):
                return await what(step)
            await asyncio.sleep(what if isinstance(what, float) else 0.01)
            return Touched(step.target)
        finally:
            self.active -= 1


def plan(*stages: Stage) -> Plan:
    return Plan("shutdown", stages)


def stage(name: str, targets: list[str], *, waves: list[int] | None = None, parallelism: int = 8,
          deadline: float = 30, action: Action = Action.stop_service, **step_kw: Any) -> Stage:
    return Stage(name, tuple(Step(action, t, timeout_s=step_kw.pop("timeout_s", 5), wave=(waves or [0] * 99)[i],
                                  **step_kw) for i, t in enumerate(targets)),
                 parallelism=parallelism, deadline_s=deadline)


def executor(tmp_path: Path, log: Log, **kw: Any) -> Executor:
    actions = {a: log for a in Action}
    return Executor(StateStore(tmp_path / "state"), actions, Quiet(), **kw)


def test_stages_in_order_waves_in_order_parallelism_bounded(tmp_path: Path) -> None:
    log = Log(tmp_path / "calls", {f"a{i}": 0.05 for i in range(6)})
    p = plan(stage("one", [f"a{i}" for i in range(6)], parallelism=2),
             stage("two", ["s2", "s1"], waves=[1, 0]))
    record = asyncio.run(executor(tmp_path, log).run(p, {"source": "test"}))
    assert log.calls()[-2:] == ["s1", "s2"]
    assert sorted(log.calls()[:6]) == [f"a{i}" for i in range(6)]
    assert log.max_active == 2
    assert record.result is RunResult.success
    assert [(s.name, s.result) for s in record.stages] == [("one", RunResult.success), ("two", RunResult.success)]
    assert record.stages[0].duration_s >= 0.15  # 6 steps of 50 ms, two at a time
    assert StateStore(tmp_path / "state").load_runs()[-1].id == record.id
    assert StateStore(tmp_path / "state").in_flight_runs() == []


def test_transient_errors_are_retried_permanent_ones_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    attempts: dict[str, int] = {}

    async def flaky(step: Step) -> StepResult:
        attempts[step.target] = attempts.get(step.target, 0) + 1
        if attempts[step.target] < 2:
            raise StepFailed("connection refused", transient=True)
        return Done()

    async def broken(step: Step) -> StepResult:
        raise StepFailed("exit code 5")

    async def skipped(step: Step) -> StepResult:
        raise Skipped("API unreachable")

    log = Log(tmp_path / "calls", {"flaky": flaky, "broken": broken, "skip": skipped})
    p = plan(stage("one", ["flaky", "broken", "skip", "fine"], retries=2), stage("two", ["after"]))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert attempts["flaky"] == 2
    assert "after" in log.calls()
    assert record.result is RunResult.degraded
    assert record.stages[0].result is RunResult.degraded
    assert "broken: exit code 5" in record.stages[0].detail
    assert "skip skipped: API unreachable" in record.stages[0].detail
    assert record.stages[1].result is RunResult.success


def test_a_skipped_step_degrades_its_stage_and_the_run_and_never_teaches_the_budget(tmp_path: Path) -> None:
    """The API down: Flux not suspended, yet every stage read `success` and the short run lowered the budget."""
    async def api_down(step: Step) -> StepResult:
        raise Skipped("Kubernetes API unreachable, flux-suspend skipped")

    log = Log(tmp_path / "calls", {"flux": api_down})
    p = plan(stage("flux-suspend", ["flux"], action=Action.flux_suspend), stage("stop", ["n1", "n2"]))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert [(s.name, s.result) for s in record.stages] == [("flux-suspend", RunResult.degraded),
                                                           ("stop", RunResult.success)]
    assert record.result is RunResult.degraded
    assert [(r.stage, r.action, r.target, r.status, r.detail) for r in record.not_done] == [
        ("flux-suspend", "flux-suspend", "flux", NotDone.skipped, "Kubernetes API unreachable, flux-suspend skipped")]
    stored = StateStore(tmp_path / "state").load_runs()
    assert not counts_for_budget(stored[-1])
    assert estimate(stored, default_s=300, history=5, safety_factor=1.1).seconds == 300


def test_the_record_lists_every_step_not_done(tmp_path: Path) -> None:
    async def broken(step: Step) -> StepResult:
        raise StepFailed("exit code 5")

    log = Log(tmp_path / "calls", {"b": broken, "hang": 3600.0})
    p = plan(stage("one", ["a", "b", "hang"], timeout_s=100, deadline=0.3), stage("two", ["c"]))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert record.result is RunResult.degraded
    assert sorted((r.stage, r.target, r.status) for r in record.not_done) == [
        ("one", "b", NotDone.failed), ("one", "hang", NotDone.failed)]
    assert "stage deadline" in next(r.detail for r in record.not_done if r.target == "hang")
    # An on_error: abort failure stops the run: the steps it never ran are listed too.
    log = Log(tmp_path / "calls2", {"x": broken})
    p = plan(stage("one", ["x", "ok"], on_error=OnError.abort), stage("two", ["never1", "never2"]))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert record.result is RunResult.failed
    assert [(r.stage, r.target, r.status) for r in record.not_done] == [
        ("one", "x", NotDone.failed), ("two", "never1", NotDone.not_run), ("two", "never2", NotDone.not_run)]
    # A success lists nothing.
    ok = asyncio.run(executor(tmp_path, Log(tmp_path / "calls3")).run(plan(stage("one", ["a"])), {}))
    assert (ok.result, ok.not_done) == (RunResult.success, [])


def test_a_run_aborted_on_purpose_does_not_list_the_rest_of_its_plan(tmp_path: Path) -> None:
    log = Log(tmp_path / "calls")
    safe = Stage("flux-suspend", (Step(Action.flux_suspend, "flux", timeout_s=5),), 1, 30, disruptive=False)
    polls = iter([False, True])
    record = asyncio.run(executor(tmp_path, log).run(plan(safe, stage("stop", ["n1"])), {},
                                                     power_restored=lambda: next(polls)))
    assert record.result is RunResult.aborted
    assert record.not_done == []


def test_on_error_abort_stops_the_run(tmp_path: Path) -> None:
    async def broken(step: Step) -> StepResult:
        raise StepFailed("no")

    log = Log(tmp_path / "calls", {"x": broken})
    p = plan(stage("one", ["x"], on_error=OnError.abort), stage("two", ["never"]))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert record.result is RunResult.failed
    assert "never" not in log.calls()


def test_step_timeout_and_stage_deadline_bound_everything(tmp_path: Path) -> None:
    log = Log(tmp_path / "calls", {"hang": 3600.0, "slow1": 3600.0, "slow2": 3600.0})
    p = plan(stage("one", ["hang"], timeout_s=0.2),
             stage("two", ["slow1", "slow2"], timeout_s=100, deadline=0.3),
             stage("three", ["fine"]))
    started = time.monotonic()
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert time.monotonic() - started < 3
    assert "timed out after 0.2 s" in record.stages[0].detail
    assert "stage deadline of 0.3 s passed" in record.stages[1].detail
    assert record.stages[2].result is RunResult.success


def test_power_back_before_the_first_disruptive_stage_aborts_and_undoes(tmp_path: Path) -> None:
    undone: list[StepResult] = []

    async def undo(result: StepResult) -> None:
        undone.append(result)

    log = Log(tmp_path / "calls")
    safe = Stage("flux-suspend", (Step(Action.flux_suspend, "flux", timeout_s=5),), 1, 30, disruptive=False)
    p = plan(safe, stage("stop", ["n1"]))
    polls = iter([False, True])
    record = asyncio.run(executor(tmp_path, log, undo={Action.flux_suspend: undo}).run(
        p, {}, power_restored=lambda: next(polls)))
    assert record.result is RunResult.aborted
    assert log.calls() == ["flux"]
    assert undone == [Touched("flux")]


def test_power_back_after_the_point_of_no_return_completes(tmp_path: Path) -> None:
    log = Log(tmp_path / "calls")
    p = plan(stage("stop", ["n1"]), stage("poweroff", ["n1-off"]))
    polls = iter([False] + [True] * 10)  # mains returns once the first disruptive stage has started
    record = asyncio.run(executor(tmp_path, log).run(p, {}, power_restored=lambda: next(polls)))
    assert record.result is RunResult.success
    assert log.calls() == ["n1", "n1-off"]


def test_the_record_is_written_before_the_coordinator_powers_off(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    store = StateStore(tmp_path / "state")

    async def local_off(step: Step) -> StepResult:
        seen.append([r.id for r in store.load_runs()])
        seen.append(store.in_flight_runs())
        return Done()

    log = Log(tmp_path / "calls", {"local": local_off})
    off = Stage("local-poweroff", (Step(Action.local_poweroff, "local", timeout_s=5),), 1, 30)
    record = asyncio.run(executor(tmp_path, log).run(plan(stage("stop", ["n1"]), off), {}))
    assert seen[0] == [record.id]  # recorded already
    assert seen[1] == []  # and no journal left that a reboot would "resume"
    assert [s.name for s in store.load_runs()[-1].stages] == ["stop", "local-poweroff"]


def test_a_second_run_while_one_holds_the_lock_is_refused(tmp_path: Path) -> None:
    log = Log(tmp_path / "calls", {"slow": 0.5})

    async def both() -> list[Any]:
        ex = executor(tmp_path, log)
        first = asyncio.create_task(ex.run(plan(stage("one", ["slow"])), {}))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(ex.run(plan(stage("one", ["other"])), {}))
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(both())
    assert isinstance(first, RunRecord)
    assert isinstance(second, RunInProgress)
    assert log.calls() == ["slow"]


def test_sigkill_mid_run_then_resume_does_not_repeat_finished_steps(tmp_path: Path) -> None:
    targets = [f"n{i}" for i in range(8)]
    p = plan(stage("one", targets[:4], parallelism=1), stage("two", targets[4:], parallelism=1))
    log = Log(tmp_path / "calls", {t: 0.1 for t in targets})
    pid = os.fork()
    if pid == 0:  # the executor process that will be killed
        try:
            asyncio.run(executor(tmp_path, log).run(p, {"source": "test"}))
        finally:
            os._exit(0)
    while len(log.calls()) < 5:  # let it get into the second stage
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    before = log.calls()
    store = StateStore(tmp_path / "state")
    [run_id] = store.in_flight_runs()
    journal = [json.loads(line) for line in store.journal_path(run_id).read_text().splitlines()]
    finished = {e["step"].rsplit("/", 1)[1] for e in journal if e["event"] == "step-end"}
    record = asyncio.run(executor(tmp_path, log).resume(run_id))
    after = log.calls()[len(before):]
    assert not finished & set(after), "a finished step was repeated"
    assert set(before) | set(after) == set(targets)
    assert record.id == run_id
    assert record.result is RunResult.success
    assert store.in_flight_runs() == []


def test_a_journal_from_another_boot_is_recorded_not_resumed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    p = plan(stage("one", ["n1"]))
    store.journal_append("old", RunStarted(p, {}, 1.0, "other"))
    log = Log(tmp_path / "calls")
    record = asyncio.run(executor(tmp_path, log).resume("old"))
    assert record.result is RunResult.failed
    assert log.calls() == []
    assert store.in_flight_runs() == []


# A run killed mid-way, journaled by the version before the journal's events were typed: it must still resume.
EARLIER_JOURNAL = """\
{"event":"run","plan":{"kind":"shutdown","stages":[{"name":"flux-suspend","parallelism":1,"deadline_s":300.0,\
"disruptive":false,"steps":[{"action":"flux-suspend","target":"flux","timeout_s":40.0,"retries":0,\
"on_error":"continue","wave":0,"params":{}}]},{"name":"stop-agents","parallelism":16,"deadline_s":300.0,\
"disruptive":true,"steps":[{"action":"stop-service","target":"a1","timeout_s":121.0,"retries":2,\
"on_error":"continue","wave":0,"params":{"unit":"k3s-agent","command_timeout_s":30.0}},{"action":"stop-service",\
"target":"a2","timeout_s":121.0,"retries":2,"on_error":"continue","wave":0,"params":{"unit":"k3s-agent",\
"command_timeout_s":30.0}}]}]},"trigger":{"source":"ups","ups":"pyr","reason":"low_battery"},"t":1000.0,\
"boot_id":"BOOT"}
{"event":"step-start","step":"flux-suspend/flux-suspend/flux","t":1000.1}
{"event":"step-end","step":"flux-suspend/flux-suspend/flux","status":"ok","detail":"suspended 1, already suspended 0",\
"data":{"suspended":["Kustomization/flux-system/apps"],"already_suspended":[]},"t":1000.5,"duration_s":0.4,"attempts":1}
{"event":"step-start","step":"stop-agents/stop-service/a1","t":1000.6}
{"event":"step-start","step":"stop-agents/stop-service/a2","t":1000.6}
{"event":"step-end","step":"stop-agents/stop-service/a1","status":"ok","detail":"","data":{},"t":1001.5,\
"duration_s":0.9,"attempts":1}
"""


def test_a_journal_written_by_the_previous_version_resumes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.journal_path("20261127T035000Z-3f9a").write_text(EARLIER_JOURNAL.replace("BOOT", boot_id()))
    [run_id] = store.in_flight_runs()
    assert in_flight(store, RunKind.shutdown) == run_id
    log = Log(tmp_path / "calls")
    record = asyncio.run(executor(tmp_path, log).resume(run_id))
    assert log.calls() == ["a2"]  # flux and a1 finished before the process died
    assert record.result is RunResult.success
    assert record.trigger == {"source": "ups", "ups": "pyr", "reason": "low_battery", "resumed": True}
    assert record.changes["flux_suspended"] == ["Kustomization/flux-system/apps"]  # the journaled step's data
    assert [(s.name, s.detail) for s in record.stages] == [("flux-suspend", "flux: suspended 1, already suspended 0"),
                                                           ("stop-agents", "")]
    assert record.stages[0].duration_s == 0.4  # its journaled start and end
    assert store.in_flight_runs() == []


def test_a_hung_first_wave_does_not_cost_the_later_waves(tmp_path: Path) -> None:
    """poweroff: agents hang past the stage deadline; the servers' wave still runs."""
    log = Log(tmp_path / "calls", {"agent": 3600.0})
    p = plan(stage("poweroff", ["agent", "server"], waves=[0, 1], deadline=0.3, timeout_s=0.5))
    record = asyncio.run(executor(tmp_path, log).run(p, {}))
    assert log.calls() == ["agent", "server"]
    assert "agent: stage deadline of 0.3 s passed" in record.stages[0].detail


def test_interrupt_stops_the_run_before_the_next_stage(tmp_path: Path) -> None:
    """Mains failing again during a startup: the run stops between stages, recorded as aborted."""
    log = Log(tmp_path / "calls")
    asked: list[str] = []

    async def interrupt() -> str | None:
        asked.append(",".join(log.calls()))
        return "UPS pyr on battery again" if "b" in log.calls() else None

    p = Plan("startup", (stage("one", ["a"]), stage("two", ["b"]), stage("three", ["c"])))
    record = asyncio.run(executor(tmp_path, log).run(p, {"source": "test"}, interrupt=interrupt))
    assert log.calls() == ["a", "b"]
    assert asked == ["a", "a,b"]  # never before the first stage
    assert record.result is RunResult.aborted
    assert record.stages[-1].name == "interrupted"
    assert record.stages[-1].detail == "three: UPS pyr on battery again"


def test_interrupt_cancels_a_long_stage_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Mains failing during a long wait (e.g. the Flux bootstrap): the stage is cancelled at once."""
    monkeypatch.setattr("hecate.services.executor.INTERRUPT_POLL_S", 0.05)
    log = Log(tmp_path / "calls", {"slow": 30.0})
    on_battery = False

    async def interrupt() -> str | None:
        return "UPS pyr on battery again" if on_battery else None

    async def fail_soon() -> None:
        nonlocal on_battery
        await asyncio.sleep(0.3)
        on_battery = True

    async def main() -> RunRecord:
        p = Plan("startup", (stage("one", ["a"]), stage("two", ["quick", "slow"]), stage("three", ["c"])))
        asyncio.get_running_loop().create_task(fail_soon())
        return await executor(tmp_path, log).run(p, {"source": "test"}, interrupt=interrupt)

    started = time.monotonic()
    record = asyncio.run(main())
    assert time.monotonic() - started < 5  # not the slow step's 30 s
    assert record.result is RunResult.aborted
    assert record.stages[-1].detail == "two: UPS pyr on battery again"
    assert "c" not in log.calls()
