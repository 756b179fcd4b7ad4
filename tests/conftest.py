"""Shared fixtures: a whole lab (real upsd, real sshd nodes, emulated API), always torn down; a fake daemon
socket; a small tmpfs to fill up or remount read-only, always unmounted; a daemon scraped by a real Prometheus."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from hecate.domain.plan import Stage
from hecate.domain.runs import RunRecord, StageRecord
from hecate.services.executor import StepOutcome
from hecate_lab import prometheus
from hecate_lab import wheelhouse as wheelhouse_mod
from hecate_lab.cluster_sim import Delays
from hecate_lab.procs import free_port, start_daemon, stop_daemon, wait_for
from hecate_lab.testbed import Lab, LabSpec
from hecate_lab.ups import LabUps, start_ups


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """1 UPS, 1 server, 2 agents; namespaces when root."""
    running = Lab.up(tmp_path / "lab", LabSpec())
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def bare_lab(tmp_path: Path) -> Iterator[Lab]:
    """Nodes and the emulated API only (1 server, 2 agents), no UPS: saves upsd's 3 s start."""
    running = Lab.up(tmp_path / "lab", LabSpec(ups=()))
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[LabUps]:
    """One lab UPS (real upsd + dummy-ups) named pyrphoros, on mains."""
    lab_ups = start_ups(tmp_path, "pyrphoros")
    try:
        yield lab_ups
    finally:
        lab_ups.stop()


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Wheels of this checkout's product and its dependencies (built once, cached by content), for
    offline installs: ``pip install --no-index --find-links <wheelhouse> hecate``."""
    return wheelhouse_mod.build()


@contextlib.contextmanager
def scraped_daemon(root: Path, ups: LabUps, rule_files: list[Path], **config: Any) -> Iterator[
        tuple[int, prometheus.Prometheus]]:
    """A Hecate daemon polling ``ups`` (``config`` laid over a minimal hecate.yaml in ``root``) and a real
    Prometheus scraping it every second with ``rule_files``; its metrics port and the server, once a scrape
    succeeded. Both are stopped on the way out, also when the test fails."""
    port = free_port()
    path = root / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "host_name": "titan-db", "state_dir": str(root / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "metrics": {"listen": f"127.0.0.1:{port}", "socket": str(root / "run" / "hecate.sock")}, **config}))
    daemon = start_daemon(path, log=root / "daemon.log")
    server = None
    try:
        server = prometheus.start(root / "prometheus", [f"127.0.0.1:{port}"], rule_files=rule_files)
        wait_for(server.targets_up, 20, "prometheus to scrape the daemon", root / "daemon.log")
        yield port, server
    finally:
        if server is not None:
            server.stop()
        stop_daemon(daemon, timeout=10)


def coordinator_lab_spec(wheelhouse: Path) -> LabSpec:
    """The smallest lab with the coordinator as a machine: 1 server, 1 agent, titan-db; quick simulator delays."""
    return LabSpec(servers=1, agents=1, machines=True, coordinator=True, wheelhouse=wheelhouse,
                   delays=Delays(api=0.2, node=0.1, pod=0.1))


@pytest.fixture(scope="session")
def update_docs() -> ModuleType:
    """scripts/update-docs.py (a script, not a module of a package), loaded once."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "update-docs.py"
    spec = importlib.util.spec_from_file_location("update_docs", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeDaemon:
    """Something on a unix socket that answers ``hecate status`` badly (real sockets, a thread per client).

    ``serve(behaviour)`` listens on ``path`` (its directory 0700) and treats every client so:
    ``endless`` (a body that never ends), ``stall`` (never a word), ``drip`` (one byte every
    0.2 s: each read is quick, the answer never complete), or ``answer`` (a complete HTTP
    answer: ``body`` and ``status``).
    """

    HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.listener: socket.socket | None = None

    def serve(self, behaviour: str, body: bytes = b"", status: str = "200 OK") -> Path:
        def respond(conn: socket.socket) -> None:
            if behaviour == "endless":
                conn.sendall(self.HEADERS + b'{"ups": [')
                while not self.stop.is_set():
                    conn.sendall(b'"x",' * 16384)
            elif behaviour == "stall":
                self.stop.wait()
            elif behaviour == "drip":
                for byte in self.HEADERS + b'{"ups": []}' * 1000:
                    if self.stop.wait(0.2):
                        return
                    conn.sendall(bytes([byte]))
            else:
                conn.sendall(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

        def handle(conn: socket.socket) -> None:
            with conn, contextlib.suppress(OSError):
                conn.settimeout(10)
                conn.recv(4096)  # the request
                respond(conn)

        def accept(listener: socket.socket) -> None:
            while not self.stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                thread = threading.Thread(target=handle, args=(conn,), daemon=True)
                self.threads.append(thread)
                thread.start()

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        self.listener.settimeout(0.1)
        thread = threading.Thread(target=accept, args=(self.listener,), daemon=True)
        self.threads.append(thread)
        thread.start()
        return self.path

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        if self.listener is not None:
            self.listener.close()


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    """A :class:`FakeDaemon` on ``tmp_path/run/hecate.sock``, stopped (every thread joined) after the test."""
    fake = FakeDaemon(tmp_path / "run" / "hecate.sock")
    try:
        yield fake
    finally:
        fake.close()


class SmallFs:
    """A real, small tmpfs: ``fill()`` it (or run :meth:`fill_argv` as a command), ``read_only()`` it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill_argv(self) -> list[str]:
        """A command that uses up every byte and then every inode (no file can be created or grown)."""
        return ["sh", "-c", f"dd if=/dev/zero of={self.path}/.fill bs=4k 2>/dev/null; i=0; "
                            f"while touch {self.path}/.fill-$i 2>/dev/null; do i=$((i+1)); done; exit 0"]

    def fill(self) -> None:
        subprocess.run(self.fill_argv(), check=True, capture_output=True, timeout=30)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 512 KiB tmpfs with 64 inodes (skipped where tmpfs cannot be mounted); unmounted after the test."""
    path = tmp_path / "smallfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,nr_inodes=64,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up or make read-only (needs root and a kernel that allows it): "
                    f"{mounted.stderr.strip()}")
    try:
        yield SmallFs(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # still busy: detach it


class Quiet:
    """A run's progress that shows nothing (the executor's ``Progress``)."""

    def stage_started(self, stage: Stage, index: int, total: int) -> None: ...
    def step_finished(self, outcome: StepOutcome) -> None: ...
    def stage_finished(self, record: StageRecord) -> None: ...
    def run_finished(self, record: RunRecord) -> None: ...
