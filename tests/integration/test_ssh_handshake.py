"""A node that accepts TCP but whose sshd never finishes the handshake (booting, overloaded).

Real sockets and the real SSH adapter, no lab: a plain socket server in the test plays the
node. Either it never says a word, or it sends an SSH banner and then nothing. paramiko words
these two ways ("Error reading SSH protocol banner", or "No existing session" when its own
negotiation timer fires first -- which of the two for the silent server is a race), and both
must be transient: retried by a shutdown's executor, waited for by a startup.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hecate.adapters.ssh import SshPool, SshUnreachable
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig
from hecate.domain.journal import StepStatus
from hecate.domain.params import StartServiceParams, StopServiceParams
from hecate.domain.plan import Action, Plan, Stage, Step
from hecate.domain.runs import RunRecord, StageRecord
from hecate.services import remote, shutdown, startup
from hecate.services.executor import Executor, StepFailed, StepOutcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CONNECT_TIMEOUT_S = 0.5


class StalledNode:
    """A TCP listener on loopback that accepts every connection and never completes SSH."""

    def __init__(self, banner: bool) -> None:
        self.banner = banner
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)  # accept() wakes up to notice close()
        self._closed = threading.Event()
        self.port: int = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            if self.banner:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture(params=["silent", "banner-then-silent"])
def node(request: pytest.FixtureRequest) -> Iterator[StalledNode]:
    stalled = StalledNode(banner=request.param != "silent")
    try:
        yield stalled
    finally:
        stalled.close()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def config(tmp_path: Path, key_file: Path, port: int) -> HecateConfig:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    return HecateConfig.model_validate({
        "host_name": "test", "state_dir": str(tmp_path / "state"),
        "cluster": {"kubeconfig": str(tmp_path / "no-kubeconfig"),
                    "nodes": [{"name": "n1", "address": "127.0.0.1", "ssh_port": port, "role": "agent"}]},
        "ssh": {"key_file": str(key_file), "known_hosts": str(known_hosts), "connect_timeout_s": CONNECT_TIMEOUT_S},
    })


async def test_a_stalled_handshake_is_unreachable_and_transient(node: StalledNode, tmp_path: Path,
                                                                key_file: Path) -> None:
    cfg = config(tmp_path, key_file, node.port)
    for _ in range(3):  # for the silent node, paramiko's wording is a race: each attempt must say transient
        started = time.monotonic()
        async with SshPool(cfg.ssh, cfg.cluster.nodes) as pool:
            with pytest.raises(SshUnreachable) as caught:
                await pool.run("n1", "true")
        elapsed = time.monotonic() - started
        assert caught.value.transient
        assert "the SSH handshake did not complete within 0.5s" in str(caught.value)
        assert elapsed < 4 * CONNECT_TIMEOUT_S, f"a stalled handshake took {elapsed:.1f}s"
    assert node.accepted == 3


class Recorded:
    def __init__(self) -> None:
        self.steps: list[StepOutcome] = []

    def stage_started(self, stage: Stage, index: int, total: int) -> None: ...
    def step_finished(self, outcome: StepOutcome) -> None:
        self.steps.append(outcome)
    def stage_finished(self, record: StageRecord) -> None: ...
    def run_finished(self, record: RunRecord) -> None: ...


async def test_a_shutdown_retries_a_stalled_node(node: StalledNode, tmp_path: Path, key_file: Path) -> None:
    cfg = config(tmp_path, key_file, node.port)
    step = Step(Action.stop_service, "n1", timeout_s=20, retries=2,
                params=StopServiceParams("k3s-agent", command_timeout_s=5))
    plan = Plan("shutdown", (Stage("stop-agents", (step,), parallelism=1, deadline_s=30),))
    progress = Recorded()
    async with shutdown.capabilities(cfg, plan) as caps:
        record = await Executor(StateStore(cfg.state_dir), caps.actions, progress).run(plan, {"source": "test"})
    [outcome] = progress.steps
    assert outcome.status is StepStatus.failed
    assert outcome.attempts == 3  # the first try and both retries
    assert "the SSH handshake did not complete" in outcome.detail
    assert node.accepted >= 3  # every attempt reconnected (plus the background pre-connect)
    assert record.stages[0].name == "stop-agents"


async def test_a_startup_waits_for_a_stalled_node_until_its_boot_timeout(node: StalledNode, tmp_path: Path,
                                                                          key_file: Path) -> None:
    cfg = config(tmp_path, key_file, node.port)
    step = Step(Action.start_service, "n1", timeout_s=20,
                params=StartServiceParams("k3s-agent", boot_timeout_s=2.0, command_timeout_s=5))
    started = time.monotonic()
    async with remote.connected(cfg, 1, preconnect=False) as conn:
        with pytest.raises(StepFailed) as caught:
            await startup.actions(cfg, conn, since=datetime.now(UTC))[Action.start_service](step)
    elapsed = time.monotonic() - started
    assert "(node not reachable within 2 s)" in str(caught.value)
    assert elapsed >= 2.0  # waited for the node the whole boot timeout, not failed at the first try
    assert node.accepted >= 2
