"""The SSH adapter against the lab's real sshd nodes: reuse, timeouts, host keys, lost nodes.

Each test gets its own lab (1 server, 2 agents, no UPS: the adapter does not need one;
network namespaces when root). Commands are checked from the nodes' own command logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import paramiko
import pytest

from hecate.adapters import config
from hecate.adapters.ssh import (
    SshAuthError,
    SshDisconnected,
    SshError,
    SshHostKeyError,
    SshPool,
    SshTimeout,
    SshUnreachable,
    is_connection_lost,
)
from hecate.domain.config import HecateConfig
from hecate_lab import node_shell, nodes
from hecate_lab.procs import wait_for
from hecate_lab.testbed import Lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def lab(bare_lab: Lab) -> Lab:
    """Nodes only (titan-s1, titan-a1, titan-a2); always torn down."""
    return bare_lab


def load(lab: Lab) -> HecateConfig:
    return config.load(lab.config_path, {})


def make_pool(lab: Lab, **ssh: object) -> SshPool:
    """A pool on the lab's config, with ``ssh`` settings overridden."""
    cfg = load(lab)
    return SshPool(cfg.ssh.model_copy(update=ssh), cfg.cluster.nodes)


def logged(lab: Lab, name: str) -> list[str]:
    return [c["cmd"] for c in nodes.read_commands(lab.node(name).dir)]


def where(lab: Lab, name: str) -> str:
    """How error messages name a node's address (the port only when it is not 22)."""
    node = lab.node(name)
    return node.address if node.port == 22 else f"{node.address}:{node.port}"


def rewrite_known_hosts(lab: Lab, name: str, key_of: str | None) -> Path:
    """Point ``name``'s known_hosts entry at ``key_of``'s host key, or drop it (None)."""
    path = lab.ssh_dir / "known_hosts"
    entries = {line.split()[0]: line.split()[1:] for line in path.read_text().splitlines() if line.strip()}
    host = lab.node(name).known_hosts_name
    if key_of is None:
        del entries[host]
    else:
        entries[host] = entries[lab.node(key_of).known_hosts_name]
    path.write_text("".join(f"{h} {' '.join(rest)}\n" for h, rest in entries.items()))
    return path


async def test_run_returns_output_and_reuses_the_connection(lab: Lab) -> None:
    async with make_pool(lab) as pool:
        assert (pool.commands_sent, pool.connects) == (0, 0)
        first = await pool.run("titan-a1", "hostname")
        assert (first.node, first.command, first.exit_code) == ("titan-a1", "hostname", 0)
        assert (first.stdout, first.stderr) == ("titan-a1\n", "")
        assert 0 < first.duration_s < 5
        second = await pool.run("titan-a1", "systemctl is-active k3s-agent")
        assert (second.exit_code, second.stdout) == (0, "active\n")
        assert (pool.commands_sent, pool.connects) == (2, 1)  # one connection, two commands
        assert pool.connected == ["titan-a1"]
    assert logged(lab, "titan-a1") == ["hostname", "systemctl is-active k3s-agent"]
    assert [c["rc"] for c in nodes.read_commands(lab.node("titan-a1").dir)] == [0, 0]
    assert logged(lab, "titan-s1") == []
    assert pool.connected == []


async def test_non_zero_exit_codes_are_results_not_errors(lab: Lab) -> None:
    nodes.set_fault(lab.node("titan-a2").dir, "systemctl stop k3s-agent", exit_code=4)
    async with make_pool(lab) as pool:
        failed = await pool.run("titan-a2", "systemctl stop k3s-agent")
        assert failed.exit_code == 4
        assert "injected failure" in failed.stderr
        assert not failed.ok
        missing = await pool.run("titan-a2", "no-such-command")
        assert (missing.exit_code, missing.stderr) == (127, "bash: no-such-command: command not found\n")
    assert nodes.read_state(lab.node("titan-a2").dir)["services"]["k3s-agent"] == "active"


