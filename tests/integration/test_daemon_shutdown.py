"""The daemon executes the shutdown when the decision falls, finishes it on SIGTERM, resumes it after SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate.adapters import daemon_client
from hecate_lab import nodes
from hecate_lab.procs import start_daemon, stop_daemon, wait_for
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab.up(tmp_path / "lab", LabSpec(servers=1, agents=2))
    try:
        yield running
    finally:
        running.down()


def write_config(lab: Lab) -> Path:
    data = lab.hecate_config()
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 10})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1})
    data["trigger"] = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.5}
    path = lab.dir / "hecate-exec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def executed_runs(lab: Lab) -> list[dict[str, Any]]:
    path = lab.state_dir / "runs.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text()) if r["kind"] == "shutdown" and not r["dry_run"]]


def ready(lab: Lab) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}/readyz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def all_off(lab: Lab) -> bool:
    return all(nodes.read_state(n.dir)["power"] == "off" for n in lab.nodes)


def test_decision_executes_the_shutdown_and_sigterm_does_not_cut_it_short(lab: Lab) -> None:
    for node in lab.nodes:  # a slow shutdown: every emulated command takes 1 s
        nodes.set_fault(node.dir, "*", delay_s=1)
    proc = start_daemon(write_config(lab))
    try:
        wait_for(lambda: ready(lab), 20, "the daemon to be ready")
        lab.ups["pyrphoros"].set(ups_status="OB LB DISCHRG", battery_runtime=60)
        wait_for(lambda: any(nodes.read_commands(n.dir) for n in lab.nodes), 20, "the shutdown to start")
    finally:
        output = stop_daemon(proc)  # SIGTERM while the shutdown runs
    assert proc.returncode == 0, output
    assert "stop requested during a shutdown: finishing the shutdown first" in output
    assert all_off(lab)
    assert (lab.dir / "coordinator-poweroff").exists()
    [record] = executed_runs(lab)
    assert record["result"] == "success"
    assert record["trigger"]["reason"] == "low_battery"
    assert '"event":"stage-end","stage":"poweroff"' in output  # JSON lines for journald


def status_over_socket(config: Path) -> dict[str, Any] | None:
    try:
        return daemon_client.fetch_status(Path(yaml.safe_load(config.read_text())["metrics"]["socket"]))
    except daemon_client.NoDaemon:
        return None


def test_a_squatted_metrics_port_does_not_stop_the_armed_shutdown(lab: Lab) -> None:
    """A local user holds the metrics port before the daemon starts: the power-off happens all the same."""
    config = write_config(lab)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", lab.metrics_port))
        squatter.listen()
        proc = start_daemon(config)
        try:
            wait_for(lambda: (status_over_socket(config) or {}).get("polls"), 20, "the daemon to poll")
            assert not ready(lab)  # nobody answers on the squatted port
            lab.ups["pyrphoros"].set(ups_status="OB LB DISCHRG", battery_runtime=60)
            wait_for(lambda: executed_runs(lab), 60, "the shutdown to be recorded")
            shown = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                                   capture_output=True, text=True, timeout=30, check=False)
            assert shown.returncode == 2, shown.stderr  # CRITICAL: OB LB
            doc = json.loads(shown.stdout)
            assert doc["source"] == "daemon"
            assert doc["trigger"]["decision"]["reason"] == "low_battery"
            assert doc["listeners"][0]["listening"] is False
        except BaseException:
            stop_daemon(proc)
            raise
    try:  # the squatter is gone: the daemon takes the port at its next retry
        wait_for(lambda: ready(lab), 40, "the daemon to bind the freed port")
    finally:
        output = stop_daemon(proc)
    assert proc.returncode == 0, output
    assert all_off(lab)
    assert (lab.dir / "coordinator-poweroff").exists()
    [record] = executed_runs(lab)
    assert record["result"] == "success"
    assert record["stages"][-1]["name"] == "local-poweroff"
    assert f"cannot listen on 127.0.0.1:{lab.metrics_port} (tcp): address already in use" in output


def journal_started(lab: Lab, step: str) -> bool:
    """Whether the in-flight run's journal shows ``step`` started (node logs only show finished commands)."""
    for path in (lab.state_dir / "journal").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if f'"step":"{step}"' in line and '"event":"step-start"' in line:
                return True
    return False


def test_a_killed_daemon_resumes_the_shutdown_when_it_starts_again(lab: Lab) -> None:
    server = next(n for n in lab.nodes if n.role == "server")
    nodes.set_fault(server.dir, "systemctl stop k3s", delay_s=30)  # the daemon dies during this step
    config = write_config(lab)
    proc = start_daemon(config)
    try:
        wait_for(lambda: ready(lab), 20, "the daemon to be ready")
        lab.ups["pyrphoros"].set(ups_status="OB LB DISCHRG", battery_runtime=60)
        wait_for(lambda: journal_started(lab, f"stop-servers/stop-service/{server.name}"), 30,
                 "stop-servers to start")
    finally:
        stop_daemon(proc, signal.SIGKILL)
    assert executed_runs(lab) == []
    assert not all_off(lab)
    before = [(n.name, c["cmd"]) for n in lab.nodes for c in nodes.read_commands(n.dir)]
    assert before, "the run had done nothing before it was killed"
    nodes.clear_faults(server.dir)
    lab.ups["pyrphoros"].set(ups_status="OL CHRG", battery_runtime=900)  # power came back meanwhile: too late
    proc = start_daemon(config)
    try:
        wait_for(lambda: executed_runs(lab), 60, "the resumed run to be recorded")
    finally:
        output = stop_daemon(proc)
    assert "was in flight when Hecate stopped: resuming it" in output
    assert all_off(lab)
    after = [(n.name, c["cmd"]) for n in lab.nodes for c in nodes.read_commands(n.dir)]
    repeated = [row for row in set(before) if after.count(row) > 1]
    assert repeated == []  # finished steps were not run again (the server's stop was in flight, not finished)
    [record] = executed_runs(lab)
    assert record["trigger"]["reason"] == "low_battery"
    assert record["trigger"]["resumed"] is True


def test_ups_power_cycle_asks_upsd_and_reports_what_the_ups_cannot_do(lab: Lab) -> None:
    """The lab's dummy-ups supports only `load.off` (which would cut power for good): the stage must say
    the UPS cannot power-cycle, and never fall back to cutting the load."""
    config = write_config(lab)
    data = yaml.safe_load(config.read_text())
    data["shutdown"]["ups_power_cycle"] = True
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, "-m", "hecate", "shutdown", "--execute", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    [record] = executed_runs(lab)
    cycle = next(s for s in record["stages"] if s["name"] == "ups-power-cycle")
    assert cycle["result"] == "degraded"
    assert "does not support shutdown.return" in cycle["detail"]
    assert record["stages"][-1]["name"] == "local-poweroff"  # and the coordinator still went last
    assert "ups-power-cycle" in out
    assert lab.ups["pyrphoros"].read()["ups.status"] == "OL"  # load.off was never sent
