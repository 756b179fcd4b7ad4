"""The lab's emulated nodes: real sshd processes reached with strict host-key checking.

Every test starts its own small lab (loopback ports, and network namespaces when
root) and the fixture removes it again whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from hecate_lab import node_shell, nodes
from hecate_lab.nodes import LabNode, NodeSpec

pytestmark = pytest.mark.integration

SPECS = [NodeSpec("srv1", "server"), NodeSpec("agt1", "agent"), NodeSpec("agt2", "agent")]
UNREACHABLE = (OSError, EOFError, paramiko.SSHException)  # NoValidConnectionsError is an OSError


@functools.cache
def netns_unavailable() -> str | None:
    """Why network-namespace labs cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace labs need root (ip netns, veth, bridge)"
    probe = f"hlprobe{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"'ip netns add' does not work here: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def free_subnet() -> str:
    """A 10.77.x /24 that no interface on this host uses (other labs may run in parallel)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    taken = set(re.findall(r"inet 10\.77\.(\d+)\.", used))
    free = [str(n) for n in range(100, 250) if str(n) not in taken]
    return f"10.77.{random.choice(free)}"


@dataclass
class Lab:
    nodes: list[LabNode]
    key: Path
    known_hosts: Path
    lab_id: str
    netns: bool

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    def power_on(self, name: str) -> LabNode:
        booted = nodes.power_on(self.node(name))
        self.nodes = [booted if n.name == name else n for n in self.nodes]
        return booted


@contextlib.contextmanager
def running_lab(workdir: Path, specs: list[NodeSpec], *, netns: bool) -> Iterator[Lab]:
    """A started lab that is stopped and removed on exit, whatever happened."""
    if netns and (reason := netns_unavailable()):
        pytest.skip(reason)
    lab_id = "t" + secrets.token_hex(3)
    key = nodes.make_client_key(workdir / "ssh")
    known_hosts = workdir / "ssh" / "known_hosts"
    started = nodes.start_nodes(
        workdir / "lab",
        specs,
        client_pubkey=key.with_name(key.name + ".pub"),
        known_hosts=known_hosts,
        netns=netns,
        lab_id=lab_id,
        subnet=free_subnet() if netns else "10.77.0",
    )
    the_lab = Lab(started, key, known_hosts, lab_id, netns)
    try:
        yield the_lab
    finally:
        nodes.stop_nodes(the_lab.nodes, lab_id=lab_id)
        if netns:
            nodes.cleanup_netns(lab_id)


MODES = [
    pytest.param(False, id="loopback"),
    pytest.param(True, id="netns", marks=pytest.mark.root),
]


@pytest.fixture(params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    with running_lab(tmp_path, SPECS, netns=request.param) as the_lab:
        yield the_lab


def connect(
    lab: Lab, node: LabNode, *, known_hosts: Path | None = None, timeout: float = 5.0
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            node.address,
            port=node.port,
            username="root",
            key_filename=str(lab.key),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        client.close()
        raise
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 10.0) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def ssh(lab: Lab, name: str, command: str, timeout: float = 10.0) -> tuple[int, str, str]:
    client = connect(lab, lab.node(name))
    try:
        return run(client, command, timeout)
    finally:
        client.close()


def services(node: LabNode) -> dict[str, str]:
    return dict(nodes.read_state(node.dir)["services"])


def lab_processes(lab_dir: Path) -> dict[int, node_shell.Proc]:
    """Live processes whose command line mentions the lab directory."""
    return {
        pid: proc
        for pid, proc in node_shell.process_table().items()
        if str(lab_dir) in " ".join(proc.argv) and proc.state != "Z" and pid != os.getpid()
    }


# --------------------------------------------------------------------------- commands


@pytest.mark.timeout(30, method="signal")
def test_systemctl_stop_start_and_is_active_change_the_node_state(lab: Lab) -> None:
    srv = lab.node("srv1")
    client = connect(lab, srv)
    try:
        assert run(client, "sudo -n systemctl stop k3s") == (0, "", "")
        assert services(srv) == {"k3s": "inactive"}
        assert run(client, "systemctl is-active k3s") == (3, "inactive\n", "")
        assert run(client, "sudo systemctl start k3s.service") == (0, "", "")
        assert run(client, "systemctl is-active k3s") == (0, "active\n", "")
        assert run(client, "hostname") == (0, "srv1\n", "")
    finally:
        client.close()

    records = nodes.read_commands(srv.dir)
    assert [(r["cmd"], r["rc"]) for r in records] == [
        ("sudo -n systemctl stop k3s", 0),
        ("systemctl is-active k3s", 3),
        ("sudo systemctl start k3s.service", 0),
        ("systemctl is-active k3s", 0),
        ("hostname", 0),
    ]
    assert all(r["t"] <= r["t_end"] for r in records)
    assert [r["t"] for r in records] == sorted(r["t"] for r in records)
    assert nodes.read_state(srv.dir) == {"power": "on", "services": {"k3s": "active"}}
    # The other nodes were not touched.
    assert services(lab.node("agt1")) == {"k3s-agent": "active"}
    assert nodes.read_commands(lab.node("agt1").dir) == []


@pytest.mark.timeout(30, method="signal")
def test_killall_unknown_units_and_unknown_commands(lab: Lab) -> None:
    agt = lab.node("agt1")
    rc, _, err = ssh(lab, "agt1", "sudo systemctl stop nginx")
    assert rc == 5
    assert "nginx.service" in err
    assert services(agt) == {"k3s-agent": "active"}

    rc, _, err = ssh(lab, "agt1", "frobnicate --now")
    assert rc == 127
    assert "command not found" in err

    assert ssh(lab, "agt1", "sudo /usr/local/bin/k3s-killall.sh")[0] == 0
    assert services(agt) == {"k3s-agent": "inactive"}
    assert ssh(lab, "agt2", "k3s-killall.sh")[0] == 0
    assert services(lab.node("agt2")) == {"k3s-agent": "inactive"}
    assert ssh(lab, "agt2", "echo hello lab") == (0, "hello lab\n", "")
    assert [r["rc"] for r in nodes.read_commands(agt.dir)] == [5, 127, 0]


@pytest.mark.timeout(30, method="signal")
def test_parallel_sessions_all_land_in_the_log(lab: Lab) -> None:
    srv = lab.node("srv1")
    results: list[int] = []
    errors: list[BaseException] = []

    def stop_then_start(i: int) -> None:
        try:
            verb = "stop" if i % 2 else "start"
            results.append(ssh(lab, "srv1", f"sudo systemctl {verb} k3s")[0])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=stop_then_start, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert results == [0] * 8
    records = nodes.read_commands(srv.dir)
    assert len(records) == 8
    assert {r["cmd"] for r in records} == {"sudo systemctl stop k3s", "sudo systemctl start k3s"}
    assert services(srv)["k3s"] in ("active", "inactive")


# --------------------------------------------------------------------------- host keys


@pytest.mark.timeout(30, method="signal")
def test_known_hosts_names_every_node_with_its_own_key(lab: Lab) -> None:
    entries = [line.split() for line in lab.known_hosts.read_text().splitlines()]
    assert [e[0] for e in entries] == [n.known_hosts_name for n in lab.nodes]
    assert all(e[1] == "ssh-ed25519" for e in entries)
    assert len({e[2] for e in entries}) == len(lab.nodes)
    if lab.netns:
        assert [e[0] for e in entries] == [
            f"{lab.nodes[0].address.rsplit('.', 1)[0]}.{i}" for i in (11, 12, 13)
        ]
    else:
        assert all(e[0].startswith("[127.0.0.1]:") for e in entries)


@pytest.mark.timeout(30, method="signal")
def test_a_wrong_or_missing_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    srv = lab.node("srv1")
    impostor = nodes.make_client_key(tmp_path / "impostor")
    keytype, blob = impostor.with_name(impostor.name + ".pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{srv.known_hosts_name} {keytype} {blob}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, srv, known_hosts=wrong)

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(lab, srv, known_hosts=empty)
    assert nodes.read_commands(srv.dir) == []


# --------------------------------------------------------------------------- faults


@pytest.mark.timeout(30, method="signal")
def test_fault_delay_and_exit_code_longest_prefix_wins(lab: Lab) -> None:
    srv = lab.node("srv1")
    nodes.set_fault(srv.dir, "systemctl stop", exit_code=7)
    nodes.set_fault(srv.dir, "systemctl stop k3s", delay_s=0.6)
    client = connect(lab, srv)
    try:
        rc, _, err = run(client, "sudo systemctl stop k3s-agent")  # whole words: "systemctl stop" wins
        assert rc == 7
        assert "injected" in err
        assert services(srv) == {"k3s": "active"}

        started = time.monotonic()
        assert run(client, "sudo -n systemctl stop k3s")[0] == 0
        assert time.monotonic() - started >= 0.6
        assert services(srv) == {"k3s": "inactive"}

        nodes.clear_faults(srv.dir)
        started = time.monotonic()
        assert run(client, "systemctl stop k3s")[0] == 0
        assert time.monotonic() - started < 0.6
    finally:
        client.close()
    records = nodes.read_commands(srv.dir)
    assert [r["rc"] for r in records] == [7, 0, 0]
    assert records[1]["t_end"] - records[1]["t"] >= 0.6


@pytest.mark.timeout(30, method="signal")
def test_global_default_delay_applies_to_every_command(lab: Lab) -> None:
    agt = lab.node("agt2")
    nodes.set_fault(agt.dir, "*", delay_s=0.5)
    nodes.set_fault(agt.dir, "hostname", delay_s=0)
    started = time.monotonic()
    assert ssh(lab, "agt2", "true")[0] == 0
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert ssh(lab, "agt2", "hostname") == (0, "agt2\n", "")
    assert time.monotonic() - started < 2.0
    record = nodes.read_commands(agt.dir)[-1]
    assert record["t_end"] - record["t"] < 0.5


@pytest.mark.timeout(30, method="signal")
def test_a_hung_command_blocks_until_the_client_gives_up(lab: Lab) -> None:
    agt = lab.node("agt1")
    nodes.set_fault(agt.dir, "systemctl stop k3s-agent", hang=True)
    client = connect(lab, agt)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            run(client, "sudo systemctl stop k3s-agent", timeout=1.0)
        assert 0.9 <= time.monotonic() - started < 5
    finally:
        client.close()
    assert services(agt) == {"k3s-agent": "active"}
    [record] = nodes.read_commands(agt.dir)
    assert record["cmd"] == "sudo systemctl stop k3s-agent"
    assert record["hang"] is True
    assert record["rc"] is None
    # The node still answers other sessions.
    assert ssh(lab, "agt1", "systemctl is-active k3s-agent") == (0, "active\n", "")


# --------------------------------------------------------------------------- power


def wait_unreachable(lab: Lab, node: LabNode, within_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            connect(lab, node, timeout=0.5).close()
        except UNREACHABLE:
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{node.name} still accepts SSH {within_s} s after poweroff")


@pytest.mark.timeout(45, method="signal")
def test_poweroff_takes_the_node_off_the_network_and_power_on_brings_it_back(lab: Lab) -> None:
    commands = {"srv1": "sudo poweroff", "agt1": "sudo -n systemctl poweroff", "agt2": "sudo shutdown -h now"}
    old_pids = {n.name: n.pid for n in lab.nodes}
    for name, command in commands.items():
        assert ssh(lab, name, command) == (0, "", ""), name
        assert nodes.read_state(lab.node(name).dir)["power"] == "off"
        assert set(services(lab.node(name)).values()) == {"inactive"}
    for name in commands:
        assert wait_unreachable(lab, lab.node(name), within_s=2.5) <= 2.5
    lab_dir = lab.nodes[0].dir.parent
    for name, command in commands.items():
        config = str(lab.node(name).dir / "sshd_config")
        deadline = time.monotonic() + 2
        while [p for p in lab_processes(lab_dir).values() if config in " ".join(p.argv)]:
            assert time.monotonic() < deadline, f"{name}'s sshd still runs after poweroff"
            time.sleep(0.05)
        last = nodes.read_commands(lab.node(name).dir)[-1]
        assert (last["cmd"], last["rc"]) == (command, 0)

    booted = lab.power_on("srv1")
    assert booted.pid is not None
    assert booted.pid != old_pids["srv1"]
    assert nodes.read_state(booted.dir) == {"power": "on", "services": {"k3s": "active"}}
    assert ssh(lab, "srv1", "systemctl is-active k3s") == (0, "active\n", "")
    # The agents stay down until they are powered on too.
    with pytest.raises(UNREACHABLE):
        connect(lab, lab.node("agt1"), timeout=0.5).close()
    lab.power_on("agt1")
    assert ssh(lab, "agt1", "hostname") == (0, "agt1\n", "")


@pytest.mark.timeout(30, method="signal")
def test_power_on_right_after_poweroff_leaves_the_node_up(lab: Lab) -> None:
    assert ssh(lab, "agt2", "sudo poweroff")[0] == 0
    booted = lab.power_on("agt2")  # the halt helper has not even fired yet
    time.sleep(node_shell.HALT_DELAY_S + 0.5)
    assert ssh(lab, "agt2", "systemctl is-active k3s-agent") == (0, "active\n", "")
    assert nodes.read_state(booted.dir)["power"] == "on"


# --------------------------------------------------------------------------- teardown


@pytest.mark.timeout(30, method="signal")
def test_stop_nodes_leaves_no_process_or_namespace(lab: Lab) -> None:
    lab_dir = lab.nodes[0].dir.parent
    agt = lab.node("agt1")
    nodes.set_fault(agt.dir, "sleep", hang=True)
    idle = connect(lab, lab.node("srv1"))  # an open, idle connection
    hung = connect(lab, agt)
    try:
        hung.exec_command("sleep forever")
        deadline = time.monotonic() + 5
        while not any(r.get("hang") for r in nodes.read_commands(agt.dir)):
            assert time.monotonic() < deadline, "the hung command never started"
            time.sleep(0.05)
        before = lab_processes(lab_dir)
        assert any(str(nodes.NODE_SHELL) in p.argv for p in before.values())

        nodes.stop_nodes(lab.nodes, lab_id=lab.lab_id)

        assert lab_processes(lab_dir) == {}
        for pid in before:  # gone and reaped, not zombies
            assert not os.path.exists(f"/proc/{pid}")
        assert all(n.pid is None for n in lab.nodes)
        netns_left = (
            [n for n in os.listdir("/run/netns") if n.startswith(f"hl{lab.lab_id}-")]
            if os.path.isdir("/run/netns")
            else []
        )
        assert netns_left == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert f"hlbr{lab.lab_id}" not in links
        assert f"hl{lab.lab_id}v" not in links
        nodes.stop_nodes(lab.nodes, lab_id=lab.lab_id)  # idempotent
    finally:
        idle.close()
        hung.close()


@pytest.mark.timeout(30, method="signal")
def test_a_failed_start_cleans_up_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = nodes.make_client_key(tmp_path / "ssh")

    def broken_wait(*args: object, **kwargs: object) -> None:
        raise nodes.LabError("injected: nodes never came up")

    monkeypatch.setattr(nodes, "_wait_ready", broken_wait)
    with pytest.raises(nodes.LabError, match="injected"):
        nodes.start_nodes(
            tmp_path / "lab",
            SPECS,
            client_pubkey=key.with_name(key.name + ".pub"),
            known_hosts=tmp_path / "ssh" / "known_hosts",
            netns=False,
            lab_id="x",
            subnet="10.77.0",
        )
    assert lab_processes(tmp_path / "lab") == {}


@pytest.mark.root
@pytest.mark.timeout(30, method="signal")
def test_cleanup_netns_removes_a_killed_labs_leftovers(tmp_path: Path) -> None:
    if reason := netns_unavailable():
        pytest.skip(reason)
    lab_id = "t" + secrets.token_hex(3)
    key = nodes.make_client_key(tmp_path / "ssh")
    started = nodes.start_nodes(
        tmp_path / "lab",
        SPECS[:2],
        client_pubkey=key.with_name(key.name + ".pub"),
        known_hosts=tmp_path / "ssh" / "known_hosts",
        netns=True,
        lab_id=lab_id,
        subnet=free_subnet(),
    )
    try:
        # As if the lab's owner died: only the lab id is known.
        nodes.cleanup_netns(lab_id)
        assert lab_processes(tmp_path / "lab") == {}
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"hl{lab_id}-")]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert f"hlbr{lab_id}" not in links
        nodes.cleanup_netns(lab_id)  # nothing left: still fine
    finally:
        nodes.stop_nodes(started, lab_id=lab_id)


# --------------------------------------------------------------------------- scale & misc


@pytest.mark.timeout(90, method="signal")
@pytest.mark.parametrize("netns", MODES)
def test_a_hundred_nodes_start_and_stop_quickly(tmp_path: Path, netns: bool) -> None:
    specs = [NodeSpec(f"n{i:03d}", "server" if i < 3 else "agent") for i in range(100)]
    started = time.monotonic()
    with running_lab(tmp_path, specs, netns=netns) as big:
        took = time.monotonic() - started
        assert took < 30, f"100 nodes took {took:.1f} s to start"
        assert len({(n.address, n.port) for n in big.nodes}) == 100
        assert ssh(big, "n099", "hostname") == (0, "n099\n", "")
        stopping = time.monotonic()
        nodes.stop_nodes(big.nodes, lab_id=big.lab_id)
        assert time.monotonic() - stopping < 20
        assert lab_processes(tmp_path / "lab") == {}


@pytest.mark.timeout(30, method="signal")
def test_lab_nodes_round_trip_through_json(lab: Lab) -> None:
    for node in lab.nodes:
        assert LabNode.from_dict(json.loads(json.dumps(node.to_dict()))) == node
    assert all(n.pid is not None for n in lab.nodes)
    with socket.create_connection((lab.nodes[0].address, lab.nodes[0].port), timeout=2) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-OpenSSH")