async def test_sudo_prefixes_sudo_n_and_the_command_still_works(lab: Lab) -> None:
    async with make_pool(lab) as pool:  # ssh.sudo is false in the lab config
        assert (await pool.run("titan-s1", "systemctl stop k3s", sudo=True)).exit_code == 0
        await pool.run("titan-s1", "hostname")
    assert logged(lab, "titan-s1") == ["sudo -n systemctl stop k3s", "hostname"]
    assert nodes.read_state(lab.node("titan-s1").dir)["services"]["k3s"] == "inactive"

    async with make_pool(lab, sudo=True) as pool:  # ssh.sudo: true is the default for every command
        assert (await pool.run("titan-s1", "systemctl start k3s")).exit_code == 0
        await pool.run("titan-s1", "hostname", sudo=False)
    assert logged(lab, "titan-s1")[2:] == ["sudo -n systemctl start k3s", "hostname"]
    assert nodes.read_state(lab.node("titan-s1").dir)["services"]["k3s"] == "active"


async def test_a_host_key_mismatch_is_refused(lab: Lab) -> None:
    known_hosts = rewrite_known_hosts(lab, "titan-a1", key_of="titan-a2")
    async with make_pool(lab) as pool:
        with pytest.raises(SshHostKeyError) as caught:
            await pool.run("titan-a1", "systemctl stop k3s-agent")
        err = caught.value
        assert f"host key for titan-a1 ({where(lab, 'titan-a1')}) does not match known_hosts {known_hosts}" in str(err)
        assert (err.node, err.transient) == ("titan-a1", False)
        assert isinstance(err.__cause__, paramiko.BadHostKeyException)
        assert (pool.commands_sent, pool.connects) == (0, 0)
        assert (await pool.run("titan-a2", "hostname")).stdout == "titan-a2\n"  # the others still work
    assert logged(lab, "titan-a1") == []


async def test_a_host_missing_from_known_hosts_is_refused(lab: Lab) -> None:
    known_hosts = rewrite_known_hosts(lab, "titan-s1", key_of=None)
    async with make_pool(lab) as pool:
        with pytest.raises(SshHostKeyError) as caught:
            await pool.run("titan-s1", "hostname")
        message = str(caught.value)
        assert f"host key for titan-s1 ({where(lab, 'titan-s1')}) is not in known_hosts {known_hosts}" in message
        assert not caught.value.transient
        errors = await pool.connect_all()
        assert isinstance(errors["titan-s1"], SshHostKeyError)
        assert (errors["titan-a1"], errors["titan-a2"]) == (None, None)
    assert logged(lab, "titan-s1") == []
    # known_hosts was never written to (no auto-add)
    assert lab.node("titan-s1").known_hosts_name not in known_hosts.read_text().split()


async def test_a_refused_key_is_an_auth_error(lab: Lab, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(stranger))
    async with make_pool(lab, key_file=stranger) as pool:
        with pytest.raises(SshAuthError) as caught:
            await pool.run("titan-a1", "hostname")
        assert not caught.value.transient
        assert str(stranger) in str(caught.value)
    async with make_pool(lab, key_file=tmp_path / "absent") as pool:
        with pytest.raises(SshAuthError, match="cannot load SSH key"):
            await pool.run("titan-a1", "hostname")
    assert logged(lab, "titan-a1") == []


async def test_a_hanging_command_is_bounded_and_the_pool_goes_on(lab: Lab) -> None:
    nodes.set_fault(lab.node("titan-s1").dir, "systemctl stop k3s", hang=True)
    async with make_pool(lab, command_timeout_s=1.0) as pool:
        await pool.run("titan-s1", "hostname")  # connected before the clock starts
        t0 = time.monotonic()
        with pytest.raises(SshTimeout) as caught:
            await pool.run("titan-s1", "systemctl stop k3s", timeout=1.5)
        elapsed = time.monotonic() - t0
        assert 1.5 <= elapsed < 2.5, elapsed
        assert (caught.value.node, caught.value.transient) == ("titan-s1", False)
        assert "within 1.5s" in str(caught.value)

        t0 = time.monotonic()  # no timeout given: ssh.command_timeout_s (1 s here)
        with pytest.raises(SshTimeout):
            await pool.run("titan-s1", "sudo systemctl stop k3s")
        assert 1.0 <= time.monotonic() - t0 < 2.0

        # the same connection still serves the node, and the other nodes are untouched
        assert (await pool.run("titan-s1", "systemctl is-active k3s")).stdout == "active\n"
        assert (await pool.run("titan-a1", "hostname")).exit_code == 0
        assert pool.connects == 2
    hung = [c for c in nodes.read_commands(lab.node("titan-s1").dir) if c.get("hang")]
    assert [c["cmd"] for c in hung] == ["systemctl stop k3s", "sudo systemctl stop k3s"]


