"""Machines outside the cluster (``hosts:``) in a real shutdown and startup of a lab.

The hosts are light lab nodes of role ``host`` (a real sshd, no k3s, one ``nfs-server`` unit); order is
read from the nodes' own command logs and the coordinator's power-off marker, never from Hecate's record.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Quiet
from hecate.adapters import config as config_mod
from hecate.adapters import ssh
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunResult
from hecate.services import shutdown, startup
from hecate_lab import cluster_seed, nodes, nodestate
from hecate_lab.cluster_sim import Delays
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """1 server, 1 agent, two hosts outside the cluster (nas: order 10, tethys: order 20), no UPS."""
    running = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=1, hosts=("nas", "tethys"),
                                               delays=Delays(api=0.2, node=0.1, pod=0.1)))
    try:
        yield running
    finally:
        running.outside = Lab.load(running.dir).outside  # a wake command may have booted one since
        running.down()


def lab_config(lab: Lab) -> HecateConfig:
    data = lab.hecate_config()
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 5})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1})
    path = lab.dir / "hecate-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(path, {})


def commands(lab: Lab) -> list[tuple[float, str, str]]:
    return sorted((c["t"], n.name, c["cmd"]) for n in [*lab.nodes, *lab.outside] for c in nodes.read_commands(n.dir))


def at(rows: list[tuple[float, str, str]], node: str, needle: str) -> float:
    return next(t for t, n, c in rows if n == node and needle in c)


def test_hosts_stop_after_the_nodes_before_the_coordinator_and_a_silent_one_does_not_hold_it(lab: Lab) -> None:
    nas, tethys = lab.node("nas"), lab.node("tethys")
    nodes.stop_nodes([tethys], lab_id=None)  # its sshd is down: unreachable
    record = asyncio.run(shutdown.run(lab_config(lab), {"source": "test"}, Quiet()))
    rows = commands(lab)

    nodes_off = max(at(rows, n.name, "poweroff") for n in lab.nodes)
    assert nodes_off < at(rows, "nas", "systemctl stop nfs-server") < at(rows, "nas", "systemctl poweroff")
    coordinator_off = float((lab.dir / "coordinator-poweroff").read_text().split()[0])
    assert coordinator_off > max(t for t, _, _ in rows)
    assert nodestate.read_state(nas.dir) == {"power": "off", "services": {"nfs-server": "inactive"}}

    assert [s.name for s in record.stages][-3:] == ["hosts-stop", "hosts-poweroff", "local-poweroff"]
    assert record.result is RunResult.degraded
    not_done = {(r.stage, r.target): r.status.value for r in record.not_done}
    assert not_done == {("hosts-stop", "tethys"): "failed", ("hosts-poweroff", "tethys"): "failed"}
    by_name = {s.name: s for s in record.stages}
    assert "tethys" in by_name["hosts-stop"].detail
    assert by_name["hosts-poweroff"].duration_s < 5  # tethys was marked down by its stop step: one re-probe


def test_a_killed_run_resumes_without_repeating_finished_host_steps(lab: Lab) -> None:
    lab_config(lab)
    nodes.set_fault(lab.node("tethys").dir, "systemctl stop nfs-server", delay_s=3)
    proc = subprocess.Popen([sys.executable, "-m", "hecate", "shutdown", "--execute", "--config",
                             str(lab.dir / "hecate-test.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(n == "nas" and "stop nfs-server" in c for _, n, c in commands(lab)):
            assert time.monotonic() < deadline, "the run never reached hosts-stop"
            time.sleep(0.05)
        time.sleep(0.5)  # nas's step is journaled as done; tethys's stop is still in its 3 s
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = commands(lab)
    nodes.clear_faults(lab.node("tethys").dir)
    record = asyncio.run(shutdown.run(lab_config(lab), {"source": "test"}, Quiet()))
    after = [row for row in commands(lab) if row not in before]
    assert not [c for _, n, c in after if n == "nas" and "nfs-server" in c], "nas's finished stop step ran again"
    assert [c for _, n, c in after if n != "tethys" and "poweroff" not in c] == []  # only power-offs were left
    assert record.result is RunResult.success, [(s.name, s.detail) for s in record.stages]
    assert all(nodestate.read_state(h.dir)["power"] == "off" for h in lab.outside)


def test_startup_wakes_a_host_and_waits_for_its_sshd(lab: Lab) -> None:
    cluster_seed.seed_workloads(lab.kubeconfig)
    nas = lab.node("nas")
    data = lab.hecate_config()
    data["hosts"] = [h for h in data["hosts"] if h["name"] == "nas"]
    data["startup"].update({"verify_timeout_s": 5, "foundation": []})
    config = HecateConfig.model_validate(data)

    async def power_off() -> None:  # as a shutdown leaves it: powered off, its sshd gone
        async with ssh.SshPool(config.ssh, config.hosts) as pool:
            await pool.run("nas", "systemctl poweroff", timeout=5)
            while await pool.probe("nas", 0.5) is None:
                await asyncio.sleep(0.1)
    asyncio.run(power_off())
    (nas.dir / "commands.jsonl").unlink()  # from here on: what startup ran on it
    record = asyncio.run(startup.run(config, {"source": "test"}, Quiet()))
    stages = {s.name: s for s in record.stages}
    assert [s.name for s in record.stages][:2] == ["hosts-wake", "start-servers"]
    assert stages["hosts-wake"].result is RunResult.success, stages["hosts-wake"].detail
    assert "sshd up after" in stages["hosts-wake"].detail
    assert nodestate.read_state(nas.dir) == {"power": "on", "services": {"nfs-server": "active"}}
    assert not nodes.read_commands(nas.dir)  # startup runs nothing on a host: it wakes it and waits
    booted: dict[str, Any] = {n.name: n for n in Lab.load(lab.dir).outside}
    assert booted["nas"].pid is not None
