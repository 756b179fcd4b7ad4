"""`make demo`'s script runs end to end on the lab and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hecate.lab.testbed import MANIFEST

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]


def test_demo_script_runs_the_lab_and_tears_it_down(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    env = {**os.environ, "HECATE_LAB_DIR": str(directory),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=100, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "OK (role coordinator, 7 nodes, 1 UPS)" in out
    assert "Dry-run: nothing was touched" in out
    assert "Trigger:   SHUTDOWN decided — UPS pyrphoros, runtime" in out
    timeline = out[out.index("Timeline"):out.index("The daemon's log")].splitlines()
    order = [line.split()[2] for line in timeline if line.startswith("+")]
    machines = [who for who in order if who not in ("hecate", "pyrphoros")]
    assert machines[-1] == "coordinator"  # the coordinator went last
    assert "shutdown recorded: success" in out
    assert "is down" in proc.stdout
    assert not (directory / MANIFEST).exists()
