"""Hecate against real hosts: lab nodes booted as systemd machines (systemd-nspawn).

Each node is a machine of its own: systemd as PID 1, the distribution's sshd, a ``hecate`` user
with the production sudoers line (``ssh.sudo: true``), real ``k3s``/``k3s-agent`` units (disabled
at boot) and a real ``systemctl poweroff``. What happened is read from the machines' own journals
and from when each machine really ended -- never from Hecate's view of itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Quiet
from hecate.adapters import config as config_mod
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunResult
from hecate.services import shutdown, startup
from hecate.services.executor import StepOutcome
from hecate_lab import cluster_seed, machines, nodestate
from hecate_lab.cluster_sim import Delays
from hecate_lab.nodes import LabNode
from hecate_lab.testbed import Lab, LabSpec

_why = machines.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.machines, pytest.mark.timeout(180),
              pytest.mark.skipif(_why is not None, reason=f"lab machines cannot boot here: {_why}")]


@pytest.fixture
def machine_lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """1 server + ``agents`` agents (default 2) as machines, no UPS."""
    agents = getattr(request, "param", 2)
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=agents, machines=True,
                                           delays=Delays(api=0.2, node=0.1, pod=0.1)))
    try:
        yield lab
    finally:
        lab.down()


def ssh(lab: Lab, node: LabNode, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The OpenSSH client, as an operator would: the lab's key and known_hosts only."""
    argv = ["ssh", "-i", str(lab.ssh_dir / "id_ed25519"), "-o", f"UserKnownHostsFile={lab.ssh_dir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", f"{machines.USER}@{node.address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class Recorder(Quiet):
    """Keeps every step's outcome."""

    def __init__(self) -> None:
        self.outcomes: list[StepOutcome] = []

    def step_finished(self, outcome: StepOutcome) -> None:
        self.outcomes.append(outcome)


def lab_config(lab: Lab, **shutdown_overrides: Any) -> HecateConfig:
    data = lab.hecate_config()
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 15})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1, **shutdown_overrides})
    # The machines are what is tested here, not the cold-start deadlock (tests/integration/test_startup.py):
    # Flux, which the lab's cold start leaves stuck without a bootstrap cache, gets short waits.
    data["flux"].update({"ready_timeout_s": 1, "detection_window_s": 1})
    data["startup"].update({"verify_timeout_s": 1})
    path = lab.dir / "hecate-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(path, {})


def journal_time(node: LabNode, needle: str, *, after: float = 0.0) -> float:
    rows = machines.journal(node)
    found = [t for t, _ident, message in rows if needle in message and t >= after]
    assert found, f"{node.name}: no {needle!r} in its journal: {rows[-15:]}"
    return found[0]


def ended_at(node: LabNode, timeout: float = 10.0) -> float:
    """When the machine really ended (its sshd stops first: Hecate's power-off step ends there)."""
    deadline = time.monotonic() + timeout
    while not (ends := [e["t"] for e in machines.power_events(node) if e["event"] == "off"]):
        assert time.monotonic() < deadline, f"{node.name} never powered off: {machines.power_events(node)}"
        time.sleep(0.05)
    return ends[-1]


