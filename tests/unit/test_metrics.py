"""The metric gaps: build info, process metrics, per-UPS last success, armed, the bootstrap cache's refreshes,
a true runs counter, rounded floats and OpenMetrics negotiation."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hecate import __version__
from hecate.adapters import metrics
from hecate.adapters.kube import KubeNotFound
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.runs import RunKind, RunRecord, RunResult, RunTally
from hecate.domain.ups import Snapshot, from_variables
from hecate.services import bootstrap_cache, status
from hecate.services.monitor import Monitor

pytestmark = pytest.mark.timeout(30)


class Reader:
    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, {"ups.status": "OL", "battery.runtime": "900", "battery.charge": "35",
                                         "ups.load": "7"}, time.monotonic())


def document(tmp_path: Path, execute: bool) -> dict[str, Any]:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}],
                                         "shutdown": {"execute": execute}})

    async def nothing(*_: object) -> None: ...

    monitor = Monitor(config, Reader(), StateStore(tmp_path), nothing)
    asyncio.run(monitor.poll_once())
    return status.document(monitor, "direct")


def test_build_info_armed_last_success_and_rounded_ratios(tmp_path: Path) -> None:
    doc = document(tmp_path, execute=True)
    assert doc["armed"] is True
    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    assert f'hecate_build_info{{version="{__version__}"}} 1.0' in text
    assert "hecate_armed 1.0" in text
    assert 'hecate_ups_battery_charge_ratio{ups="pyr"} 0.35\n' in text  # not 0.35000000000000003
    assert 'hecate_ups_load_ratio{ups="pyr"} 0.07\n' in text
    [line] = [x for x in text.splitlines() if x.startswith("hecate_ups_last_success_timestamp_seconds")]
    assert line.startswith('hecate_ups_last_success_timestamp_seconds{ups="pyr"} ')
    assert abs(float(line.split()[-1]) - time.time()) < 10
    assert "process_" not in text  # only the daemon's registry has the process collector
    assert "hecate_armed 0.0" in metrics.render(metrics.registry_for(lambda: document(tmp_path, False))).decode()


def test_gauges_are_rounded_at_exposition() -> None:
    gauge = metrics._gauge("x", "x", [([], 0.1 + 0.2), ([], 12.000000000004)])  # one family, two samples
    assert [s.value for s in gauge.samples] == [0.3, 12.0]


def test_the_daemons_registry_has_process_metrics_and_promtool_accepts_it(tmp_path: Path) -> None:
    doc = document(tmp_path, execute=False)
    doc["bootstrap_cache"] = bootstrap_cache.RefreshState(last_refresh_at=datetime.now(UTC), errors=2).as_dict()
    doc["runs"]["recorded"] = [{"kind": "shutdown", "result": "success", "dry_run": True, "count": 3}]
    body = metrics.render(metrics.registry_for(lambda: doc, process=True))
    text = body.decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert f"\n{name} " in text
    assert "hecate_bootstrap_cache_refresh_errors_total 2.0" in text
    assert "hecate_bootstrap_cache_last_refresh_timestamp_seconds " in text
    assert 'hecate_runs_total{dry_run="true",kind="shutdown",result="success"} 3.0' in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_no_bootstrap_cache_metrics_when_the_daemon_does_not_keep_it(tmp_path: Path) -> None:
    text = metrics.render(metrics.registry_for(lambda: document(tmp_path, False))).decode()
    assert "hecate_bootstrap_cache" not in text
    assert "hecate_runs_total{" not in text  # polled directly: no runs counted since a daemon's start


def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path) -> None:
    doc = document(tmp_path, execute=True)
    registry = metrics.registry_for(lambda: doc)
    body, content_type = metrics.exposition(registry, "application/openmetrics-text; version=1.0.0; charset=utf-8,"
                                                      "text/plain;version=0.0.4;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE hecate_build info" in text
    assert f'hecate_build_info{{version="{__version__}"}} 1.0' in text
    for accept in (None, "", "text/plain", "*/*"):
        body, content_type = metrics.exposition(registry, accept)
        assert content_type == metrics.CONTENT_TYPE
        assert b"# EOF" not in body


def run(run_id: str, result: RunResult | None = RunResult.success, dry_run: bool = False) -> RunRecord:
    return RunRecord(id=run_id, kind=RunKind.shutdown, dry_run=dry_run, started_at=datetime.now(UTC),
                     result=result)


def test_run_tally_counts_runs_recorded_since_it_started_and_never_goes_down() -> None:
    old = [run("a"), run("b", dry_run=True), run("c", result=None)]  # c was in flight at start
    tally = RunTally(old)
    tally.observe(old)
    assert tally.as_rows() == []
    history = [run("b", dry_run=True), run("c", result=RunResult.degraded), run("d", dry_run=True)]  # a dropped
    tally.observe(history)
    tally.observe(history)  # seen once, counted once
    assert tally.as_rows() == [
        {"kind": "shutdown", "result": "degraded", "dry_run": False, "count": 1},
        {"kind": "shutdown", "result": "success", "dry_run": True, "count": 1},
    ]
    tally.observe([run("e", dry_run=True)])  # the cap dropped everything else: still counted
    assert sum(r["count"] for r in tally.as_rows()) == 3


class FakeKube:
    """The bootstrap cache's Kubernetes: the GitRepository is missing (a 404) once, then Ready."""

    calls = 0
    stop: asyncio.Event

    def __init__(self, *_: object) -> None: ...

    async def git_repository(self, namespace: str, name: str) -> dict[str, Any]:
        FakeKube.calls += 1
        if FakeKube.calls == 1:
            raise KubeNotFound(f"GitRepository {namespace}/{name} not found (404)", status=404)
        FakeKube.stop.set()
        return {"ready": True}

    async def export(self, refs: list[str]) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gitea"}}]

    def close(self) -> None: ...


def test_bootstrap_cache_refresh_errors_and_last_refresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}], "flux": {
        "bootstrap_objects": ["/namespace/gitea"], "fallback_manifests_dir": str(tmp_path / "cache"),
        "cache_refresh_interval_s": 0.01}})
    monkeypatch.setattr(bootstrap_cache.kube_mod, "Kube", FakeKube)
    state = bootstrap_cache.RefreshState.from_snapshot(tmp_path / "cache")
    assert state.as_dict() == {"last_refresh_at": None, "errors": 0, "last_error": None}

    async def go() -> None:
        FakeKube.stop = asyncio.Event()
        await asyncio.wait_for(bootstrap_cache.keep_fresh(lambda: config, FakeKube.stop, state=state), 5)

    asyncio.run(go())
    assert state.errors == 1
    assert state.last_error is None  # the last refresh worked
    assert state.last_refresh_at is not None
    assert datetime.now(UTC) - state.last_refresh_at < timedelta(seconds=10)
    # a restarted daemon starts from the snapshot file's time
    seeded = bootstrap_cache.RefreshState.from_snapshot(tmp_path / "cache")
    assert seeded.last_refresh_at is not None
    assert abs((seeded.last_refresh_at - state.last_refresh_at).total_seconds()) < 2
