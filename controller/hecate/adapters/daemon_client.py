"""Ask a running ``hecate daemon`` for its status over its unix socket (stdlib only: ``hecate status`` must start fast).

Only the root-only socket (``metrics.socket``) is asked, never a TCP port: any local user
can bind a free port and answer there. The socket is trusted only when it and its
directory belong to root (or to the user asking) and nobody else can write to the
directory. Every read is capped in size and in time, so a wedged daemon, or whatever else
answers, costs at most a few seconds and a megabyte.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

MAX_RESPONSE_BYTES = 1 << 20
"""The largest answer read (the status document is a few kilobytes)."""
TIMEOUT_S = 3.0
"""The whole exchange (connect, ask, read to the end) must fit in this time."""
REQUEST = b"GET /v1/status HTTP/1.0\r\nHost: hecate\r\nAccept: application/json\r\n\r\n"


class NoDaemon(Exception):
    """No daemon to ask (no socket, a stale one, or not allowed to use it): poll the UPSes directly."""


class NotAllowed(NoDaemon):
    """The socket is there but this user may not use it (it is root's)."""


class DaemonError(Exception):
    """Something is on the socket but its answer cannot be used (untrusted, too big, too slow, not a status)."""


def fetch_status(path: Path, *, timeout: float = TIMEOUT_S, limit: int = MAX_RESPONSE_BYTES) -> dict[str, Any]:
    """The daemon's status document, asked on the unix socket at ``path``.

    Raises :class:`NoDaemon` when no daemon is there to ask, :class:`DaemonError` when the
    answer is not usable; both carry a message for people.
    """
    _check_trusted(path)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise NoDaemon(f"no daemon listens on {path}") from err
        except PermissionError as err:
            raise NotAllowed(f"not allowed to use {path} (root only)") from err
        except TimeoutError as err:
            raise DaemonError(f"{path}: no connection within {timeout:g} s") from err
        except OSError as err:
            raise NoDaemon(f"cannot connect to {path}: {err.strerror or err}") from err
        try:
            sock.sendall(REQUEST)
            data = _read_capped(sock, deadline, limit, path)
        except TimeoutError as err:
            raise DaemonError(f"{path}: no complete answer within {timeout:g} s") from err
        except OSError as err:
            raise DaemonError(f"{path}: {err.strerror or err}") from err
    return _parse(data, path)


def _check_trusted(path: Path) -> None:
    """Refuse a socket someone other than root (or the caller) could have put there."""
    trusted = {0, os.geteuid()}
    try:
        dir_st = os.stat(path.parent)
        st = os.lstat(path)
    except FileNotFoundError as err:
        raise NoDaemon(f"no daemon socket at {path}") from err
    except PermissionError as err:
        raise NotAllowed(f"not allowed to use {path} (root only)") from err
    if dir_st.st_uid not in trusted or dir_st.st_mode & 0o022:
        raise DaemonError(f"{path.parent} belongs to uid {dir_st.st_uid} with mode {stat.S_IMODE(dir_st.st_mode):o}: "
                          "not trusted (it must belong to root and be writable by nobody else)")
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path} is not a socket: not trusted")
    if st.st_uid not in trusted:
        raise DaemonError(f"{path} belongs to uid {st.st_uid}: not trusted (it must belong to root)")


def _read_capped(sock: socket.socket, deadline: float, limit: int, path: Path) -> bytes:
    """Everything until the server closes, at most ``limit`` bytes, by ``deadline`` (not per read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise DaemonError(f"{path}: the answer is larger than {_size(limit)}: refused")
        chunks.append(chunk)


def _parse(data: bytes, path: Path) -> dict[str, Any]:
    head, sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise DaemonError(f"{path}: the answer is not HTTP")
    if parts[1] != b"200":
        raise DaemonError(f"{path}: the daemon answered {status_line.decode('ascii', 'replace')[:80]!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip() != str(len(body)).encode():
            announced = value.strip().decode("ascii", "replace")[:20]
            raise DaemonError(f"{path}: the answer is not its announced length ({len(body)} of {announced!r} bytes)")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise DaemonError(f"{path}: the answer is not JSON") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("ups"), list):
        raise DaemonError(f"{path}: the answer is not a status document")
    return doc


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n % (1 << 20) == 0 else f"{n} bytes"