@pytest.mark.parametrize("machine_lab", [0], indirect=True)
def test_a_machine_has_real_sshd_narrow_sudo_disabled_k3s_and_a_poweroff_that_ends_only_it(machine_lab: Lab) -> None:
    lab = machine_lab
    node = lab.nodes[0]
    assert lab.hecate_config()["ssh"]["user"] == machines.USER
    assert lab.hecate_config()["ssh"]["sudo"] is True
    whoami = ssh(lab, node, "id -un")
    assert whoami.stdout.strip() == machines.USER, whoami
    assert ssh(lab, node, "systemctl is-enabled k3s").stdout.strip() == "disabled"
    assert ssh(lab, node, "sudo -n systemctl is-active k3s").stdout.strip() == "active"
    # The sudoers line allows exactly what Hecate sends, nothing else.
    for refused in ("sudo -n systemctl restart ssh", "sudo -n /usr/local/bin/k3s-killall.sh --now",
                    "sudo -n systemctl stop ssh", "sudo -n id"):
        denied = ssh(lab, node, refused)
        assert denied.returncode != 0, refused
    # killall removes what the stopped unit left behind (k3s's KillMode=process).
    assert ssh(lab, node, "sudo -n systemctl stop k3s").returncode == 0
    assert machines.machine_run(node, ["pgrep", "-f", "^k3s-shim"], check=False).returncode == 0
    assert nodestate.read_state(node.dir)["services"]["k3s"] == "inactive"
    assert ssh(lab, node, "sudo -n /usr/local/bin/k3s-killall.sh").returncode == 0
    assert machines.machine_run(node, ["pgrep", "-f", "^k3s-shim"], check=False).returncode == 1

    off = ssh(lab, node, "sudo -n systemctl poweroff")
    assert off.returncode in (0, 255), off  # the reply, or the session cut by the power-off
    deadline = time.monotonic() + 20
    # The machine's end is recorded by its supervisor after PID 1 is gone: wait for the record too.
    while ((machines.pid1(node) is not None or len(machines.power_events(node)) < 2)
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert machines.pid1(node) is None, "the machine did not power off"
    assert [e["event"] for e in machines.power_events(node)] == ["boot", "off"]
    assert nodestate.read_state(node.dir)["power"] == "off"
    assert ssh(lab, node, "true", timeout=10).returncode == 255  # nobody answers any more

    booted = machines.power_on(node)
    assert booted.pid is not None
    assert machines.pid1(booted) is not None
    assert ssh(lab, booted, "systemctl is-active k3s").stdout.strip() == "inactive"  # off until Hecate starts it
    assert [e["event"] for e in machines.power_events(node)] == ["boot", "off", "boot"]


def test_hecate_shuts_machines_down_in_order_then_starts_them_again(machine_lab: Lab) -> None:
    lab = machine_lab
    cluster_seed.seed_workloads(lab.kubeconfig)
    config = lab_config(lab)
    progress = Recorder()
    record = asyncio.run(shutdown.run(config, {"source": "test"}, progress))
    assert record.result is RunResult.success, [s for s in record.stages if s.result is not RunResult.success]

    server, *agents = lab.nodes
    assert server.role == "server"
    assert all(a.role == "agent" for a in agents)
    # The machines' own journals: the real unit stops, killall, then the power-off; agents first.
    agent_stopped = [journal_time(a, "Stopped k3s-agent.service") for a in agents]
    server_stop = journal_time(server, "Stopping k3s.service")
    assert max(agent_stopped) < server_stop
    poweroffs = {}
    for node in lab.nodes:
        killall = journal_time(node, "COMMAND=/usr/local/bin/k3s-killall.sh")
        poweroffs[node.name] = journal_time(node, "COMMAND=/usr/bin/systemctl poweroff")
        assert killall < poweroffs[node.name] < ended_at(node)
        assert machines.pid1(node) is None, f"{node.name} still runs"
    assert max(poweroffs[a.name] for a in agents) < poweroffs[server.name]
    # Hecate waited for each node to go (its SSH port stops answering) before the next wave and the coordinator.
    details = [o.detail for o in progress.outcomes if o.stage == "poweroff"]
    assert len(details) == 3
    assert all("gone after" in d for d in details), details
    coordinator_off = float((lab.dir / "coordinator-poweroff").read_text().split()[0])
    assert coordinator_off > max(poweroffs.values())  # the coordinator last (emulated: never the host)

    # Mains returns: every machine boots, k3s disabled at boot; the staged startup starts it.
    lab.nodes = [machines.power_on(n) for n in lab.nodes]
    lab.save()
    booted_at = time.time()
    started = asyncio.run(startup.run(config, {"source": "test"}, Quiet()))
    assert started.result in (RunResult.success, RunResult.degraded), started.stages
    server_started = journal_time(server, "Started k3s.service", after=booted_at)
    for agent in agents:
        assert journal_time(agent, "Started k3s-agent.service", after=booted_at) > server_started
    for node in lab.nodes:
        assert nodestate.k3s_running(nodestate.read_state(node.dir)), node.name


@pytest.mark.parametrize("machine_lab", [5], indirect=True)
def test_faults_on_real_machines_are_bounded_failures_naming_node_and_command(machine_lab: Lab) -> None:
    """One agent per fault; the server still goes down, the run ends in bounded time, each failure is named."""
    lab = machine_lab
    stubborn, no_sudo, no_sshd, frozen, impostor = (lab.node(f"titan-a{i}") for i in range(1, 6))
    machines.set_k3s(stubborn, ignore_sigterm=True)  # `systemctl stop` runs into TimeoutStopSec (10 s)
    machines.machine_run(no_sudo, ["rm", f"/etc/sudoers.d/{machines.USER}"])
    machines.machine_run(no_sshd, ["systemctl", "stop", "ssh.service"])
    known = lab.ssh_dir / "known_hosts"
    lines = known.read_text().splitlines()
    server_key = next(line.split(" ", 1)[1] for line in lines if line.startswith(f"{lab.nodes[0].address} "))
    known.write_text("\n".join(f"{impostor.address} {server_key}" if line.startswith(f"{impostor.address} ")
                               else line for line in lines) + "\n")
    machines.freeze(frozen)  # the kernel still accepts its TCP connections; its sshd never answers
    config = lab_config(lab)
    config = config.model_copy(update={"ssh": config.ssh.model_copy(update={"command_timeout_s": 3.0})})
    started = time.monotonic()
    record = asyncio.run(shutdown.run(config, {"source": "test"}, Quiet()))
    elapsed = time.monotonic() - started

    assert record.result is RunResult.degraded
    stop = next(s for s in record.stages if s.name == "stop-agents")
    assert "titan-a1: titan-a1: 'sudo -n systemctl stop k3s-agent' did not finish within 3s" in stop.detail
    assert "titan-a2: `systemctl stop k3s-agent` exited 1: sudo: a password is required" in stop.detail
    assert "titan-a3: titan-a3 (" in stop.detail
    assert "Connection refused" in stop.detail
    assert "titan-a4: titan-a4 (" in stop.detail
    assert "the node accepted the connection but its sshd did not answer" in stop.detail
    assert "titan-a5: host key for titan-a5" in stop.detail
    poweroff = next(s for s in record.stages if s.name == "poweroff")
    assert "titan-a2: `systemctl poweroff` exited 1: sudo: a password is required" in poweroff.detail
    # The server still stopped and went, the coordinator last; the stubborn agent went too (its
    # unit killed at TimeoutStopSec by the machine's own shutdown); sudo refused the power-off.
    server = lab.nodes[0]
    assert journal_time(server, "Stopped k3s.service") < ended_at(server)
    assert (lab.dir / "coordinator-poweroff").exists()
    assert ended_at(stubborn, timeout=15) > 0
    assert machines.pid1(no_sudo) is not None
    assert elapsed < 60, elapsed
