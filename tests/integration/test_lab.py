"""The whole lab, as Hecate will see it: config, UPS, SSH with strict host keys, API Ready flips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from hecate.adapters import config
from hecate.lab import nodes
from hecate.lab.procs import alive, wait_for
from hecate.lab.testbed import MANIFEST, Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def ssh_run(lab: Lab, node: nodes.LabNode, command: str) -> tuple[int, str]:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(lab.ssh_dir / "known_hosts"))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(node.address, port=node.port, username="root", key_filename=str(lab.ssh_dir / "id_ed25519"),
                timeout=5, banner_timeout=5, auth_timeout=5, allow_agent=False, look_for_keys=False)
    try:
        _, stdout, _ = ssh.exec_command(command, timeout=10)
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status(), out
    finally:
        ssh.close()


def ready(api: kclient.CoreV1Api, name: str) -> str:
    node = api.read_node(name)
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def test_generated_config_points_hecate_at_the_lab(lab: Lab) -> None:
    cfg = config.load(lab.config_path, {})
    assert [u.port for u in cfg.ups] == [u.port for u in lab.ups.values()]
    assert [(n.name, n.address, n.ssh_port) for n in cfg.cluster.nodes] == [
        (n.name, n.address, n.port) for n in lab.nodes
    ]
    assert cfg.state_dir == lab.state_dir
    assert cfg.ssh.known_hosts.read_text().count("ssh-ed25519") == 3


def test_ssh_command_changes_the_node_and_the_api_follows(lab: Lab) -> None:
    kconfig.load_kube_config(str(lab.kubeconfig))
    api = kclient.CoreV1Api()
    assert sorted(n.metadata.name for n in api.list_node().items) == ["titan-a1", "titan-a2", "titan-s1"]
    agent = lab.node("titan-a1")
    assert ready(api, agent.name) == "True"

    rc, out = ssh_run(lab, agent, "sudo systemctl stop k3s-agent")
    assert rc == 0
    assert nodes.read_state(agent.dir)["services"]["k3s-agent"] == "inactive"
    wait_for(lambda: ready(api, agent.name) == "False", 3, "titan-a1 NotReady")
    assert ready(api, "titan-a2") == "True"  # the others are untouched

    rc, out = ssh_run(lab, agent, "systemctl is-active k3s-agent")
    assert (rc, out.strip()) == (3, "inactive")
    ssh_run(lab, agent, "systemctl start k3s-agent")
    wait_for(lambda: ready(api, agent.name) == "True", 3, "titan-a1 Ready again")
    logged = [c["cmd"] for c in nodes.read_commands(agent.dir)]
    assert logged == [
        "sudo systemctl stop k3s-agent", "systemctl is-active k3s-agent", "systemctl start k3s-agent",
    ]


def test_lab_status_reports_every_part(lab: Lab) -> None:
    lab.ups["pyrphoros"].set(ups_status="OB DISCHRG", battery_runtime=240)
    info = Lab.load(lab.dir).status()
    assert info["ups"]["pyrphoros"]["ups.status"] == "OB DISCHRG"
    assert info["ups"]["pyrphoros"]["battery.runtime"] == "240"
    assert [n["sshd_alive"] for n in info["nodes"]] == [True, True, True]
    assert info["api"]["alive"] is True


def lab_pids(lab: Lab) -> list[int]:
    pids = [lab.kubeapi_pid] + [n.pid for n in lab.nodes]
    pids += [p for u in lab.ups.values() for p in (u.upsd_pid, u.driver_pid)]
    return [p for p in pids if p is not None]


def test_down_leaves_nothing(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", LabSpec(agents=1))
    pids, namespaces = lab_pids(lab), [n.netns for n in lab.nodes if n.netns]
    lab.down()
    lab.down()  # idempotent
    assert not [p for p in pids if alive(p)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [ns for ns in namespaces if ns in listed]
    assert not (lab.dir / MANIFEST).exists()


def test_a_killed_lab_does_not_break_the_next_up(tmp_path: Path) -> None:
    """`hecate lab up` in a process that is then SIGKILLed; the next up in the dir still works."""
    directory = tmp_path / "lab"
    argv = [sys.executable, "-m", "hecate", "lab", "up", "--dir", str(directory), "--agents", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    stale = Lab.load(directory)
    stale_pids = lab_pids(stale)
    assert all(alive(p) for p in stale_pids)  # detached: the lab outlived its CLI process
    try:
        lab = Lab.up(directory, LabSpec(agents=1))
    except BaseException:
        stale.down()
        raise
    try:
        assert not [p for p in stale_pids if alive(p)], "the stale lab's processes survived"
        rc, _ = ssh_run(lab, lab.node("titan-a1"), "true")
        assert rc == 0
    finally:
        lab.down()


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_nodes_have_their_own_network_namespace_when_root(lab: Lab) -> None:
    assert lab.netns
    node = lab.node("titan-s1")
    assert node.netns is not None
    addrs = subprocess.run(["ip", "-n", node.netns, "-4", "-o", "addr"], capture_output=True, text=True,
                           check=True).stdout
    assert f" {node.address}/24 " in addrs
    assert node.address.startswith(lab.subnet)
    host_addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f" {node.address}/" not in host_addrs  # the node's address lives only in its namespace