async def test_cancelling_a_command_frees_its_slot(lab: Lab) -> None:
    node = lab.node("titan-a2")
    nodes.set_fault(node.dir, "k3s-killall.sh", hang=True)
    async with make_pool(lab) as pool:
        task = asyncio.create_task(pool.run("titan-a2", "k3s-killall.sh", timeout=60))
        await asyncio.to_thread(wait_for, lambda: any(c.get("hang") for c in nodes.read_commands(node.dir)),
                                10, "the hang reached the node")
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        assert (await pool.run("titan-a2", "hostname")).exit_code == 0
        assert pool.connects == 1


async def test_an_unreachable_node_fails_within_the_connect_timeout(lab: Lab) -> None:
    gone = lab.node("titan-a1")
    nodes.stop_nodes([gone], lab_id=None)  # its sshd (and, with namespaces, its network) is gone
    async with make_pool(lab, connect_timeout_s=2.0) as pool:
        t0 = time.monotonic()
        with pytest.raises(SshUnreachable) as caught:
            await pool.run("titan-a1", "systemctl stop k3s-agent")
        assert time.monotonic() - t0 < 2.0 + 1.0
        assert (caught.value.node, caught.value.transient) == ("titan-a1", True)
        assert isinstance(caught.value.__cause__, OSError)
        assert pool.commands_sent == 0
        errors = await pool.connect_all()
        assert isinstance(errors["titan-a1"], SshUnreachable)
        assert (errors["titan-s1"], errors["titan-a2"]) == (None, None)
        assert pool.connects == 2


async def test_a_connection_that_drops_mid_command_is_disconnected(lab: Lab) -> None:
    node = lab.node("titan-a2")
    nodes.set_fault(node.dir, "systemctl stop k3s-agent", hang=True)
    async with make_pool(lab, connect_timeout_s=2.0) as pool:
        task = asyncio.create_task(pool.run("titan-a2", "systemctl stop k3s-agent", timeout=30))
        await asyncio.to_thread(wait_for, lambda: any(c.get("hang") for c in nodes.read_commands(node.dir)),
                                10, "the hang reached the node")
        t0 = time.monotonic()
        await asyncio.to_thread(nodes.stop_nodes, [node], lab_id=None)  # sshd and its sessions killed
        with pytest.raises(SshDisconnected) as caught:
            await task
        assert time.monotonic() - t0 < 3.0
        assert caught.value.transient
        assert is_connection_lost(caught.value)
        assert pool.connected == []
        with pytest.raises(SshUnreachable):  # the next command tries a new connection, which fails
            await pool.run("titan-a2", "hostname")
        assert pool.commands_sent == 1


async def test_poweroff_answers_then_the_node_is_gone_until_powered_on(lab: Lab) -> None:
    """The lab's node answers `systemctl poweroff` (exit 0), then halts 0.3 s after its shell exits.

    As under systemd, its sshd and sessions stop first (our connection closes), then it
    leaves the network. The next command finds the connection closed, fails to reconnect
    (the link is down: connect_timeout_s): SshUnreachable. After power_on the pool
    reconnects by itself.
    """
    node = lab.node("titan-a1")
    async with make_pool(lab, connect_timeout_s=2.0) as pool:
        assert (await pool.run("titan-a1", "systemctl stop k3s-agent", sudo=True)).exit_code == 0
        t0 = time.monotonic()
        result = await pool.run("titan-a1", "systemctl poweroff", sudo=True)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
        assert time.monotonic() - t0 < 1.0
        assert nodes.read_state(node.dir)["power"] == "off"
        await asyncio.sleep(0.6)  # the node leaves the network 0.3 s after its reply

        t0 = time.monotonic()
        with pytest.raises(SshUnreachable):
            await pool.run("titan-a1", "hostname")
        assert time.monotonic() - t0 < 2 * 2.0 + 1.0  # stale session open + a fresh connect
        assert (await pool.run("titan-s1", "hostname")).exit_code == 0  # the others still work

        booted = await asyncio.to_thread(nodes.power_on, node)
        lab.nodes[lab.nodes.index(node)] = booted
        back = await pool.run("titan-a1", "systemctl is-active k3s-agent")
        assert (back.exit_code, back.stdout) == (0, "active\n")
        assert pool.connects == 3  # titan-a1 twice, titan-s1 once
    assert logged(lab, "titan-a1") == [
        "sudo -n systemctl stop k3s-agent", "sudo -n systemctl poweroff", "systemctl is-active k3s-agent",
    ]


