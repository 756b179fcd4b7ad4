"""A node found unreachable is marked down for the rest of the run: later steps re-probe it once, briefly.

A real SshPool on loopback: a port nothing listens on refuses at once (unreachable), and a
socket that accepts but never speaks SSH answers the probe (so the node is tried again).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import paramiko
import pytest

from hecate.adapters import ssh
from hecate.domain.config import Node, NodeRole, Ssh
from hecate.domain.plan import Action, Step
from hecate.services.executor import StepFailed
from hecate.services.remote import Remote

pytestmark = pytest.mark.timeout(30)

STOP = Step(Action.stop_service, "n1", timeout_s=5)
KILLALL = Step(Action.killall, "n1", timeout_s=5)
POWEROFF = Step(Action.poweroff, "n1", timeout_s=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ssh, Node]:
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key))
    key.chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    config = Ssh(user="root", key_file=key, known_hosts=tmp_path / "known_hosts", connect_timeout_s=0.5,
                 command_timeout_s=1)
    return config, Node(name="n1", address="127.0.0.1", role=NodeRole.agent, ssh_port=free_port())


class Counting(ssh.SshPool):
    """The real pool, counting the commands the run tried to send (each a full connection attempt)."""

    tried = 0

    async def run(self, node: str, command: str, *, timeout: float | None = None,
                  sudo: bool | None = None) -> ssh.CommandResult:
        self.tried += 1
        return await super().run(node, command, timeout=timeout, sudo=sudo)


async def fails(remote: Remote, step: Step | None) -> StepFailed:
    with pytest.raises(StepFailed) as info:
        await remote.checked("n1", "true", 1, step=step)
    return info.value


def test_later_steps_reprobe_a_down_node_once_instead_of_connecting_again(setup: tuple[Ssh, Node]) -> None:
    config, node = setup

    async def scenario() -> None:
        async with Counting(config, [node]) as pool:
            remote = Remote(pool, None, probe_timeout=0.5)  # type: ignore[arg-type]  # no Kubernetes here
            first = await fails(remote, STOP)
            assert first.transient  # the step's own retries still get the full attempts
            assert "n1" in remote.down
            assert (await fails(remote, STOP)).transient
            assert pool.tried == 2
            # Later steps: one short probe, no connection attempt, not retried.
            started = time.monotonic()
            later = await fails(remote, KILLALL)
            assert time.monotonic() - started < 0.5
            assert pool.tried == 2
            assert not later.transient
            assert str(later).startswith("n1 is down: not tried again (its stop-service step found it unreachable")
            assert "re-probe: 127.0.0.1:" in str(later)
            # Without a step (startup waits for booting nodes on purpose): always the full attempt.
            await fails(remote, None)
            assert pool.tried == 3

            # The node answers again (something accepts on its port): the mark goes, the step is tried for real.
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", node.ssh_port))
                listener.listen()
                again = await fails(remote, POWEROFF)  # accepted, but it never speaks SSH
                assert pool.tried == 4
                assert "is down" not in str(again)  # (how a silent handshake is classified is the pool's business)

    asyncio.run(scenario())


def test_an_answer_clears_the_mark(setup: tuple[Ssh, Node]) -> None:
    config, node = setup

    async def scenario() -> None:
        async with Counting(config, [node]) as pool:
            remote = Remote(pool, None, probe_timeout=0.5)  # type: ignore[arg-type]
            await fails(remote, STOP)
            remote._note("n1", STOP, None)  # what a command that got an answer does
            assert remote.down == {}
            await fails(remote, KILLALL)  # so a later step connects for real
            assert pool.tried == 2

    asyncio.run(scenario())
