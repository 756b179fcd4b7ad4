"""The monitor loop with a fake reader: handler retries, unlatching, poll interval, budget reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hecate.adapters.store import StateStore
from hecate.domain import trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot, from_variables
from hecate.services.monitor import Monitor, dry_run_recorder

pytestmark = pytest.mark.timeout(30)


class FakeReader:
    def __init__(self) -> None:
        self.status = {"pyr": "OL"}
        self.now = 0.0

    async def read(self, ups: Ups) -> Snapshot:
        return from_variables(ups.name, {"ups.status": self.status[ups.name], "battery.runtime": "100"}, self.now)


def config(tmp_path: Path) -> HecateConfig:
    return HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}]})


def poll(monitor: Monitor, reader: FakeReader) -> trigger.Outcome:
    reader.now += 1
    return asyncio.run(monitor.poll_once())


def test_a_failing_handler_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    calls: list[str] = []

    async def flaky(decision: trigger.Decision, budget: Budget) -> None:
        calls.append(decision.reason.value)
        if len(calls) < 3:
            raise OSError("No space left on device")

    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), flaky, clock=lambda: reader.now)
    reader.status["pyr"] = "OB LB"
    for _ in range(5):
        poll(monitor, reader)
    assert calls == ["low_battery"] * 3  # failed twice, then done; never called again while latched


def test_standing_fsd_on_mains_is_recorded_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, store, dry_run_recorder(store), clock=lambda: reader.now,
                      unlatch_on_mains=True)
    reader.status["pyr"] = "OL FSD"  # upsd keeps FSD until it restarts
    for _ in range(10):
        poll(monitor, reader)
    assert len(store.load_runs()) == 1
    reader.status["pyr"] = "OL"
    poll(monitor, reader)
    assert monitor.view.state.latched is None


def test_faster_polls_on_battery(tmp_path: Path) -> None:
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    poll(monitor, reader)
    assert monitor.interval() == 2.0
    reader.status["pyr"] = "OB DISCHRG"
    poll(monitor, reader)
    assert monitor.interval() == 1.0


def test_runs_recorded_by_another_process_change_the_budget(tmp_path: Path) -> None:
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    assert monitor.budget.seconds == 300
    (tmp_path / "runs.json").write_text(json.dumps([{
        "id": "r1", "kind": "shutdown", "dry_run": False, "result": "success", "duration_s": 80.0,
        "started_at": "2026-11-27T03:00:00+00:00", "finished_at": "2026-11-27T03:01:20+00:00"}]))
    poll(monitor, reader)
    assert monitor.budget.seconds == 80
