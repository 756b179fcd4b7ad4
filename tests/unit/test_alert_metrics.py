"""The metrics the alert rules need beyond the others: the last run of each kind, every alert the status
lists, a rejected policy and a failing bootstrap cache refresh (docs/alerts.md)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hecate.adapters import metrics
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.runs import RunKind, RunRecord, RunResult
from hecate.domain.ups import Snapshot, from_variables
from hecate.services import bootstrap_cache, status
from hecate.services.monitor import Monitor

pytestmark = pytest.mark.timeout(30)
START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


class Reader:
    """pyr overloaded and on mains; tethys unreachable."""

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        if ups.name == "tethys":
            return Snapshot(ups.name, reachable=False, error="connection refused", at=time.monotonic())
        return from_variables(ups.name, {"ups.status": "OL OVER", "battery.runtime": "900", "battery.charge": "100",
                                         "ups.load": "120"}, time.monotonic())


def record(run_id: str, kind: RunKind, result: RunResult | None, minutes: int, dry_run: bool = False) -> RunRecord:
    started = START + timedelta(minutes=minutes)
    return RunRecord(id=run_id, kind=kind, dry_run=dry_run, started_at=started, result=result,
                     finished_at=None if result is None else started + timedelta(seconds=90),
                     duration_s=None if result is None else 90.0)


def document(tmp_path: Path, runs: list[RunRecord]) -> dict[str, Any]:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}, {"name": "tethys"}]})
    store = StateStore(tmp_path)
    for run in runs:
        store.append_run(run)

    async def nothing(*_: object) -> None: ...

    monitor = Monitor(config, Reader(), store, nothing)
    asyncio.run(monitor.poll_once())
    return status.document(monitor, "direct")


def samples(text: str, name: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(f"{name}{{") or line.startswith(f"{name} ")}


def test_the_last_finished_run_of_each_kind(tmp_path: Path) -> None:
    doc = document(tmp_path, [
        record("s1", RunKind.shutdown, RunResult.failed, 0),
        record("s2", RunKind.shutdown, RunResult.degraded, 10, dry_run=True),  # dry-runs count: the last one
        record("u1", RunKind.startup, RunResult.failed, 20),
        record("u2", RunKind.startup, None, 30),  # in flight: the failed one is still the last finished
    ])
    assert doc["runs"]["last"] == {
        "shutdown": {"result": "degraded", "dry_run": True, "finished_at": "2025-01-02T03:15:35.000000Z"},
        "startup": {"result": "failed", "dry_run": False, "finished_at": "2025-01-02T03:25:35.000000Z"},
    }
    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    result = samples(text, "hecate_last_run_result")
    assert {k: v for k, v in result.items() if v} == {
        'hecate_last_run_result{kind="shutdown",result="degraded"}': 1.0,
        'hecate_last_run_result{kind="startup",result="failed"}': 1.0,
    }
    assert len(result) == 2 * len(RunResult)  # every result of each kind run so far: 0 or 1, never absent
    assert samples(text, "hecate_last_run_timestamp_seconds") == {
        'hecate_last_run_timestamp_seconds{kind="shutdown"}': (START + timedelta(minutes=10, seconds=90)).timestamp(),
        'hecate_last_run_timestamp_seconds{kind="startup"}': (START + timedelta(minutes=20, seconds=90)).timestamp(),
    }


def test_no_last_run_series_before_a_run(tmp_path: Path) -> None:
    text = metrics.render(metrics.registry_for(lambda: document(tmp_path, []))).decode()
    assert samples(text, "hecate_last_run_result") == {}
    assert samples(text, "hecate_last_run_timestamp_seconds") == {}


def test_every_alert_the_status_lists_is_a_series_once(tmp_path: Path) -> None:
    doc = document(tmp_path, [])
    kinds = {(a["ups"], a["kind"]) for a in doc["alerts"]}
    assert {("pyr", "overload"), ("tethys", "unreachable")} <= kinds
    doc["alerts"] += [{"ups": None, "kind": "not_listening", "message": "tcp"},
                      {"ups": None, "kind": "not_listening", "message": "unix"},  # one series for both
                      {"ups": "pyr", "kind": "runtime_untrusted", "message": "a kind added later"}]
    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    active = samples(text, "hecate_alert_active")
    assert active == {f'hecate_alert_active{{kind="{kind}",ups="{ups or ""}"}}': 1.0
                      for ups, kind in kinds | {(None, "not_listening"), ("pyr", "runtime_untrusted")}}
    doc["alerts"] = []
    assert samples(metrics.render(metrics.registry_for(lambda: doc)).decode(), "hecate_alert_active") == {}


def test_policy_rejected_and_bootstrap_cache_refresh_failing(tmp_path: Path) -> None:
    doc = document(tmp_path, [])
    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    assert "hecate_policy_rejected 0.0" in text
    assert "hecate_bootstrap_cache_refresh_failing" not in text  # the daemon does not keep the cache
    doc["policy"].update(cluster_object="invalid", rejected="spec.trigger.safety_factor: above 10")
    state = bootstrap_cache.RefreshState.from_snapshot(tmp_path / "none")
    state.errors, state.last_error = 3, "GitRepository flux-system/flux-system not found (404)"
    doc["bootstrap_cache"] = state.as_dict()
    body = metrics.render(metrics.registry_for(lambda: doc, process=True))
    text = body.decode()
    assert "hecate_policy_rejected 1.0" in text
    assert "hecate_bootstrap_cache_refresh_failing 1.0" in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    doc["policy"].update(cluster_object="deleted")  # rejected once, deleted since: the cache holds, no rejection
    assert "hecate_policy_rejected 0.0" in metrics.render(metrics.registry_for(lambda: doc)).decode()
