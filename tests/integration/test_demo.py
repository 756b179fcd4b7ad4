"""`make demo`'s script runs end to end on the lab and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hecate_lab import machines
from hecate_lab.testbed import MANIFEST

pytestmark = [pytest.mark.integration, pytest.mark.timeout(200)]
REPO = Path(__file__).resolve().parents[2]


def _timeline(out: str) -> list[list[str]]:
    timeline = out[out.index("Timeline of both halves"):out.index("Tearing the lab down")].splitlines()
    return [line.split(maxsplit=3)[1:] for line in timeline if line.startswith("+")]


def test_demo_script_runs_the_lab_and_tears_it_down(tmp_path: Path) -> None:
    """Where machines boot: Hecate installed on titan-db runs the cycle; elsewhere the light lab's."""
    directory = tmp_path / "demo"
    env = {**os.environ, "HECATE_LAB_DIR": str(directory),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "OK (role coordinator, 7 nodes, 1 UPS)" in out
    assert "Dry-run: nothing was touched" in out
    rows = _timeline(out)
    if machines.unavailable() is None:
        # Installed by host/install.sh, then a second run that changes nothing.
        assert "built release 0.1.0-" in out
        assert "started hecate.service" in out
        assert "\nnothing changed\n" in out
        assert "shutdown recorded on titan-db: success" in out
        ends = [who for _, who, what in rows if what.startswith("machine ended (off")]
        assert sorted(ends) == sorted(f"titan-{n}" for n in ("s1", "s2", "s3", "a1", "a2", "a3", "a4", "db"))
        # Every node's power-off was sent (and its sshd gone) before the coordinator powered itself off.
        own = next(i for i, (_, who, what) in enumerate(rows)
                   if who == "titan-db" and "Reached target poweroff" in what)
        sent = {who for _, who, what in rows[:own] if "COMMAND=/usr/bin/systemctl poweroff" in what}
        assert len(sent) == 7
        off = next(i for i, (_, who, what) in enumerate(rows) if who == "titan-db" and what.startswith("machine ended"))
        after = rows[off:]
        starts = [(who, what) for _, who, what in after if "COMMAND=/usr/bin/systemctl start" in what]
        assert "hecate-bootstrap.service: success" in out
    else:
        assert "Trigger:   SHUTDOWN decided — UPS pyrphoros, runtime" in out
        off = next(i for i, (_, who, _) in enumerate(rows) if who == "coordinator")
        powered = [who for _, who, what in rows[:off] if who.startswith("titan-") and "poweroff" in what]
        assert len(set(powered)) == 7  # every node powered off before the coordinator
        assert "shutdown recorded: success" in out
        after = rows[off:]
        starts = [(who, what) for _, who, what in after if what.startswith("systemctl start")]
        assert "startup recorded: success" in out
    # The second half: servers start before agents, the cold start lost valkey, startup broke the deadlock.
    assert len(starts) == 7
    units = [what.split("(")[0].split()[-1] for _, what in starts]
    assert set(units[:3]) == {"k3s"}
    assert set(units[3:]) == {"k3s-agent"}
    assert any(who == "cold-start" and "gitea-valkey" in what for _, who, what in after)
    assert "deadlock broken: created gitea/deployment/gitea-valkey" in out
    assert "is down" in proc.stdout
    assert not (directory / MANIFEST).exists()
