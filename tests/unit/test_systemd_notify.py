"""sd_notify over a real unix datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hecate.adapters import systemd


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_reaches_the_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"hecate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name if abstract else str(tmp_path / "notify"))
        sock.settimeout(2)
        env = {"NOTIFY_SOCKET": "@" + name if abstract else str(tmp_path / "notify")}
        assert systemd.notify("READY=1\nSTATUS=ok", env) is True
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert systemd.notify("READY=1", {}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False


def test_watchdog_interval() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "bogus"}) is None
    assert systemd.watchdog_interval({}) is None
