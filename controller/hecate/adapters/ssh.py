"""SSH: run commands on the cluster's nodes, with strict host keys and every wait bounded.

Every node step of a shutdown or startup (``systemctl stop k3s``, ``k3s-killall.sh``,
``poweroff``) goes through here. paramiko is blocking, so :class:`SshPool` runs all of
its work on a thread pool of its own and offers an asyncio API; the executor awaits
:meth:`SshPool.run` for many nodes at once.

What the pool guarantees, because it runs while the batteries drain:

- **Host keys come only from** ``ssh.known_hosts``: no system known_hosts, no agent, no
  key discovery, the one key in ``ssh.key_file``; an unknown host is refused
  (``paramiko.RejectPolicy``), never added.
- **Every wait is bounded.** TCP connect, banner and authentication each by
  ``ssh.connect_timeout_s``, opening a session on a live connection by the same, and the
  remote command by ``timeout`` (default ``ssh.command_timeout_s``). The command timeout
  does not rely on ``recv_exit_status`` (which waits forever): output is read as it
  arrives until the exit status comes or the deadline passes, and then the channel is
  closed. The remote process itself may go on running; Hecate stops waiting for it.
- **One connection per node**, opened on first use and reused for every later command
  within the pool's life (several commands to one node share it as separate channels, at
  most :data:`MAX_SESSIONS_PER_NODE` at once, below OpenSSH's default ``MaxSessions``);
  a connection that died is replaced transparently before a command is sent -- never
  after, so no command is ever sent twice.
- A non-zero exit code is a result (:class:`CommandResult`), not an error.

Errors are Hecate's own, chained to the paramiko/socket error. Each has ``node`` and
``transient`` (the executor retries transient ones):

- :class:`SshUnreachable` (transient) -- connection refused, no route, DNS, a connect,
  banner or authentication timeout, a handshake that stalled (the node accepted the TCP
  connection but its sshd never finished the banner or the key exchange: still booting),
  or a live connection that cannot open a session;
- :class:`SshHostKeyError` -- the host's key does not match ``known_hosts``, or the host
  is not in it;
- :class:`SshAuthError` -- the node refused the key (or the key file cannot be loaded);
- :class:`SshTimeout` -- the command did not finish within its timeout; its channel was
  closed;
- :class:`SshDisconnected` (transient) -- the connection dropped, or the channel closed,
  while the command ran, so there is no exit status;
- :class:`SshError` itself -- anything else (an unknown node name, a failed key exchange).

**poweroff.** A node that powers off usually answers first (exit 0: ``systemctl
poweroff`` only queues the job), but sshd may also be killed before the answer, which
shows as :class:`SshDisconnected` -- :func:`is_connection_lost` tells the executor that
the command may well have worked. The lab's nodes answer (exit 0 within ~50 ms) and halt
as systemd does: sessions and sshd stop (the connection closes), then the node leaves the
network. A connection that goes silent instead (the link gone before any FIN) is only
noticed by the command's timeout; the next command to such a node waits
``ssh.connect_timeout_s`` for a session, drops the connection, tries a new one and fails
with :class:`SshUnreachable` (so up to twice the connect timeout); a node whose sshd
closed the connection fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self, TypeVar

import paramiko

from hecate.domain import text

if TYPE_CHECKING:
    from hecate.domain.config import Host, Node, Ssh

__all__ = [
    "MAX_SESSIONS_PER_NODE",
    "CommandResult",
    "SshAuthError",
    "SshDisconnected",
    "SshError",
    "SshHostKeyError",
    "SshPool",
    "SshTimeout",
    "SshUnreachable",
    "is_connection_lost",
]

log = logging.getLogger(__name__)

SUDO_PREFIX = "sudo -n "
#: Concurrent commands (channels) on one node's connection; OpenSSH's MaxSessions is 10.
MAX_SESSIONS_PER_NODE = 8
#: Bytes kept of each of stdout and stderr; the rest is read (the remote must not block) and dropped.
MAX_OUTPUT = 1024 * 1024
#: After the exit status, how long to wait for the output still in flight (a daemonised
#: child that keeps stdout open would otherwise hold the command until its timeout).
EOF_GRACE_S = 1.0
#: Longest single wait in the read loop: how quickly a cancelled command notices.
_POLL_S = 0.25
_CHUNK = 64 * 1024

T = TypeVar("T")

#: How paramiko words a handshake that stalled (its own exceptions carry no type for it): no
#: banner within the banner timeout; the key exchange unfinished when ``start_client`` gave up
#: ("No existing session"); the transport gone without a reason. A booting or overloaded node
#: does this, so it is transient like a refused connection.
_STALLED = ("error reading ssh protocol banner", "no existing session", "negotiation failed")

#: paramiko's transport threads log (with tracebacks) the very errors this module
#: translates and raises; they go to this logger, quiet unless its level is lowered.
_PARAMIKO_LOG = f"{__name__}.paramiko"
logging.getLogger(_PARAMIKO_LOG).setLevel(logging.CRITICAL)


# -- errors ------------------------------------------------------------------------------


class SshError(Exception):
    """An SSH operation on ``node`` failed; ``transient`` errors are worth retrying.

    The message may quote the node (its banner, paramiko's reading of what it sent): it is
    cleaned of control characters and capped (``hecate.domain.text``).
    """

    transient: bool = False

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(text.clean(message))
        self.node = node


class SshUnreachable(SshError):
    """No usable connection: refused, no route, DNS, connect/banner/auth timeout, a stalled handshake."""

    transient = True


class SshHostKeyError(SshError):
    """The node's host key is not the one in known_hosts, or it is not there at all."""


class SshAuthError(SshError):
    """The node refused our key, or the key file cannot be loaded."""


class SshTimeout(SshError):
    """The command did not finish within its timeout; its channel has been closed."""


class SshDisconnected(SshError):
    """The connection (or the channel) went away while the command ran: no exit status."""

    transient = True


def is_connection_lost(err: BaseException) -> bool:
    """True when a command was sent but its connection dropped before the exit status.

    For ``poweroff`` that is an expected outcome: the node may kill sshd before answering.
    """
    return isinstance(err, SshDisconnected)


class _UnknownHost(paramiko.SSHException):
    """Raised by :class:`_Reject` so an unknown host is told apart from other SSHExceptions."""


class _Reject(paramiko.RejectPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise _UnknownHost(f"{hostname} offered {key.get_name()} {key.fingerprint}")


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """What a remote command did. ``duration_s`` runs from sending it to its exit status.

    ``stdout`` and ``stderr`` are as the node sent them (up to :data:`MAX_OUTPUT`); quote
    them through :meth:`last_line`, which is cleaned.
    """

    node: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def last_line(self) -> str:
        """The last non-empty line of stderr, else of stdout, fit to print (cleaned, capped); or ""."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text.clean(lines[-1]) if lines else ""


class _Capture:
    """One output stream, kept up to MAX_OUTPUT bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = max(0, MAX_OUTPUT - len(self.data))
        self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + (f"\n[hecate: {self.dropped} more bytes dropped]\n" if self.dropped else "")


class _Conn:
    """A node's connection slot: the client (None until connected) and the lock around connecting."""

    __slots__ = ("client", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: paramiko.SSHClient | None = None


# -- the pool ----------------------------------------------------------------------------


class SshPool:
    """Connections to the cluster's nodes (and the ``hosts:`` machines), reused for every command within the
    pool's life.

    Use from one event loop; ``async with SshPool(...) as pool`` closes every connection.
    ``commands_sent`` counts commands actually sent to a node, ``connects`` the
    connections opened (reconnections included).
    """

    def __init__(self, ssh: Ssh, nodes: Sequence[Node | Host], *, max_workers: int = 32) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        self._ssh = ssh
        self._nodes = {node.name: node for node in nodes}
        self._conns = {name: _Conn() for name in self._nodes}
        self._sessions = {name: asyncio.Semaphore(MAX_SESSIONS_PER_NODE) for name in self._nodes}
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hecate-ssh")
        self._counter_lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._pkey: paramiko.PKey | None = None
        self._closed = False
        self.commands_sent = 0
        self.connects = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- public API ------------------------------------------------------------------------

    async def run(
        self, node: str, command: str, *, timeout: float | None = None, sudo: bool | None = None
    ) -> CommandResult:
        """Run ``command`` on ``node`` and return its exit code and output (non-zero included).

        ``timeout`` (default ``ssh.command_timeout_s``) bounds the command from the moment
        it is sent; connecting is bounded by ``ssh.connect_timeout_s``. ``sudo`` (default
        ``ssh.sudo``) prefixes ``sudo -n``. Cancelling the awaiting task closes the channel.
        """
        spec = self._node(node)
        limit = self._ssh.command_timeout_s if timeout is None else timeout
        if limit <= 0:
            raise ValueError(f"timeout must be > 0, not {limit}")
        use_sudo = self._ssh.sudo if sudo is None else sudo
        full = SUDO_PREFIX + command if use_sudo else command
        cancel = threading.Event()
        async with self._sessions[node]:
            return await self._in_thread(cancel, self._run_blocking, spec, full, limit, cancel)

    async def connect_all(self, nodes: Sequence[str] | None = None) -> dict[str, SshError | None]:
        """Open the connections to ``nodes`` (default: all) concurrently; each node's error or None."""
        names = list(self._nodes) if nodes is None else list(nodes)
        specs = [self._node(name) for name in names]
        results = await asyncio.gather(
            *(self._in_thread(threading.Event(), self._connect_quietly, spec) for spec in specs)
        )
        return dict(zip(names, results, strict=True))

    async def probe(self, node: str, timeout: float) -> str | None:
        """One TCP connect to ``node``'s SSH port within ``timeout``, closed at once: None when it
        answers, else why not. A cheap look at a node an earlier command found unreachable (no
        handshake, no thread, no retry); a node that answers gets a real connection when used."""
        spec = self._node(node)
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(spec.address, spec.ssh_port), timeout)
        except TimeoutError:
            return f"{self._where(spec)}: no answer within {timeout:g}s"
        except OSError as err:
            return f"{self._where(spec)}: {err.strerror or err}"
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)
        return None

    async def close(self) -> None:
        """Close every connection (commands still running end with SshDisconnected)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_all)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def connected(self) -> list[str]:
        """Nodes with an open connection right now."""
        return [name for name, conn in self._conns.items() if _alive(conn.client)]

    # -- plumbing --------------------------------------------------------------------------

    def _node(self, name: str) -> Node | Host:
        try:
            return self._nodes[name]
        except KeyError:
            known = ", ".join(sorted(self._nodes)) or "none"
            raise SshError(f"unknown node {name!r} (known: {known})", node=name) from None

    async def _in_thread(self, cancel: threading.Event, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("SshPool is closed")
        future = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        try:
            return await future
        except asyncio.CancelledError:
            cancel.set()  # a command already running closes its channel and returns
            raise

    def _count(self, *, connects: int = 0, commands: int = 0) -> None:
        with self._counter_lock:
            self.connects += connects
            self.commands_sent += commands

    @staticmethod
    def _where(node: Node | Host) -> str:
        return node.address if node.ssh_port == 22 else f"{node.address}:{node.ssh_port}"

    # -- connections (worker threads) ------------------------------------------------------

    def _key(self, node: Node | Host) -> paramiko.PKey:
        with self._key_lock:
            if self._pkey is None:
                try:
                    self._pkey = paramiko.PKey.from_path(self._ssh.key_file)
                except (OSError, ValueError, paramiko.SSHException) as err:
                    raise SshAuthError(f"cannot load SSH key {self._ssh.key_file}: {err}", node=node.name) from err
            return self._pkey

    def _connect_quietly(self, node: Node | Host) -> SshError | None:
        try:
            self._client(node)
        except SshError as err:
            return err
        return None

    def _client(self, node: Node | Host) -> tuple[paramiko.SSHClient, bool]:
        """The node's live client and whether it was just opened (connecting if needed)."""
        conn = self._conns[node.name]
        with conn.lock:
            if self._closed:
                raise SshError("the SSH pool is closed", node=node.name)
            old = conn.client
            if old is not None:
                if _alive(old):
                    return old, False
                conn.client = None
                old.close()
                log.info("ssh %s: connection lost, reconnecting", node.name)
            conn.client = self._connect(node)
            return conn.client, True

    def _drop(self, node: Node | Host, client: paramiko.SSHClient) -> None:
        conn = self._conns[node.name]
        with conn.lock:
            if conn.client is client:
                conn.client = None
        client.close()

    def _connect(self, node: Node | Host) -> paramiko.SSHClient:
        ssh, where = self._ssh, self._where(node)
        pkey = self._key(node)
        client = paramiko.SSHClient()
        client.set_log_channel(_PARAMIKO_LOG)
        try:
            client.load_host_keys(str(ssh.known_hosts))
        except OSError as err:
            raise SshHostKeyError(
                f"cannot verify the host key for {node.name} ({where}): known_hosts {ssh.known_hosts}: {err}",
                node=node.name,
            ) from err
        client.set_missing_host_key_policy(_Reject())
        user = node.ssh_user or ssh.user
        t = ssh.connect_timeout_s
        started = time.monotonic()
        try:
            client.connect(
                node.address, port=node.ssh_port, username=user, pkey=pkey,
                timeout=t, banner_timeout=t, auth_timeout=t,
                allow_agent=False, look_for_keys=False,
            )
        except Exception as err:
            client.close()
            raise self._connect_error(node, user, err, time.monotonic() - started) from err
        except BaseException:
            client.close()
            raise
        self._count(connects=1)
        log.debug("ssh %s: connected to %s as %s in %.3fs", node.name, where, user, time.monotonic() - started)
        return client

    def _connect_error(self, node: Node | Host, user: str, err: Exception, elapsed: float) -> SshError:
        where, path, name = self._where(node), self._ssh.known_hosts, node.name
        if isinstance(err, paramiko.BadHostKeyException):
            return SshHostKeyError(
                f"host key for {name} ({where}) does not match known_hosts {path}: the node offered "
                f"{err.key.get_name()} {err.key.fingerprint}, known_hosts has {err.expected_key.fingerprint}",
                node=name,
            )
        if isinstance(err, _UnknownHost):
            return SshHostKeyError(
                f"host key for {name} ({where}) is not in known_hosts {path}; refused ({err})", node=name
            )
        if isinstance(err, paramiko.AuthenticationException):
            if "timeout" in str(err).lower():
                return SshUnreachable(f"{name} ({where}): authentication timed out after {elapsed:.1f}s", node=name)
            return SshAuthError(
                f"{name} ({where}) refused key {self._ssh.key_file} for user {user!r}: {err}", node=name
            )
        if isinstance(err, TimeoutError):
            return SshUnreachable(f"{name} ({where}) unreachable: connect timed out after {elapsed:.1f}s", node=name)
        if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):  # refused or no route, every address
            why = "; ".join(str(e) for e in err.errors.values())
            return SshUnreachable(f"{name} ({where}) unreachable: {why}", node=name)
        if isinstance(err, OSError | EOFError):  # DNS, network down, reset; EOF: closed during the handshake
            return SshUnreachable(f"{name} ({where}) unreachable: {err or type(err).__name__}", node=name)
        if type(err) is paramiko.SSHException and any(s in str(err).lower() for s in _STALLED):
            return SshUnreachable(
                f"{name} ({where}) unreachable: the SSH handshake did not complete within "
                f"{self._ssh.connect_timeout_s:g}s ({err}): the node accepted the connection but its sshd "
                "did not answer (still booting, overloaded, or not an sshd)", node=name)
        return SshError(f"{name} ({where}): SSH connection failed: {err}", node=name)

    def _close_all(self) -> None:
        for conn in self._conns.values():
            with conn.lock:
                client, conn.client = conn.client, None
            if client is not None:
                client.close()

    # -- commands (worker threads) ---------------------------------------------------------

    def _open_channel(self, node: Node | Host) -> tuple[paramiko.SSHClient, paramiko.Channel]:
        """A session channel on a live connection; a dead reused connection is replaced once."""
        while True:
            client, fresh = self._client(node)
            transport = client.get_transport()
            try:
                if transport is None:
                    raise EOFError("no transport")
                return client, transport.open_session(timeout=self._ssh.connect_timeout_s)
            except paramiko.ChannelException as err:  # the node answered: the connection is fine
                raise SshUnreachable(f"{node.name}: the node refused a session: {err}", node=node.name) from err
            except (paramiko.SSHException, OSError, EOFError) as err:
                self._drop(node, client)
                if fresh:
                    raise SshUnreachable(
                        f"{node.name} ({self._where(node)}): cannot open a session: {err}", node=node.name
                    ) from err
                log.info("ssh %s: reused connection is dead (%s), reconnecting", node.name, err)

    def _run_blocking(self, node: Node | Host, command: str, timeout: float, cancel: threading.Event) -> CommandResult:
        client, chan = self._open_channel(node)
        expired = threading.Event()

        def expire() -> None:  # also bounds exec_command, whose wait for the reply has no timeout
            expired.set()
            chan.close()

        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        out, err = _Capture(), _Capture()
        started = time.monotonic()
        try:
            watchdog.start()
            self._count(commands=1)
            log.debug("ssh %s: run %r", node.name, command)
            try:
                chan.exec_command(command)
                chan.shutdown_write()  # no stdin: the command sees EOF
            except (paramiko.SSHException, OSError, EOFError):
                pass  # the channel is closed; _wait tells timeout from disconnect
            status = _wait(chan, out, err, started + timeout, cancel, expired)
        finally:
            watchdog.cancel()
            chan.close()
        duration = time.monotonic() - started
        if status is not None:
            return CommandResult(node.name, command, status, out.text(), err.text(), duration)
        if cancel.is_set():
            raise SshError(f"{node.name}: {command!r} cancelled after {duration:.1f}s", node=node.name)
        if expired.is_set():
            raise SshTimeout(
                f"{node.name}: {command!r} did not finish within {timeout:g}s; channel closed "
                "(the remote command may still be running)",
                node=node.name,
            )
        transport_alive = _alive(client)
        if not transport_alive:
            self._drop(node, client)
        why = "the channel closed" if transport_alive else "the connection dropped"
        raise SshDisconnected(
            f"{node.name} ({self._where(node)}): {why} while {command!r} ran, after {duration:.1f}s "
            "(no exit status)",
            node=node.name,
        )