async def test_a_poweroff_reply_too_late_ends_with_a_closed_connection_not_silence(lab: Lab) -> None:
    """A node whose sshd does not get to send the poweroff's exit status before the node halts.

    At 100 nodes on 2 cores some replies were that late. The lab used to take the link down
    before stopping sshd, so such a reply was lost in silence and the step waited out its
    command timeout (one node held the whole power-off wave 30 s). Halting as systemd does --
    sessions and sshd stop, then the network goes -- the connection closes instead:
    SshDisconnected at once, which the power-off step takes as off.
    """
    node = lab.node("titan-a1")
    nodes.set_fault(node.dir, "systemctl poweroff", delay_s=1.0)
    async with make_pool(lab, connect_timeout_s=2.0, command_timeout_s=15.0) as pool:
        assert (await pool.run("titan-a1", "hostname")).exit_code == 0
        task = asyncio.create_task(pool.run("titan-a1", "systemctl poweroff", sudo=True))
        shells: list[int] = []

        def poweroff_shell() -> bool:
            shells[:] = [pid for pid, proc in node_shell.process_table().items()
                         if str(nodes.NODE_SHELL) in proc.argv and str(node.dir) in proc.argv and proc.state != "Z"]
            return bool(shells)

        await asyncio.to_thread(wait_for, poweroff_shell, 10, "the poweroff's node shell")
        # While the shell sleeps its 1 s, freeze the sshd processes above it: its reply cannot go out.
        table = node_shell.process_table()
        frozen, pid = [], table[shells[0]].ppid
        while pid in table and "sshd" in " ".join(table[pid].argv):
            frozen.append(pid)
            pid = table[pid].ppid
        assert frozen, "the node shell runs under the node's sshd"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(SshDisconnected):
                await task
            elapsed = time.monotonic() - t0
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert elapsed < 5.0, elapsed  # the shell's 1 s, 0.3 s, sshd's stop (SIGKILL after 0.5 s)
    assert nodes.read_state(node.dir)["power"] == "off"
    assert logged(lab, "titan-a1")[-1] == "sudo -n systemctl poweroff"


async def test_parallel_commands_share_one_connection_per_node(lab: Lab) -> None:
    for node in lab.nodes:
        nodes.set_fault(node.dir, "*", delay_s=0.5)  # every command takes 0.5 s
    names = [n.name for n in lab.nodes]
    async with make_pool(lab) as pool:
        t0 = time.monotonic()
        targets = [names[i % 3] for i in range(20)]
        results = await asyncio.gather(*(pool.run(name, "hostname") for name in targets))
        elapsed = time.monotonic() - t0
        assert [(r.node, r.exit_code, r.stdout) for r in results] == [(n, 0, f"{n}\n") for n in targets]
        assert (pool.connects, pool.commands_sent) == (3, 20)
        assert elapsed < 5.0, elapsed  # one after another would take 10 s
    assert sum(len(logged(lab, n)) for n in names) == 20


async def test_connect_all_opens_each_connection_once(lab: Lab) -> None:
    async with make_pool(lab) as pool:
        assert await pool.connect_all() == {"titan-s1": None, "titan-a1": None, "titan-a2": None}
        assert pool.connects == 3
        await asyncio.gather(*(pool.run(n.name, "true") for n in lab.nodes))
        assert (pool.connects, pool.commands_sent) == (3, 3)


async def test_unknown_nodes_and_closed_pools(lab: Lab) -> None:
    pool = make_pool(lab)
    with pytest.raises(SshError, match="unknown node 'titan-x9'"):
        await pool.run("titan-x9", "hostname")
    with pytest.raises(SshError, match="unknown node"):
        await pool.connect_all(["titan-x9"])
    assert (pool.commands_sent, pool.connects) == (0, 0)  # nothing was sent anywhere
    await pool.close()
    await pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run("titan-a1", "hostname")
    assert all(logged(lab, n.name) == [] for n in lab.nodes)
