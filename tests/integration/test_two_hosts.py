"""Two hosts, two UPSes, two real daemons: the peer ``tethys`` (UPS Statera) forwards its decision to the
coordinator (UPS Pyrphoros, the lab's nodes), which shuts the cluster down; and a coordinator that comes back
while the peer is still retrying takes the trigger, so the peer never falls back to its own power-off.

Both daemons are ``hecate daemon`` processes on loopback, each on its own real upsd + dummy-ups; the trigger
is the real signed ``POST /v1/trigger`` to the coordinator's peer listener. (The peer alone -- the coordinator
down, a 401 -- is tests/integration/test_peer_daemon.py; every refusal is test_peer_endpoint.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate_lab.procs import free_port, start_daemon, stop_daemon, wait_for
from hecate_lab.testbed import Lab, LabSpec, timeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = b"two-hosts-shared-secret-0123456789abcdef"
FAST = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2, "debounce_polls": 2}


@pytest.fixture
def two_ups_lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab.up(tmp_path / "lab", LabSpec(ups=("pyrphoros", "statera"), servers=1, agents=2))
    try:
        yield running
    finally:
        running.down()


def secret_file(path: Path) -> Path:
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def coordinator_config(lab: Lab, listen_port: int, *, execute: bool) -> Path:
    data = lab.hecate_config()
    data["ups"] = [u for u in data["ups"] if u["name"] == "pyrphoros"]
    data["trigger"] = FAST
    data["shutdown"].update({"execute": execute, "drain_timeout_s": 1})
    data["peer"] = {"listen": f"127.0.0.1:{listen_port}", "trusted": [
        {"name": "tethys", "key_id": "tethys-1", "secret_file": str(secret_file(lab.dir / "trusted-tethys.key"))}]}
    path = lab.dir / "coordinator.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def peer_config(lab: Lab, directory: Path, coordinator_port: int, forward_for_s: float) -> Path:
    directory.mkdir()
    statera = lab.ups["statera"]
    path = directory / "tethys.yaml"
    path.write_text(yaml.safe_dump({
        "role": "peer", "host_name": "tethys", "state_dir": str(directory / "state"),
        "ups": [{"name": "statera", "host": statera.host, "port": statera.port}],
        "trigger": FAST,
        "shutdown": {"execute": True, "local_poweroff_command": ["sh", "-c", f"date >> {directory / 'OFF'}"]},
        "peer": {"coordinator_url": f"http://127.0.0.1:{coordinator_port}", "key_id": "tethys-1",
                 "secret_file": str(secret_file(directory / "tethys.key")), "forward_for_s": forward_for_s},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(directory / "hecate.sock")},
    }))
    (directory / "state").mkdir(mode=0o700)
    return path


def status(config: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=30, check=False)
    try:
        return json.loads(done.stdout)  # type: ignore[no-any-return]
    except ValueError:
        return {}


def shutdown_runs(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "runs.json"
    return [r for r in json.loads(path.read_text()) if r["kind"] == "shutdown"] if path.exists() else []


def last_forward(config: Path) -> dict[str, Any]:
    return (status(config).get("peer_forward") or {}).get("last") or {}


def test_the_peers_decision_shuts_the_cluster_down_through_the_coordinator(two_ups_lab: Lab, tmp_path: Path) -> None:
    lab = two_ups_lab
    port = free_port()
    coordinator = start_daemon(coordinator_config(lab, port, execute=True))
    tethys = peer_config(lab, tmp_path / "tethys", port, forward_for_s=20)
    peer = start_daemon(tethys)
    out = ""
    try:
        wait_for(lambda: status(tethys).get("source") == "daemon" and status(lab.dir / "coordinator.yaml")
                 .get("peer_listener", {}).get("listening"), 30, "both daemons serving", interval=0.5)
        lab.ups["statera"].set(ups_status="OB LB", battery_runtime=40, battery_charge=8)
        wait_for(lambda: bool(shutdown_runs(lab.state_dir)) and shutdown_runs(lab.state_dir)[-1]["result"], 60,
                 "the coordinator's shutdown run to finish")
        forwarded = last_forward(tethys)
    finally:
        out = stop_daemon(peer) + stop_daemon(coordinator)
    run = shutdown_runs(lab.state_dir)[-1]
    assert run["result"] == "success", (run["stages"], out[-3000:])
    assert run["dry_run"] is False
    assert run["trigger"]["source"] == "peer"
    assert run["trigger"]["peer"] == "tethys"
    assert run["trigger"]["ups"][0]["name"] == "statera"
    # The coordinator's run started within 2 s of the peer's decision (one host, one clock).
    decided = datetime.fromisoformat(forwarded["decided_at"]).timestamp()
    assert 0 <= datetime.fromisoformat(run["started_at"]).timestamp() - decided <= 2.0, (forwarded, run["started_at"])
    assert forwarded["result"] == "accepted"
    assert forwarded["fallback"] is None
    assert not (tmp_path / "tethys" / "OFF").exists()  # the peer did not power itself off
    # The cluster went down in order: agents, then the server, then the coordinator's own power-off.
    rows = timeline(lab)
    off = {who: t for t, who, what in rows if what.startswith("systemctl poweroff")}
    marker = float((lab.dir / "coordinator-poweroff").read_text().split()[0])
    assert max(off["titan-a1"], off["titan-a2"]) < off["titan-s1"] < marker, (off, marker)


def test_a_coordinator_back_while_the_peer_retries_takes_the_trigger(two_ups_lab: Lab, tmp_path: Path) -> None:
    lab = two_ups_lab
    port = free_port()
    tethys = peer_config(lab, tmp_path / "tethys", port, forward_for_s=15)
    peer = start_daemon(tethys)
    coordinator: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: status(tethys).get("source") == "daemon", 30, "the peer daemon serving", interval=0.5)
        lab.ups["statera"].set(ups_status="OB LB", battery_runtime=40, battery_charge=8)
        wait_for(lambda: last_forward(tethys).get("attempts", 0) >= 2, 20, "the peer retrying", interval=0.3)
        coordinator = start_daemon(coordinator_config(lab, port, execute=False))  # a dry-run: the nodes stay up
        wait_for(lambda: last_forward(tethys).get("result") == "accepted", 20, "the peer's trigger accepted",
                 interval=0.3)
        time.sleep(0.5)
        forwarded = last_forward(tethys)
    finally:
        out = stop_daemon(peer) + stop_daemon(coordinator)
    assert forwarded["attempts"] >= 3, forwarded
    assert forwarded["fallback"] is None, out[-2000:]
    assert not (tmp_path / "tethys" / "OFF").exists()
    runs = shutdown_runs(lab.state_dir)
    assert [r["trigger"]["source"] for r in runs] == ["peer"]
    assert runs[0]["dry_run"] is True
