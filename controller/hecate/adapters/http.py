"""The HTTP server (aiohttp): ``/metrics``, ``/healthz``, ``/readyz``, ``GET /v1/status``.

The same endpoints are served in two places: TCP on ``metrics.listen`` (default
``127.0.0.1:9560``, for Prometheus) and a root-only unix socket on ``metrics.socket``
(default ``/run/hecate/hecate.sock``, for ``hecate status``, which never trusts a TCP
port: any local user may bind one first).

Neither can take the monitor down. Each place is bound by its own background task that
retries a failed bind (1 s, doubling up to 30 s) and logs once per change of state; the
daemon runs, polls and decides meanwhile, and its status and metrics say what is not
listening (:class:`Listener`). Each place also serves a bounded number of connections at
once, so a flood of idle clients cannot use up the descriptors the monitor, the shutdown's
SSH sessions and the Kubernetes client need. Handlers only read: the status document is
computed by the caller-supplied function; nothing here decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from hecate.adapters import metrics
from hecate.domain import timestamps
from hecate.domain.config import Metrics

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
MAX_CONNECTIONS = 32
"""Connections each listener serves at once; more are closed as soon as they are accepted."""
IDLE_TIMEOUT_S = 5.0
"""A connection that sends no request for this long is closed."""
SHUTDOWN_TIMEOUT_S = 2.0
"""How long stopping waits for requests in progress."""


def make_app(status: Callable[[], dict[str, Any]], not_ready: Callable[[], list[str]]) -> web.Application:
    """The endpoints. ``not_ready``: why the daemon is not ready (empty: ready)."""
    registry = metrics.registry_for(status, process=True)

    async def get_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reasons = not_ready()
        if not reasons:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="".join(f"not ready: {r}\n" for r in reasons))

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", get_status)
    return app


@dataclass
class Listener:
    """One place the server listens on, and how binding it went (shown in status and metrics)."""

    kind: str
    """``tcp`` (``metrics.listen``) or ``unix`` (``metrics.socket``)."""
    address: str
    listening: bool = False
    bind_failures: int = 0
    """Failed binds since the daemon started."""
    error: str | None = None
    """Why the last bind failed, while not listening."""
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When it last changed (listening or not)."""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "listening": self.listening,
                "bind_failures": self.bind_failures, "error": self.error,
                "since": timestamps.rfc3339(self.since, fraction=True)}

    def problem(self) -> str | None:
        """A one-line alert while not listening, else None."""
        if self.listening:
            return None
        return f"not listening on {self.address} ({self.kind}): {self.error or 'not bound yet'}; retrying"