def _alive(client: paramiko.SSHClient | None) -> bool:
    transport = None if client is None else client.get_transport()
    return transport is not None and transport.is_active()


def _exit_status(chan: paramiko.Channel) -> int | None:
    # status_event is also set when the channel closes; exit_status stays -1 without a status.
    if chan.status_event.is_set() and chan.exit_status >= 0:
        return chan.exit_status
    return None


def _drain(chan: paramiko.Channel, out: _Capture, err: _Capture, *, everything: bool = False) -> None:
    while True:
        got = False
        if chan.recv_ready():
            out.add(chan.recv(_CHUNK))
            got = True
        if chan.recv_stderr_ready():
            err.add(chan.recv_stderr(_CHUNK))
            got = True
        if not (got and everything):
            return


def _wait(
    chan: paramiko.Channel, out: _Capture, err: _Capture, deadline: float,
    cancel: threading.Event, expired: threading.Event,
) -> int | None:
    """Read output until the exit status (returned), or None on timeout, cancel or close.

    Waits are event-driven: ``poll`` on the channel (readable when data or EOF arrives)
    and, once EOF is in, the status event (set by the exit status or the close).
    """
    eof_deadline: float | None = None
    poller = select.poll()  # not select.select: daemons with many connections pass fd 1024
    poller.register(chan, select.POLLIN)
    while True:
        _drain(chan, out, err)
        status = _exit_status(chan)
        now = time.monotonic()
        if status is not None:
            if chan.eof_received or chan.closed:
                _drain(chan, out, err, everything=True)
                return status
            if eof_deadline is None:
                eof_deadline = min(now + EOF_GRACE_S, deadline)
            if now >= eof_deadline:
                _drain(chan, out, err, everything=True)
                return status
        elif chan.closed or expired.is_set() or cancel.is_set():
            return None
        elif now >= deadline:
            expired.set()
            return None
        wait = min(deadline - now, _POLL_S, eof_deadline - now if eof_deadline is not None else _POLL_S)
        if chan.eof_received:  # the channel's pipe stays readable after EOF: wait for the status
            chan.status_event.wait(max(wait, 0.0))
        else:
            poller.poll(max(wait, 0.0) * 1000)
