"""An armed daemon whose state disk is full or read-only still powers everything off, the coordinator last.

Real parts: the daemon as systemd runs it, real upsd going OB+LB, the lab's sshd nodes and
emulated API, and the state dir on a small real tmpfs -- (a) filled before the decision, (b)
filled by a storage-quiesce hook in the middle of the run, (c) remounted read-only. Order is
checked from the nodes' own command logs. One lab serves the three cases (nodes are powered on
again between them); each case gets a fresh tmpfs, unmounted even when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate_lab import nodes
from hecate_lab.procs import wait_for
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab.up(tmp_path_factory.mktemp("state-disk") / "lab", LabSpec(servers=1, agents=2))
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def lab(shared_lab: Lab) -> Lab:
    """The shared lab as a fresh one: every node on, the UPS on mains, no coordinator power-off yet."""
    shared_lab.nodes = [nodes.power_on(n) if nodes.read_state(n.dir)["power"] != "on" else n for n in shared_lab.nodes]
    shared_lab.ups["pyrphoros"].set(ups_status="OL CHRG", battery_runtime=900)
    (shared_lab.dir / "coordinator-poweroff").unlink(missing_ok=True)
    return shared_lab


def write_config(lab: Lab, state_dir: Path, **shutdown: Any) -> Path:
    data = lab.hecate_config()
    data["state_dir"] = str(state_dir)
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 10})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1, **shutdown})
    data["flux"]["bootstrap_objects"] = []  # no snapshot refreshes: only the run writes to the state dir
    data["trigger"] = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.5}
    path = lab.dir / "hecate-state-disk.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def get(lab: Lab, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}{path}", timeout=2) as resp:
        body = resp.read().decode()
    return json.loads(body) if path.startswith("/v1/") else body


def ready(lab: Lab) -> bool:
    try:
        get(lab, "/readyz")
    except OSError:
        return False
    return True


def coordinator_off(lab: Lab) -> bool:
    return (lab.dir / "coordinator-poweroff").exists()


class Daemon:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hecate", "daemon", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.output = ""

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.output, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.output, _ = self.proc.communicate()
        return self.output


@pytest.fixture
def daemon() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.stop()


def shut_down_on_low_battery(lab: Lab, config: Path, started: list[Daemon],
                             before_the_decision: Any = None) -> tuple[dict[str, Any], str, str, str]:
    """Start the armed daemon, (optionally break the disk), go OB+LB, wait for the coordinator's
    power-off; return the daemon's status document then, its metrics, `hecate status`, and its log."""
    d = Daemon(config)
    started.append(d)
    wait_for(lambda: ready(lab) or d.proc.poll() is not None, 20, "the daemon to be ready")
    assert d.proc.poll() is None, d.stop()
    if before_the_decision is not None:
        before_the_decision()
    lab.ups["pyrphoros"].set(ups_status="OB LB DISCHRG", battery_runtime=60)
    try:
        wait_for(lambda: coordinator_off(lab) or d.proc.poll() is not None, 60, "the coordinator's power-off")
        wait_for(lambda: not get(lab, "/v1/status")["shutdown_task"]["running"], 10, "the shutdown task to end")
        doc, exposition = get(lab, "/v1/status"), get(lab, "/metrics")
        text = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config)],
                              capture_output=True, text=True, timeout=30, check=False).stdout
    finally:
        output = d.stop()
    assert coordinator_off(lab), output
    return doc, exposition, text, output


def assert_every_node_stopped_and_off_coordinator_last(lab: Lab, since: float) -> None:
    rows = sorted((c["t"], n.name, c["cmd"]) for n in lab.nodes for c in nodes.read_commands(n.dir) if c["t"] >= since)
    for node in lab.nodes:
        unit = "k3s" if node.role == "server" else "k3s-agent"
        ran = [c for _, name, c in rows if name == node.name]
        assert f"systemctl stop {unit}" in ran, (node.name, ran)
        assert any("poweroff" in c for c in ran), (node.name, ran)
        assert nodes.read_state(node.dir)["power"] == "off", node.name
    coordinator = float((lab.dir / "coordinator-poweroff").read_text().split()[0])
    assert coordinator > max(t for t, _, _ in rows)  # the coordinator last


def failures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["what"]: f for f in doc["state_writes"]}


def test_a_full_state_disk_before_the_decision(lab: Lab, small_fs: Any, daemon: list[Daemon]) -> None:
    since = time.time()
    doc, exposition, text, output = shut_down_on_low_battery(lab, write_config(lab, small_fs.path), daemon,
                                                             before_the_decision=small_fs.fill)
    assert_every_node_stopped_and_off_coordinator_last(lab, since)
    failed = failures(doc)
    assert {"lock", "journal", "runs"} <= set(failed), failed
    assert all("No space left on device" in failed[w]["error"] for w in ("lock", "journal", "runs"))
    assert "goes on without the cross-process lock" in output
    assert failed["journal"]["errors"] == 1  # the run's head: a journal without it could never resume, so no more
    assert f'hecate_state_write_errors_total{{what="journal"}} {float(failed["journal"]["errors"])}' in exposition
    assert doc["shutdown_task"]["restarts"] == 0  # nothing crashed
    assert "Alert:     bookkeeping: journal writes fail since" in text  # `hecate status` shows it


def test_a_state_disk_filled_in_the_middle_of_the_run(lab: Lab, small_fs: Any, daemon: list[Daemon]) -> None:
    # The quiesce hook fills the disk; the ten no-op hooks after it write ~3 KB more journal than the
    # page it was writing into can still take, so later journal writes fail for certain.
    hooks = [small_fs.fill_argv()] + [["true"]] * 10
    config = write_config(lab, small_fs.path, storage_quiesce={"enabled": True, "timeout_s": 2, "hooks": hooks})
    since = time.time()
    doc, _, _, output = shut_down_on_low_battery(lab, config, daemon)
    assert_every_node_stopped_and_off_coordinator_last(lab, since)
    failed = failures(doc)
    assert {"journal", "runs"} <= set(failed), failed
    assert failed["journal"]["errors"] > 3  # every later step's journal lines failed ...
    assert output.count("(journal)") == 1, output  # ... and were logged once, not once per step
    assert "lock" not in failed  # taken before the disk filled
    assert list(small_fs.path.glob(".fill-*")), "the hook did not run: the disk was never filled"


def test_a_read_only_state_disk(lab: Lab, small_fs: Any, daemon: list[Daemon]) -> None:
    since = time.time()
    doc, _, text, output = shut_down_on_low_battery(lab, write_config(lab, small_fs.path), daemon,
                                                    before_the_decision=small_fs.read_only)
    assert_every_node_stopped_and_off_coordinator_last(lab, since)
    failed = failures(doc)
    assert {"lock", "journal", "runs"} <= set(failed), failed
    assert "Read-only file system" in failed["journal"]["error"]
    assert "goes on without the cross-process lock" in output
    assert "Alert:     bookkeeping: runs writes fail since" in text
