"""`hecate status`'s client: only a trusted unix socket, every read capped in size and in time."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from conftest import FakeDaemon
from hecate.adapters import daemon_client

DOC = json.dumps({"host": "titan-db", "source": "daemon", "ups": []}).encode()


def test_a_status_document_is_read(fake_daemon: FakeDaemon) -> None:
    path = fake_daemon.serve("answer", DOC)
    assert daemon_client.fetch_status(path)["host"] == "titan-db"


def test_an_endless_answer_is_cut_at_the_size_cap(fake_daemon: FakeDaemon) -> None:
    path = fake_daemon.serve("endless")
    started = time.monotonic()
    with pytest.raises(daemon_client.DaemonError, match="larger than 1 MiB: refused"):
        daemon_client.fetch_status(path)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("behaviour", ["stall", "drip"])
def test_a_slow_answer_is_cut_at_the_time_cap(fake_daemon: FakeDaemon, behaviour: str) -> None:
    """The cap is on the whole exchange: a byte every 0.2 s never resets it."""
    path = fake_daemon.serve(behaviour)
    started = time.monotonic()
    with pytest.raises(daemon_client.DaemonError, match="no complete answer within 1 s"):
        daemon_client.fetch_status(path, timeout=1)
    assert 0.9 < time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("body", "status", "why"),
    [
        (b"not json", "200 OK", "not JSON"),
        (b'{"host": "x"}', "200 OK", "not a status document"),
        (b'["ups"]', "200 OK", "not a status document"),
        (b"[" * 100_000, "200 OK", "not JSON"),  # nesting deeper than the parser goes
        (DOC, "503 Service Unavailable", "answered 'HTTP/1.0 503 Service Unavailable'"),
    ],
)
def test_an_answer_that_is_not_a_status_is_an_error(fake_daemon: FakeDaemon, body: bytes, status: str,
                                                    why: str) -> None:
    path = fake_daemon.serve("answer", body, status)
    with pytest.raises(daemon_client.DaemonError, match=why):
        daemon_client.fetch_status(path)


def test_no_socket_or_a_stale_one_means_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(daemon_client.NoDaemon, match="no daemon socket at"):
        daemon_client.fetch_status(tmp_path / "absent" / "hecate.sock")
    stale = tmp_path / "hecate.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # bound, never listening: as a killed daemon leaves it
        with pytest.raises(daemon_client.NoDaemon, match="no daemon listens on"):
            daemon_client.fetch_status(stale)


def test_a_socket_others_could_have_placed_is_not_trusted(fake_daemon: FakeDaemon) -> None:
    path = fake_daemon.serve("answer", DOC)
    os.chmod(path.parent, 0o777)  # noqa: S103 - anyone could have swapped the socket
    with pytest.raises(daemon_client.DaemonError, match="not trusted"):
        daemon_client.fetch_status(path)
    os.chmod(path.parent, 0o700)
    if os.geteuid() != 0:
        pytest.skip("giving the socket to another user needs root")
    os.chown(path, 65534, -1)
    with pytest.raises(daemon_client.DaemonError, match="belongs to uid 65534: not trusted"):
        daemon_client.fetch_status(path)


def test_a_file_in_place_of_the_socket_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "hecate.sock"
    path.write_text("HTTP/1.0 200 OK\r\n\r\n{}")
    with pytest.raises(daemon_client.DaemonError, match="is not a socket"):
        daemon_client.fetch_status(path)