class Server:
    """The endpoints on TCP and on the unix socket, each bound (and re-tried) in the background.

    ``start()`` returns at once; ``stop()`` closes both and removes the socket file.
    """

    def __init__(self, status: Callable[[], dict[str, Any]], ready: Callable[[], bool], config: Metrics, *,
                 retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.status = status
        self.ready = ready
        self.config = config
        self.retry = (retry_first_s, retry_max_s)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.tcp = Listener("tcp", config.listen)
        self.unix = Listener("unix", str(config.socket))
        self.listeners = (self.tcp, self.unix)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._socket_inode: tuple[int, int] | None = None

    def not_ready(self) -> list[str]:
        reasons = [] if self.ready() else ["not every UPS has been polled yet"]
        return reasons + [p for p in (lst.problem() for lst in self.listeners) if p]

    async def start(self) -> None:
        for listener, bind in ((self.tcp, self._bind_tcp), (self.unix, self._bind_unix)):
            runner = web.AppRunner(make_app(self.status, self.not_ready), access_log=None, handle_signals=False,
                                   shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=self.idle_timeout_s)
            await runner.setup()
            self._runners.append(runner)
            self._tasks.append(asyncio.create_task(self._keep_bound(listener, runner, bind),
                                                   name=f"http-{listener.kind}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        self._remove_socket()

    async def _keep_bound(self, listener: Listener, runner: web.AppRunner,
                          bind: Callable[[], list[socket.socket]]) -> None:
        await keep_bound(listener, runner, bind, self.retry, self.max_connections,
                         "/metrics, /healthz, /readyz and /v1/status")

    def _bind_tcp(self) -> list[socket.socket]:
        return bind_tcp(*self.config.bind)

    def _bind_unix(self) -> list[socket.socket]:
        sock = bind_unix(self.config.socket)
        st = os.stat(self.config.socket)
        self._socket_inode = (st.st_dev, st.st_ino)
        return [sock]

    def _remove_socket(self) -> None:
        """Remove the socket file, if it is still the one this server created."""
        if self._socket_inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.config.socket)
            if (st.st_dev, st.st_ino) == self._socket_inode:
                os.unlink(self.config.socket)
        self._socket_inode = None


async def keep_bound(listener: Listener, runner: web.AppRunner, bind: Callable[[], list[socket.socket]],
                     retry: tuple[float, float], max_connections: int, serving: str, *,
                     max_lifetime_s: float | None = None) -> None:
    """Bind ``listener`` in the background, retrying a failed bind (``retry``: first and longest wait),
    logging once per change of state; then serve ``runner`` there (each connection closed after
    ``max_lifetime_s`` when set)."""
    delay = retry[0]
    while True:
        try:
            socks = await asyncio.get_running_loop().run_in_executor(None, bind)
        except OSError as err:
            message = _describe(err)
            listener.bind_failures += 1
            if listener.listening or listener.error != message:  # once per change, not once per retry
                log.error("cannot listen on %s (%s): %s; retrying in the background (every %g s at most), "
                          "UPS monitoring goes on", listener.address, listener.kind, message, retry[1])
                listener.since = datetime.now(UTC)
            listener.listening, listener.error = False, message
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry[1])
            continue
        for sock in socks:
            await _LimitedSite(runner, sock, max_connections, max_lifetime_s).start()
        if listener.bind_failures:
            log.warning("now listening on %s (%s), after %d failed binds", listener.address, listener.kind,
                        listener.bind_failures)
        else:
            log.info("serving %s on %s (%s)", serving, listener.address, listener.kind)
        listener.listening, listener.error, listener.since = True, None, datetime.now(UTC)
        return


def bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as asyncio's create_server)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` that only its owner (root) can use.

    The directory is created 0700 when missing; an existing one must be a real directory
    owned by this user or root and writable by nobody else (else someone else could swap
    the socket). A stale socket (nobody accepts on it) is replaced; a live one, or
    anything that is not a socket, is left alone and the bind fails. The socket is 0600.
    """
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory")
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{directory} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}: "
                                   "it must belong to root and be writable by nobody else")
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket: not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody accepts: left over from a daemon that was killed
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process serves this socket")


def _describe(err: OSError) -> str:
    """``[Errno 98] Address already in use`` -> ``address already in use (EADDRINUSE)``; own messages as they are."""
    name = errno.errorcode.get(err.errno or 0)
    if err.strerror and err.errno is not None and err.strerror == os.strerror(err.errno) and name:
        return f"{err.strerror[0].lower()}{err.strerror[1:]} ({name})"
    return err.strerror or str(err)


class _LimitedSite(web.BaseSite):
    """An aiohttp site on a socket bound here, serving at most ``limit`` connections at once."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limit: int,
                 max_lifetime_s: float | None = None) -> None:
        super().__init__(runner)
        self._sock = sock
        self._limit = limit
        self._max_lifetime_s = max_lifetime_s

    @property
    def name(self) -> str:
        return str(self._sock.getsockname())

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limit, lifetime = self._limit, self._max_lifetime_s
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= limit:
                return _Refuse()
            handler = server()
            if lifetime is not None:  # connected right after this returns; a closed one ignores it
                loop.call_later(lifetime, handler.force_close)
            return handler

        self._server = await loop.create_server(protocol, sock=self._sock)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
