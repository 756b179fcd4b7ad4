"""Bookkeeping never stops a run, and state files are never followed through a link.

Writes fail for real here: a small tmpfs filled up or remounted read-only (skipped where tmpfs
cannot be mounted), or a state dir whose entries are of the wrong type. The run goes on, every
step runs, the coordinator's power-off last; the failures are counted per kind, logged once and
shown in status and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Quiet
from hecate import daemon as daemon_mod
from hecate.adapters import metrics, store
from hecate.adapters.statefiles import SymlinkRefused
from hecate.adapters.store import RunInProgress, StateStore, StoreError, boot_id
from hecate.cli import render
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.journal import RunStarted, StepStarted
from hecate.domain.plan import Action, Plan, Stage, Step
from hecate.domain.policy_source import CachedPolicy
from hecate.domain.results import Done, StepResult
from hecate.domain.runs import RunKind, RunRecord, RunResult
from hecate.domain.ups import Snapshot, from_variables
from hecate.services import status
from hecate.services.executor import Executor, in_flight
from hecate.services.monitor import Monitor

pytestmark = pytest.mark.timeout(60)


class Calls:
    """Capabilities that note each call with its time (the steps' actions run, or they do not)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, step: Step) -> StepResult:
        self.calls.append((time.monotonic(), step.target))
        await asyncio.sleep(0.01)
        return Done()

    def targets(self) -> list[str]:
        return [t for _, t in self.calls]


def shutdown_like() -> Plan:
    """Nodes stopped and powered off, the coordinator last (as the real shutdown plan ends)."""
    def stage(name: str, action: Action, targets: list[str]) -> Stage:
        return Stage(name, tuple(Step(action, t, timeout_s=5) for t in targets), parallelism=4, deadline_s=30)

    return Plan("shutdown", (
        stage("stop-agents", Action.stop_service, ["a1", "a2"]),
        stage("stop-servers", Action.stop_service, ["s1"]),
        stage("poweroff", Action.poweroff, ["a1-off", "a2-off", "s1-off"]),
        stage("local-poweroff", Action.local_poweroff, ["coordinator"]),
    ))


def run(state: StateStore, calls: Calls, **kw: Any) -> RunRecord:
    return asyncio.run(Executor(state, {a: calls for a in Action}, Quiet(), **kw).run(shutdown_like(), {}))


def assert_everything_ran_coordinator_last(calls: Calls) -> None:
    assert sorted(calls.targets()) == sorted(["a1", "a2", "s1", "a1-off", "a2-off", "s1-off", "coordinator"])
    assert calls.targets()[-1] == "coordinator"


# -- a full disk, a read-only disk -----------------------------------------------------------------


def test_a_full_disk_counts_every_failed_write_and_the_run_still_powers_everything_off(
        small_fs: Any, caplog: pytest.LogCaptureFixture) -> None:
    state = StateStore(small_fs.path)
    state.load_runs()  # as the daemon does at start
    small_fs.fill()
    calls = Calls()
    with caplog.at_level(logging.WARNING, logger="hecate.adapters.store"):
        record = run(state, calls, lock_required=False)  # the daemon's armed shutdown
    assert_everything_ran_coordinator_last(calls)
    assert record.result is RunResult.success  # in memory, and returned
    failures = {f["what"]: f for f in state.write_failures_doc()}
    assert set(failures) == {store.LOCK, store.JOURNAL, store.RUNS}
    assert failures[store.JOURNAL]["errors"] >= 1
    assert "No space left on device" in failures[store.JOURNAL]["error"]
    assert all(f["active"] for f in failures.values())
    assert "goes on without the cross-process lock" in caplog.text
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("state dir: cannot write")]
    assert len(logged) == 3  # once per kind, not once per step


def test_a_full_disk_refuses_a_run_that_needs_the_lock_with_a_clear_error(small_fs: Any) -> None:
    state = StateStore(small_fs.path)
    small_fs.fill()
    calls = Calls()
    with pytest.raises(StoreError, match=r"cannot take the run lock: .*No space left on device"):
        run(state, calls)  # a person's `hecate shutdown --execute`: refused, nothing touched
    assert calls.calls == []


