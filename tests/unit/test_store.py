"""The state dir: atomic writes, corrupt history and policy cache, run lock, journal."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hecate.adapters.policy_cache import PolicyCacheCorrupt, parse_policy_cache, policy_cache_text
from hecate.adapters.statefiles import atomic_write
from hecate.adapters.store import RunInProgress, StateStore
from hecate.domain.journal import StepFinished, StepStarted, StepStatus
from hecate.domain.policy_source import CachedPolicy
from hecate.domain.results import Done, Drained
from hecate.domain.runs import RunKind, RunRecord, RunResult, StageRecord


def record(i: int, **kw: object) -> RunRecord:
    start = datetime(2026, 11, 27, 3, 0, tzinfo=UTC) + timedelta(minutes=i)
    fields: dict[str, object] = {
        "id": f"run-{i:05d}", "kind": RunKind.shutdown, "dry_run": False, "started_at": start,
        "finished_at": start + timedelta(seconds=42), "duration_s": 42.0, "result": RunResult.success,
        "trigger": {"source": "ups", "ups": "pyrphoros", "reason": "runtime"},
        "stages": [StageRecord(name="stop-agents", duration_s=12.5, result=RunResult.success)],
    }
    fields.update(kw)
    return RunRecord.model_validate(fields)


def test_runs_round_trip_and_replace_by_id(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load_runs() == []
    store.append_run(record(1))
    store.append_run(record(2, result=RunResult.failed))
    store.append_run(record(1, duration_s=40.0))  # same id: replaced, moved to the end
    runs = store.load_runs()
    assert [r.id for r in runs] == ["run-00002", "run-00001"]
    assert runs[1].duration_s == 40.0
    assert runs[0].stages[0].name == "stop-agents"
    assert json.loads(store.runs_path.read_text())[0]["schema_version"] == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"[{\"id\": \"x\", \"kind\": \"shut", b"{\"not\": \"a list\"}", b"[{\"id\": \"x\"}]", b"\x00\xff"],
    ids=["empty", "truncated", "mapping", "invalid-record", "binary"],
)
def test_corrupt_runs_moved_aside_reported_once(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path)
    store.runs_path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="hecate.adapters.store"):
        assert store.load_runs() == []
        assert store.load_runs() == []
    warnings = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warnings) == 1
    aside = list(tmp_path.glob("runs.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content  # nothing lost
    store.append_run(record(1))
    assert [r.id for r in store.load_runs()] == ["run-00001"]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    for i in range(5):
        atomic_write(target, f"v{i}".encode())
    assert target.read_text() == "v4"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.run_lock("shutdown run-1"):
        pid = os.fork()
        if pid == 0:  # child: a second Hecate process trying to start a run
            try:
                with StateStore(tmp_path).run_lock("startup"):
                    os._exit(0)
            except RunInProgress as err:
                os._exit(3 if f"pid {os.getppid()}: shutdown run-1" in str(err) else 4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    with store.run_lock("startup"):  # released: free again
        pass


def test_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.journal_append("r1", StepStarted("stop-agents/stop-service/a1", 1.0))
    store.journal_append("r1", StepFinished("stop-agents/stop-service/a1", StepStatus.ok, "", Done(), 2.0, 1.0, 1))
    with open(store.journal_path("r1"), "a") as fh:
        fh.write('{"step": "stop-serv')
    assert store.in_flight_runs() == ["r1"]
    assert [type(e) for e in store.journal_read("r1")] == [StepStarted, StepFinished]
    store.journal_finish("r1")
    assert store.in_flight_runs() == []
    assert store.journal_read("r1") == []


def test_journal_events_are_written_as_before_and_read_back_typed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    end = StepFinished("drain/drain/a1", StepStatus.failed, "drain: API refused", Drained(cordoned=True), 2.5, 1.5, 1)
    store.journal_append("r1", end)
    assert json.loads(store.journal_path("r1").read_text()) == {
        "event": "step-end", "step": "drain/drain/a1", "status": "failed", "detail": "drain: API refused",
        "data": {"cordoned": True}, "t": 2.5, "duration_s": 1.5, "attempts": 1}
    with open(store.journal_path("r1"), "a") as fh:
        fh.write('{"event": "from-a-later-version", "t": 3}\n')  # not an event this version knows: skipped
    assert store.journal_read("r1") == [end]
    assert store.journal_path("r1").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("line", "why"), [
    (b'{"event": "step-end", "status": "ok"}', "line 2: not a journal event this version can read (KeyError"),
    (b'["not", "an", "object"]', "line 2: not a JSON object"),
    (b'{"event": "step-st', "line 2: not JSON"),  # torn, yet not the last line: something else wrote here
    (b"\xff\xfe", "line 2: not JSON (UnicodeDecodeError"),
    (b"[" * 100_000, "line 2: not JSON (RecursionError"),
    (b'{"event": "run", "plan": {"kind": "shutdown", "stages": 7}, "trigger": {}, "t": 1}',
     "line 2: not a journal event"),
], ids=["missing-field", "not-an-object", "torn-in-the-middle", "binary", "deeply-nested", "bad-plan"])
def test_a_journal_with_a_malformed_line_is_moved_aside_and_reads_as_empty(
        tmp_path: Path, line: bytes, why: str, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    store.journal_append("r1", StepStarted("stop-agents/stop-service/a1", 1.0))
    with open(store.journal_path("r1"), "ab") as fh:
        fh.write(line + b"\n")
        fh.write(b'{"event": "step-start", "step": "stop-agents/stop-service/a2", "t": 2}\n')
    content = store.journal_path("r1").read_bytes()
    with caplog.at_level(logging.WARNING, logger="hecate.adapters.store"):
        assert store.journal_read("r1") == []
    [aside] = list((tmp_path / "journal").glob("r1.jsonl.corrupt-*"))
    assert aside.read_bytes() == content  # nothing lost
    assert store.in_flight_runs() == []  # nothing to resume: the next run starts from the plan
    assert why in caplog.text
    assert "its run starts from the plan" in store.warnings[0]


def _writer(state_dir: Path) -> None:
    store = StateStore(state_dir)
    i = len(store.load_runs())
    while True:
        i += 1
        store.append_run(record(i))


@pytest.mark.timeout(120)
def test_sigkill_during_writes_never_leaves_an_unloadable_file(tmp_path: Path) -> None:
    """Kill a writer with SIGKILL at random points of repeated runs.json writes, 250 times."""
    rng = random.Random(20261127)
    store = StateStore(tmp_path)
    seen = 0
    kills = 250
    torn = 0  # kills that landed between creating the temp file and the rename
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:
            try:
                _writer(tmp_path)
            finally:
                os._exit(1)
        try:
            time.sleep(rng.uniform(0.0005, 0.03))  # a random instant, mostly mid-write
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        torn += bool(list(tmp_path.glob(".runs.json.*.tmp")))
        runs = StateStore(tmp_path).load_runs()  # must load every time
        assert len(runs) >= seen  # and never lose history
        seen = len(runs)
    assert not list(tmp_path.glob("runs.json.corrupt-*")), "a torn write was seen"
    assert seen > 0, "the writer never got a write through: the test proved nothing"
    assert torn >= 10, f"only {torn} kills landed mid-write: the test proved little"
    assert int(store.load_runs()[-1].id.split("-")[1]) >= seen  # the newest record is the last


def test_policy_cache_round_trips_atomically_and_privately(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.read_policy_cache() is None
    when = datetime(2026, 11, 27, 3, 50, tzinfo=UTC)
    first = CachedPolicy(name="titan", uid="u1", resource_version="4", generation=1, spec={}, cached_at=when)
    second = CachedPolicy(name="titan", uid="u1", resource_version="7", generation=2,
                          spec={"trigger": {"safety_factor": 2.0}}, cached_at=when)
    store.write_policy_cache(first)
    store.write_policy_cache(second)
    assert store.read_policy_cache() == second
    assert store.policy_cache_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".policy")] == []  # no temp files left


def test_the_policy_cache_is_a_powerpolicy_document_with_cached_at() -> None:
    when = datetime(2026, 11, 27, 3, 50, tzinfo=UTC)
    cached = CachedPolicy(name="titan", uid="u1", resource_version="7", generation=2,
                          spec={"trigger": {"safety_factor": 2.0}}, cached_at=when)
    text = policy_cache_text(cached)
    assert text.startswith("# Hecate's cache of the last valid PowerPolicy")
    assert "apiVersion: hecate.io/v1alpha1\nkind: PowerPolicy\n" in text
    assert "cachedAt: '2026-11-27T03:50:00Z'" in text
    assert parse_policy_cache(text) == cached


@pytest.mark.parametrize(("content", "why"), [
    ("{ not: yaml", "policy-cache.yaml:1:12: YAML syntax error"),
    ("- a list\n", "the top level is not a mapping"),
    ("apiVersion: hecate.io/v1alpha1\nkind: PowerPolicy\nspec: {}\n", "metadata.name is missing"),
    ("apiVersion: hecate.io/v1alpha1\nkind: PowerPolicy\nmetadata: {name: t}\ncachedAt: soon\n",
     "cachedAt is not a time: 'soon'"),
])
def test_a_corrupt_policy_cache_is_moved_aside_like_runs_json(tmp_path: Path, content: str, why: str) -> None:
    store = StateStore(tmp_path)
    store.policy_cache_path.write_text(content)
    with pytest.raises(PolicyCacheCorrupt, match=why) as info:
        store.read_policy_cache()
    [aside] = list(tmp_path.glob("policy-cache.yaml.corrupt-*"))
    assert info.value.aside == aside
    assert aside.read_text() == content  # nothing lost
    assert store.read_policy_cache() is None


def test_a_new_state_dir_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        StateStore(tmp_path / "var" / "hecate")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var" / "hecate").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var" / "hecate" / "journal").stat().st_mode) == 0o700


def test_who_holds_the_run_lock_is_asked_without_taking_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.run_lock_holder() is None  # no lock file yet
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from hecate.adapters.store import StateStore\n"
         f"with StateStore(Path({str(store.dir)!r})).run_lock('shutdown (other process)'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert "shutdown (other process)" in str(store.run_lock_holder())
        with pytest.raises(RunInProgress), store.run_lock("startup"):  # asking did not take it from the holder
            pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert store.run_lock_holder() is None
