"""systemd: ``Type=notify`` readiness and watchdog keep-alives (sd_notify), and ``systemctl`` for self-update.

The notify protocol is one datagram to the unix socket named in ``$NOTIFY_SOCKET`` (a leading
``@`` means the abstract namespace); a dozen lines, so no dependency. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op that returns False.

:class:`Systemctl` is the service manager ``hecate self-update`` restarts the daemon with; its
argv is configurable (``update.systemctl``), so a test can aim it elsewhere than this host's own
systemd.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence

from hecate.domain.update import UnitStatus, parse_unit_status


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``; True if sent."""
    path = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives (half of ``$WATCHDOG_USEC``), or None when not watched."""
    env = environ if environ is not None else os.environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


class Systemctl:
    """Units through ``systemctl`` (``argv``: the command, e.g. ``["systemctl"]``)."""

    def __init__(self, argv: Sequence[str], timeout_s: float = 30.0) -> None:
        self.argv = list(argv)
        self.timeout_s = timeout_s

    def status(self, unit: str) -> UnitStatus:
        """ActiveState, MainPID and NRestarts of ``unit`` (``unknown`` when systemctl cannot say)."""
        try:
            proc = subprocess.run([*self.argv, "show", "-p", "ActiveState", "-p", "MainPID", "-p", "NRestarts",
                                   "--", unit], capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return UnitStatus("unknown")
        return parse_unit_status(proc.stdout) if proc.returncode == 0 else UnitStatus("unknown")

    def restart(self, unit: str, timeout_s: float) -> str | None:
        """Restart ``unit`` and wait (a ``Type=notify`` unit: until ``READY=1``); None, or why it failed."""
        try:
            proc = subprocess.run([*self.argv, "restart", "--", unit], capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return f"not ready within {timeout_s:g} s"
        except OSError as err:
            return str(err)
        if proc.returncode != 0:
            return (proc.stderr.strip() or proc.stdout.strip() or f"systemctl exit {proc.returncode}")[-400:]
        return None
