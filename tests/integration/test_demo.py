"""`make demo`'s script runs end to end on the lab and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hecate_lab.testbed import MANIFEST

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]
REPO = Path(__file__).resolve().parents[2]


def test_demo_script_runs_the_lab_and_tears_it_down(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    env = {**os.environ, "HECATE_LAB_DIR": str(directory),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=130, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "OK (role coordinator, 7 nodes, 1 UPS)" in out
    assert "Dry-run: nothing was touched" in out
    assert "Trigger:   SHUTDOWN decided — UPS pyrphoros, runtime" in out
    timeline = out[out.index("Timeline of both halves"):out.index("Tearing the lab down")].splitlines()
    rows = [line.split(maxsplit=3)[1:] for line in timeline if line.startswith("+")]
    off = next(i for i, (_, who, _) in enumerate(rows) if who == "coordinator")
    machines = [who for _, who, what in rows[:off] if who.startswith("titan-") and "poweroff" in what]
    assert len(set(machines)) == 7  # every node powered off before the coordinator
    assert "shutdown recorded: success" in out
    # The second half: servers start before agents, the cold start lost valkey, startup broke the deadlock.
    after = rows[off:]
    # A light node logs the command it emulated; a machine's journal has sudo's line for it.
    starts = [(who, what) for _, who, what in after
              if what.startswith("systemctl start") or "COMMAND=/usr/bin/systemctl start" in what]
    assert len(starts) == 7
    units = [what.split("(")[0].split()[-1] for _, what in starts]
    assert set(units[:3]) == {"k3s"}
    assert set(units[3:]) == {"k3s-agent"}
    assert any(who == "cold-start" and "gitea-valkey" in what for _, who, what in after)
    assert "deadlock broken: created gitea/deployment/gitea-valkey" in out
    assert "startup recorded: success" in out
    assert "is down" in proc.stdout
    assert not (directory / MANIFEST).exists()