def test_a_disk_filled_mid_run_loses_the_journal_not_the_steps(small_fs: Any) -> None:
    state = StateStore(small_fs.path)
    calls = Calls()
    filled = False

    async def fill_then_stop(step: Step) -> StepResult:
        nonlocal filled
        if not filled:
            small_fs.fill()
            filled = True
        return await calls(step)

    plan = shutdown_like()
    actions = {a: calls for a in Action} | {Action.stop_service: fill_then_stop}
    record = asyncio.run(Executor(state, actions, Quiet()).run(plan, {}))
    assert_everything_ran_coordinator_last(calls)
    assert record.result is RunResult.success
    failed = {f["what"] for f in state.write_failures_doc()}
    assert store.RUNS in failed  # the record could not be written: no room for its temp file
    assert state.in_flight_runs() == []  # and the journal is gone: nothing to "resume" after a reboot


def test_a_read_only_disk_with_a_lock_file_still_locks_and_the_run_goes_on(small_fs: Any) -> None:
    state = StateStore(small_fs.path)
    (small_fs.path / store.LOCK_FILE).touch()
    small_fs.read_only()
    calls = Calls()

    async def second_run_meanwhile(step: Step) -> StepResult:
        try:  # another Hecate process tries to start a run while this one holds the lock
            await asyncio.to_thread(lambda: StateStore(small_fs.path).run_lock("startup").__enter__())
        except RunInProgress:
            calls.calls.append((time.monotonic(), "refused"))
        return await calls(step)

    actions = {a: calls for a in Action} | {Action.local_poweroff: second_run_meanwhile}
    record = asyncio.run(Executor(state, actions, Quiet()).run(shutdown_like(), {}))
    assert "refused" in calls.targets()  # the flock on the read-only lock file held
    assert record.result is RunResult.success
    failures = {f["what"]: f for f in state.write_failures_doc()}
    assert {store.JOURNAL, store.RUNS, store.LOCK} <= set(failures)
    assert "Read-only file system" in failures[store.JOURNAL]["error"]


def test_a_daemon_starts_on_a_full_disk_without_a_journal_dir(small_fs: Any) -> None:
    small_fs.fill()
    state = StateStore(small_fs.path)  # cannot create journal/: counted, not raised
    assert {f["what"] for f in state.write_failures_doc()} == {store.JOURNAL}
    assert state.in_flight_runs() == []
    calls = Calls()
    run(state, calls, lock_required=False)
    assert_everything_ran_coordinator_last(calls)


