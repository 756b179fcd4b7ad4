"""The learned budget's floor, end to end: a real executed shutdown of a few milliseconds, then `hecate status`.

A shutdown with nothing to do (no nodes, no Flux) is executed for real through the CLI -- its
only step is the coordinator's power-off, here the harmless `true` -- and recorded. It must not
drag the threshold below the floor, and status must say the floor is what sets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate.adapters import config as config_mod
from hecate_lab.procs import free_port
from hecate_lab.ups import LabUps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def hecate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hecate", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **(env or {})})


def status(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = hecate("status", "--config", str(path), "--json", env=env)
    assert done.returncode == 1, done.stderr  # WARNING: not armed, no daemon running (on mains: nothing worse)
    return dict(json.loads(done.stdout)["budget"])


def test_one_executed_shutdown_of_a_few_milliseconds_keeps_the_threshold_at_the_floor(tmp_path: Path,
                                                                                       ups: LabUps) -> None:
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "host_name": "titan-db",
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"default_budget_s": 60},  # 1.1 x 60 = 66 s: under the floor of 60 + 30 s from the start
        "shutdown": {"flux_suspend": False, "local_poweroff_command": ["true"]},
        # no daemon on this socket (never the host's /run/hecate): status polls itself
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(tmp_path / "run" / "hecate.sock")},
    }))
    assert list(config_mod.load(path, {}).shutdown.local_poweroff_command) == ["true"]  # never this host's power
    before = status(path)
    assert (before["threshold_s"], before["threshold_basis"], before["source"]) == (90, "floor", "default")

    run = hecate("shutdown", "--execute", "--config", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    records = json.loads((tmp_path / "state" / "runs.json").read_text())
    assert [(r["kind"], r["dry_run"], r["result"]) for r in records] == [("shutdown", False, "success")]
    assert records[0]["duration_s"] < 1  # a few milliseconds: the floor's case

    after = status(path)
    assert after["source"] == "measured"  # the run counted ...
    assert after["samples"] == [records[0]["duration_s"]]
    assert after["threshold_s"] == 90  # ... and the threshold stayed at the floor
    assert after["threshold_basis"] == "floor"
    assert after["threshold_why"].startswith("the floor, min_budget_s 60 s + margin 30 s, is above 1.1 x budget")
    text = hecate("status", "--config", str(path)).stdout
    assert "threshold = the floor 90 s (min_budget_s 60 s + margin 30 s), above 1.1 x budget = 33 s" in text

    # With the default 300 s budget the same run moves the budget only halfway down: 165 s, not 0.01 s.
    halfway = status(path, {"HECATE_TRIGGER__DEFAULT_BUDGET_S": "300"})
    assert halfway["threshold_s"] == pytest.approx(1.1 * (300 + records[0]["duration_s"]) / 2)
    assert halfway["threshold_basis"] == "history"
    assert "falling towards the longest recent one" in halfway["threshold_why"]
