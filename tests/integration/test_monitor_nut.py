"""The monitor on the real lab upsd + dummy-ups, read through Hecate's own NUT client.

Each test drives polls one at a time (``poll_once``) and changes what upsd serves between
them, so "after exactly N polls" is exact; deadtime is checked on the real clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hecate.adapters import metrics, nut
from hecate.adapters.store import StateStore
from hecate.domain import trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunKind
from hecate.services import status
from hecate.services.monitor import Monitor, dry_run_recorder
from hecate_lab.ups import LabUps, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def make_config(tmp_path: Path, *upses: LabUps, **trigger_overrides: object) -> HecateConfig:
    return HecateConfig.model_validate({
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": u.name, "host": u.host, "port": u.port} for u in upses],
        "trigger": {"default_budget_s": 300, "safety_factor": 1.1, "debounce_polls": 3, **trigger_overrides},
    })


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[trigger.Decision] = []

    async def __call__(self, decision: trigger.Decision, budget: Budget) -> None:
        self.decisions.append(decision)


def make_monitor(config: HecateConfig) -> tuple[Monitor, Recorder]:
    recorder = Recorder()
    return Monitor(config, nut.NutReader(timeout=1.0), StateStore(config.state_dir), recorder), recorder


def poll(monitor: Monitor) -> trigger.Outcome:
    return asyncio.run(monitor.poll_once())


def test_steady_mains_and_battery_above_threshold_never_trigger(tmp_path: Path, ups: LabUps) -> None:
    monitor, recorder = make_monitor(make_config(tmp_path, ups))
    for _ in range(3):
        assert poll(monitor).shutdown is None
    ups.set(ups_status="OB DISCHRG", battery_runtime=900)
    for _ in range(5):
        assert poll(monitor).shutdown is None
    assert monitor.view.snapshots["pyrphoros"].on_battery
    assert recorder.decisions == []


def test_runtime_through_the_threshold_triggers_after_exactly_debounce_polls(tmp_path: Path, ups: LabUps) -> None:
    monitor, recorder = make_monitor(make_config(tmp_path, ups))
    ups.set(ups_status="OB DISCHRG", battery_runtime=400)
    assert poll(monitor).shutdown is None
    ups.set(battery_runtime=320)  # threshold = 1.1 x 300 = 330
    outcomes = [poll(monitor) for _ in range(3)]
    assert [o.shutdown is not None for o in outcomes] == [False, False, True]
    decision = outcomes[2].shutdown
    assert decision is not None
    assert (decision.ups, decision.reason, decision.runtime_s) == ("pyrphoros", trigger.Reason.runtime, 320.0)
    assert decision.threshold_s == pytest.approx(330.0)
    assert len(recorder.decisions) == 1  # acted on once; later polls are latched
    poll(monitor)
    assert len(recorder.decisions) == 1


def test_one_poll_glitch_and_flapping_do_not_trigger(tmp_path: Path, ups: LabUps) -> None:
    monitor, recorder = make_monitor(make_config(tmp_path, ups))
    ups.set(ups_status="OB DISCHRG", battery_runtime=900)
    poll(monitor)
    ups.set(battery_runtime=0)
    poll(monitor)
    ups.set(battery_runtime=900)
    poll(monitor)
    for _ in range(3):  # flapping: two polls below the threshold on battery, then mains
        ups.set(ups_status="OB DISCHRG", battery_runtime=100)
        poll(monitor)
        poll(monitor)
        ups.set(ups_status="OL CHRG")
        poll(monitor)
    assert recorder.decisions == []


def test_ob_lb_triggers_on_the_first_poll_and_fsd_triggers(tmp_path: Path, ups: LabUps) -> None:
    monitor, recorder = make_monitor(make_config(tmp_path, ups))
    poll(monitor)
    ups.set(ups_status="OB LB DISCHRG", battery_runtime=900)
    outcome = poll(monitor)
    assert outcome.fresh
    assert outcome.shutdown is not None
    assert outcome.shutdown.reason is trigger.Reason.low_battery
    assert len(recorder.decisions) == 1

    monitor, recorder = make_monitor(make_config(tmp_path, ups))
    ups.set(ups_status="FSD OL")
    outcome = poll(monitor)
    assert outcome.shutdown is not None
    assert outcome.shutdown.reason is trigger.Reason.fsd
    assert [d.reason for d in recorder.decisions] == [trigger.Reason.fsd]


def test_driver_gone_or_upsd_down_on_mains_alerts_but_never_triggers(tmp_path: Path, ups: LabUps) -> None:
    monitor, recorder = make_monitor(make_config(tmp_path, ups, deadtime_s=1))
    poll(monitor)
    ups.stop_driver()
    kinds = {a.kind for a in poll(monitor).alerts}
    assert kinds == {trigger.AlertKind.stale}
    ups.stop_upsd()
    time.sleep(1.5)  # well past deadtime
    outcome = poll(monitor)
    assert {a.kind for a in outcome.alerts} == {trigger.AlertKind.unreachable}
    assert outcome.shutdown is None
    assert recorder.decisions == []


def test_upsd_down_on_battery_triggers_after_deadtime_not_before(tmp_path: Path, ups: LabUps) -> None:
    deadtime = 3.0
    monitor, recorder = make_monitor(make_config(tmp_path, ups, deadtime_s=deadtime))
    ups.set(ups_status="OB DISCHRG", battery_runtime=900)
    poll(monitor)
    last_seen = monitor.view.snapshots["pyrphoros"].at
    ups.stop_upsd()
    while not recorder.decisions:
        outcome = poll(monitor)
        silent = time.monotonic() - last_seen
        if outcome.shutdown is None:
            assert silent < deadtime + 0.5, "deadtime passed without a decision"
        time.sleep(0.2)
    decision = recorder.decisions[0]
    assert decision.reason is trigger.Reason.deadtime
    assert decision.at - last_seen > deadtime


def test_two_ups_only_one_falls_and_the_trigger_names_it(tmp_path: Path, ups: LabUps) -> None:
    statera = start_ups(tmp_path, "statera")
    try:
        monitor, recorder = make_monitor(make_config(tmp_path, ups, statera, debounce_polls=2))
        statera.set(ups_status="OB DISCHRG", battery_runtime=100)
        poll(monitor)
        poll(monitor)
        assert [d.ups for d in recorder.decisions] == ["statera"]
        assert monitor.view.snapshots["pyrphoros"].on_mains
    finally:
        statera.stop()


def test_learned_budget_and_corrupt_history(tmp_path: Path, ups: LabUps) -> None:
    config = make_config(tmp_path, ups)
    state = Path(config.state_dir)
    state.mkdir(parents=True)
    start = datetime(2026, 11, 20, 3, tzinfo=UTC)
    seeded = [
        {"id": f"r{i}", "kind": "shutdown", "dry_run": dry, "started_at": start.isoformat(),
         "finished_at": (start + timedelta(seconds=d)).isoformat(), "duration_s": d, "result": "success"}
        for i, (d, dry) in enumerate([(95.0, False), (600.0, True), (110.0, False)])
    ]
    (state / "runs.json").write_text(json.dumps(seeded))
    monitor, _ = make_monitor(config)
    poll(monitor)
    doc = status.document(monitor, "direct")
    assert doc["budget"]["source"] == "measured"
    assert doc["budget"]["target_s"] == 110.0  # the dry-run's 600 s does not count
    assert doc["budget"]["seconds"] == 153.75  # 300 -> 197.5 -> 153.75: halfway towards each shorter target
    assert doc["budget"]["threshold_s"] == pytest.approx(169.125)
    assert doc["budget"]["threshold_basis"] == "history"
    assert doc["warnings"] == []
    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    assert "hecate_shutdown_budget_seconds 153.75" in text
    assert "hecate_shutdown_budget_measured 1.0" in text
    assert "hecate_shutdown_threshold_seconds 169.125" in text
    assert 'hecate_last_run_duration_seconds{kind="shutdown"} 110.0' in text

    (state / "runs.json").write_text('[{"id": "r1", "kind": "shutd')
    monitor, _ = make_monitor(config)
    poll(monitor)
    doc = status.document(monitor, "direct")
    assert doc["budget"]["source"] == "default"
    assert doc["budget"]["seconds"] == 300.0
    assert len(doc["warnings"]) == 1
    assert "corrupt" in doc["warnings"][0]


def test_dry_run_recorder_writes_the_trigger_and_unlatches_on_mains(tmp_path: Path, ups: LabUps) -> None:
    config = make_config(tmp_path, ups)
    store = StateStore(config.state_dir)
    monitor = Monitor(config, nut.NutReader(timeout=1.0), store, dry_run_recorder(store), unlatch_on_mains=True)
    ups.set(ups_status="OB LB", battery_runtime=45)
    poll(monitor)
    poll(monitor)
    runs = store.load_runs()
    assert len(runs) == 1
    run = runs[0]
    assert (run.kind, run.dry_run) == (RunKind.shutdown, True)
    assert run.trigger["ups"] == "pyrphoros"
    assert run.trigger["reason"] == "low_battery"
    assert run.trigger["runtime_s"] == 45.0
    assert run.trigger["threshold_s"] == pytest.approx(330.0)
    ups.set(ups_status="OL CHRG", battery_runtime=600)
    poll(monitor)
    assert monitor.view.state.latched is None
    ups.set(ups_status="OB LB", battery_runtime=45)
    poll(monitor)
    assert len(store.load_runs()) == 2  # a new power event is recorded again