def test_wrong_types_in_the_state_dir_fail_writes_without_root(tmp_path: Path) -> None:
    """The same tolerance where no tmpfs can be mounted: runs.json a directory, journal/ a file."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "journal").write_text("not a directory")
    (state_dir / "runs.json").mkdir()
    state = StateStore(state_dir)
    calls = Calls()
    record = run(state, calls)
    assert_everything_ran_coordinator_last(calls)
    assert record.result is RunResult.success
    assert {f["what"] for f in state.write_failures_doc()} >= {store.JOURNAL, store.RUNS}


def test_a_write_that_works_again_clears_the_alert_and_keeps_the_count(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    state = StateStore(tmp_path)
    (tmp_path / "journal").rmdir()
    (tmp_path / "journal").write_text("in the way")
    with caplog.at_level(logging.INFO, logger="hecate.adapters.store"):
        for i in range(5):
            assert not state.journal_append("r1", StepStarted(f"s/a/{i}", float(i)))
        (tmp_path / "journal").unlink()
        assert state.journal_append("r1", StepStarted("s/a/5", 5.0))  # the dir is created again
    [failure] = state.write_failures_doc()
    assert (failure["what"], failure["errors"], failure["active"]) == (store.JOURNAL, 5, False)
    assert caplog.text.count("state dir: cannot write") == 1
    assert "journal writes work again (5 failed so far)" in caplog.text


# -- status and metrics ------------------------------------------------------------------------------


class Reader:
    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, {"ups.status": "OL", "battery.runtime": "900"}, time.monotonic())


def test_status_and_metrics_show_failed_writes(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    (tmp_path / "runs.json").mkdir()  # every history write fails
    state.append_run(RunRecord(id="r", kind=RunKind.shutdown, dry_run=True, started_at=datetime.now(UTC)))
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}]})

    async def nothing(*_: object) -> None: ...

    monitor = Monitor(config, Reader(), state, nothing)
    asyncio.run(monitor.poll_once())
    doc = status.document(monitor, "direct")
    [failure] = doc["state_writes"]
    assert failure["what"] == "runs"
    assert failure["errors"] == 1
    assert "Is a directory" in failure["error"]
    text = render.status_text(doc)
    assert "Alert:     bookkeeping: runs writes fail since" in text
    assert "the budget does not learn from it" in text
    exposition = metrics.render(metrics.registry_for(lambda: doc)).decode()
    assert 'hecate_state_write_errors_total{what="runs"} 1.0' in exposition
    assert 'hecate_state_write_errors_total{what="journal"} 0.0' in exposition
    assert 'hecate_state_write_failing{what="runs"} 1.0' in exposition


# -- symbolic links are refused, never followed; files are 0600 -----------------------------------------


def test_state_files_are_written_0600(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    state.append_run(RunRecord(id="r", kind=RunKind.shutdown, dry_run=True, started_at=datetime.now(UTC)))
    state.journal_append("r1", StepStarted("s/a/t", 1.0))
    state.write_policy_cache(CachedPolicy(name="t", uid=None, resource_version=None, generation=None, spec={},
                                          cached_at=datetime.now(UTC)))
    (tmp_path / store.LOCK_FILE).write_text("")
    os.chmod(tmp_path / store.LOCK_FILE, 0o644)  # left by an earlier version
    with state.run_lock("test"):
        pass
    for name in ("runs.json", "journal/r1.jsonl", "policy-cache.yaml", "lock", ".runs.json.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_a_symlinked_history_is_not_read_and_the_next_write_replaces_the_link(tmp_path: Path) -> None:
    state_dir, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state_dir.mkdir()
    elsewhere.write_text('[{"planted": true}]')
    (state_dir / "runs.json").symlink_to(elsewhere)
    state = StateStore(state_dir)
    assert state.load_runs() == []
    assert "runs.json is a symbolic link: refused" in state.warnings[0]
    state.append_run(RunRecord(id="r", kind=RunKind.shutdown, dry_run=True, started_at=datetime.now(UTC)))
    assert not (state_dir / "runs.json").is_symlink()
    assert elsewhere.read_text() == '[{"planted": true}]'  # the link's target is untouched
    assert [r.id for r in state.load_runs()] == ["r"]


def test_a_symlinked_lock_is_refused_and_its_target_never_touched(tmp_path: Path) -> None:
    state_dir, target = tmp_path / "state", tmp_path / "precious"
    state_dir.mkdir()
    target.write_text("keep me")
    (state_dir / store.LOCK_FILE).symlink_to(target)
    state = StateStore(state_dir)
    with pytest.raises(StoreError, match="lock is a symbolic link: refused"), state.run_lock("shutdown run"):
        pass
    calls = Calls()
    run(state, calls, lock_required=False)  # the daemon's armed shutdown goes on without it
    assert_everything_ran_coordinator_last(calls)
    assert target.read_text() == "keep me"
    (state_dir / store.LOCK_FILE).unlink()
    (state_dir / store.LOCK_FILE).symlink_to(tmp_path / "dangling")  # O_CREAT through a link would create it
    with pytest.raises(StoreError), state.run_lock("shutdown run"):
        pass
    assert not (tmp_path / "dangling").exists()


def test_a_symlinked_journal_is_refused_moved_aside_and_its_target_never_written(tmp_path: Path) -> None:
    state_dir, target = tmp_path / "state", tmp_path / "precious"
    state = StateStore(state_dir)
    target.write_text("keep me\n")
    state.journal_path("r1").symlink_to(target)
    assert not state.journal_append("r1", StepStarted("s/a/t", 1.0))  # refused: never appended through the link
    assert target.read_text() == "keep me\n"
    assert f"{state.journal_path('r1')} is a symbolic link: refused" in state.write_failures_doc()[0]["error"]
    assert state.journal_read("r1") == []
    assert "moved it to" in state.warnings[0]
    [aside] = list((state_dir / "journal").glob("r1.jsonl.corrupt-*"))
    assert aside.is_symlink()  # the link itself was moved, its target left alone
    assert target.read_text() == "keep me\n"
    assert state.in_flight_runs() == []


def test_a_symlinked_journal_dir_is_refused(tmp_path: Path) -> None:
    state_dir, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state_dir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "r0.jsonl").write_text("")
    (state_dir / "journal").symlink_to(elsewhere)
    state = StateStore(state_dir)
    assert state.in_flight_runs() == []  # not listed through the link
    assert not state.journal_append("r1", StepStarted("s/a/t", 1.0))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["r0.jsonl"]
    state.journal_finish("r0")
    assert state.journal_read("r0") == []
    assert sorted(p.name for p in elsewhere.iterdir()) == ["r0.jsonl"]  # not removed nor moved through the link
    assert "journal is a symbolic link: refused" in state.warnings[-1]


def test_a_symlinked_policy_cache_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "planted.yaml"
    target.write_text("apiVersion: hecate.io/v1alpha1\nkind: PowerPolicy\nmetadata: {name: t}\n"
                      "cachedAt: '2026-11-27T03:50:00Z'\nspec: {}\n")
    state = StateStore(tmp_path / "state")
    state.policy_cache_path.symlink_to(target)
    with pytest.raises(SymlinkRefused, match=r"policy-cache\.yaml is a symbolic link: refused"):
        state.read_policy_cache()


def test_a_fifo_in_place_of_a_state_file_does_not_hang_the_reader(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    os.mkfifo(state.runs_path)
    assert state.load_runs() == []  # returns at once (a blocking open would hang here)
    assert "is not a regular file" in state.warnings[0]


# -- the daemon starts a crashed shutdown run again ------------------------------------------------------


async def test_the_daemon_starts_a_crashed_shutdown_again_until_it_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}],
                                          "shutdown": {"execute": True}})
    attempts: list[dict[str, Any]] = []
    stores: list[Any] = []

    async def crashing(config: HecateConfig, trigger: dict[str, Any], progress: Any, **kw: Any) -> RunRecord:
        attempts.append(trigger)
        stores.append((kw.get("store"), kw.get("armed")))
        if len(attempts) < 4:
            raise (OSError(28, "No space left on device") if len(attempts) % 2 else RuntimeError("a bug"))
        return RunRecord(id="done", kind=RunKind.shutdown, dry_run=False, started_at=datetime.now(UTC),
                         result=RunResult.success, trigger=trigger)

    monkeypatch.setattr(daemon_mod.shutdown, "run", crashing)
    monkeypatch.setattr(daemon_mod, "RESTART_BACKOFF_S", (0.01, 0.02))
    daemon = daemon_mod.Daemon(config, Reader())
    await daemon.monitor.poll_once()
    daemon.start_shutdown({"source": "ups"})
    assert daemon.shutdown_task is not None
    await asyncio.wait_for(asyncio.shield(daemon.shutdown_task), 5)
    assert len(attempts) == 4
    assert [a.get("restarted") for a in attempts] == [None, 1, 2, 3]  # a restarted run never teaches the budget
    assert all(s is daemon.store and armed for s, armed in stores)  # its write failures show in the daemon's status
    assert daemon.status_document()["shutdown_task"] == {"running": False, "restarts": 3}


def test_a_malformed_journal_never_blocks_the_next_shutdown(tmp_path: Path) -> None:
    """A shutdown of this boot left in the journal, with one line that is not an event: the next
    shutdown moves the journal aside and runs the whole plan (it never resumes from half a journal)."""
    state = StateStore(tmp_path)
    state.journal_append("r0", RunStarted(shutdown_like(), {"source": "ups"}, 1.0, boot_id()))
    state.journal_append("r0", StepStarted("stop-agents/stop-service/a1", 2.0))
    with open(state.journal_path("r0"), "ab") as fh:
        fh.write(b"\xff\xfe not an event\n")
    calls = Calls()
    record = asyncio.run(Executor(state, {a: calls for a in Action}, Quiet()).run_or_resume(
        shutdown_like(), {"source": "ups"}))
    assert_everything_ran_coordinator_last(calls)
    assert record.result is RunResult.success
    assert record.id != "r0"
    assert in_flight(state, RunKind.shutdown) is None
    assert len(list((tmp_path / "journal").glob("r0.jsonl.corrupt-*"))) == 1
