"""Small process helpers every part of the lab shares: wait, stop by PID, free ports, a Hecate daemon child."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says what and why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], object], timeout: float, what: str, log: Path | None = None,
             interval: float = 0.05) -> None:
    """Poll ``check()`` until it is truthy; raise ``LabError`` naming ``what`` (and a log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-10:])
    raise LabError(f"timed out after {timeout:.1f} s waiting for {what}{tail}")


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs (zombies count as gone); reaps it when it is our child."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def owned_by(pid: int, marker: str) -> bool:
    """True when ``pid``'s command line or environment mentions ``marker`` (guards PID reuse)."""
    for name in ("cmdline", "environ"):
        try:
            if marker.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
    return False


def kill_group(pid: int | None, marker: str | None = None, grace: float = 3.0) -> None:
    """Stop a lab process and its process group: SIGTERM, then SIGKILL after ``grace``.

    With ``marker``, a PID that no longer belongs to the lab (reused) is left alone.
    """
    if pid is None or not alive(pid) or (marker is not None and not owned_by(pid, marker)):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, f"process {pid} to exit after SIGKILL")


def start_daemon(config: Path, *, env: Mapping[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[str]:
    """``hecate daemon --config CONFIG`` (this interpreter's Hecate) as a child in its own session, its output
    piped (:func:`stop_daemon` returns it) or appended to ``log``; ``env`` is laid over this environment."""
    out = open(log, "a") if log is not None else subprocess.PIPE  # noqa: SIM115 - the child's, for its life
    try:
        return subprocess.Popen([sys.executable, "-m", "hecate", "daemon", "--config", str(config)],
                                env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_daemon(proc: subprocess.Popen[str] | None, sig: int = signal.SIGTERM, timeout: float = 60.0) -> str:
    """Send ``sig`` to a :func:`start_daemon` daemon's process group (SIGTERM: it stops cleanly, finishing a
    shutdown first), SIGKILL the group after ``timeout``; its output when piped ("" otherwise)."""
    if proc is None:
        return ""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out or ""


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``http://127.0.0.1:PORT/PATH``: the status and body (an HTTP error's too); ``OSError`` when nothing
    answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())
