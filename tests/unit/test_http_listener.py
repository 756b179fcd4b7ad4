"""The HTTP server binds in the background: a taken port is retried, the unix socket is root's, clients are bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from hecate.adapters import http
from hecate.domain.config import Metrics
from hecate_lab.procs import free_port


async def until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def squat() -> socket.socket:
    """A port held by someone else: bound and listening, never answering."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def test_a_taken_port_is_retried_in_the_background_and_taken_once_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    squatter = squat()
    port = squatter.getsockname()[1]
    config = Metrics(listen=f"127.0.0.1:{port}", socket=tmp_path / "run" / "hecate.sock")
    server = http.Server(dict, lambda: True, config, retry_first_s=0.02, retry_max_s=0.1)
    caplog.set_level(logging.INFO, "hecate.adapters.http")
    try:
        await server.start()  # returns at once, port or not
        await until(lambda: server.unix.listening and server.tcp.bind_failures >= 4, 5, "binds to be retried")
        assert not server.tcp.listening
        assert server.tcp.error == "address already in use (EADDRINUSE)"
        assert server.not_ready() == [f"not listening on 127.0.0.1:{port} (tcp): address already in use "
                                      "(EADDRINUSE); retrying"]
        squatter.close()
        await until(lambda: server.tcp.listening, 5, "the freed port to be bound")
        assert server.not_ready() == []
        assert await asyncio.to_thread(readyz, port) == (200, "ready\n")
        assert server.tcp.as_dict()["error"] is None
    finally:
        squatter.close()
        await server.stop()
    failures = [r for r in caplog.records if "cannot listen on" in r.getMessage()]
    assert len(failures) == 1  # once per change of state, not once per retry
    assert failures[0].levelno == logging.ERROR
    assert any(f"now listening on 127.0.0.1:{port} (tcp), after" in r.getMessage() for r in caplog.records)
    assert not config.socket.exists()


async def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    squatter = squat()
    port = squatter.getsockname()[1]
    config = Metrics(listen=f"127.0.0.1:{port}", socket=tmp_path / "hecate.sock")
    server = http.Server(dict, lambda: False, config, retry_first_s=0.02, retry_max_s=0.1)
    try:
        await server.start()
        await until(lambda: server.tcp.bind_failures, 5, "a failed bind")
        squatter.close()
        await until(lambda: server.tcp.listening, 5, "the freed port to be bound")
        assert await asyncio.to_thread(readyz, port) == (503, "not ready: not every UPS has been polled yet\n")
    finally:
        squatter.close()
        await server.stop()


def test_the_socket_is_root_only_and_its_directory_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "run" / "hecate" / "hecate.sock"
    with http.bind_unix(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_uid == os.geteuid()


def test_a_stale_socket_is_replaced_a_live_one_or_a_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "hecate.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # left by a killed daemon: nobody accepts
        with http.bind_unix(path) as sock:
            assert sock.getsockname() == str(path)
    with http.bind_unix(path), pytest.raises(OSError, match="another process serves this socket"):
        http.bind_unix(path)
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket: not touching it"):
        http.bind_unix(path)
    assert path.read_text() == "not a socket"


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # noqa: S103 - what the test is about
    with pytest.raises(OSError, match="writable by nobody else"):
        http.bind_unix(shared / "hecate.sock")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # not changed behind the admin's back


async def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    """A flood of idle clients cannot use up the daemon's descriptors (the monitor and SSH need them)."""
    config = Metrics(listen=f"127.0.0.1:{free_port()}", socket=tmp_path / "hecate.sock")
    server = http.Server(dict, lambda: True, config, max_connections=2)
    held: list[socket.socket] = []

    def connections() -> int:
        runner = server._runners[1]  # the unix socket's
        assert runner.server is not None
        return len(runner.server.connections)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(str(config.socket))
        return sock

    def request(sock: socket.socket) -> bytes:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return sock.recv(4096)

    try:
        await server.start()
        await until(lambda: server.unix.listening, 5, "the socket")
        for _ in range(2):
            held.append(await asyncio.to_thread(connect))
        await until(lambda: connections() == 2, 5, "two connections")
        extra = await asyncio.to_thread(connect)
        held.append(extra)
        assert await asyncio.to_thread(extra.recv, 4096) == b""  # closed without an answer
        held[0].close()
        await until(lambda: connections() == 1, 5, "one connection to go")
        held.append(await asyncio.to_thread(connect))
        answer = await asyncio.to_thread(request, held[-1])
        assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        await server.stop()


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    config = Metrics(listen=f"127.0.0.1:{free_port()}", socket=tmp_path / "hecate.sock")
    server = http.Server(dict, lambda: True, config, idle_timeout_s=0.3)
    try:
        await server.start()
        await until(lambda: server.unix.listening, 5, "the socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.settimeout(5)
            idle.connect(str(config.socket))
            started = time.monotonic()
            assert await asyncio.to_thread(idle.recv, 4096) == b""
            assert time.monotonic() - started < 2
    finally:
        await server.stop()
