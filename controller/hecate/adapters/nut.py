"""NUT: a small asyncio client for the ``upsd`` network protocol.

Hecate's whole reason to exist is reacting to what upsd says, so this is our own client
rather than a dependency such as aionut. The protocol is a handful of line-based
commands (``LIST UPS``, ``LIST VAR``, ``GET VAR``, ``USERNAME``/``PASSWORD``,
``INSTCMD``, ``PRIMARY``/``FSD``, ``LOGOUT``), and owning it gives us what matters during a power cut: every
network wait is bounded (connect, each request/response exchange, the polite goodbye),
a hostile or broken server cannot make us buffer unbounded data (64 KiB per line, 1 MiB
per reply), no socket is leaked on timeouts or cancellation, and every failure is
translated into Hecate's own errors. All of them derive from :class:`NutError` and
carry ``ups`` (the UPS name, when the request was about one) and ``address``
(``host:port``):

- :class:`NutUnreachable` -- connection refused, DNS or network error, connection closed;
- :class:`NutTimeout` -- no connection or no complete reply within the timeout;
- :class:`NutDataStale` -- ``ERR DATA-STALE``: the driver stopped updating;
- :class:`NutDriverNotConnected` -- ``ERR DRIVER-NOT-CONNECTED``: the driver is gone;
- :class:`NutUnknownUps` -- ``ERR UNKNOWN-UPS``: upsd does not serve that UPS;
- :class:`NutAccessDenied` -- ``ERR ACCESS-DENIED`` and the login errors
  (``USERNAME-REQUIRED``, ``PASSWORD-REQUIRED``, ``INVALID-PASSWORD``, ...);
- :class:`NutProtocolError` -- any other ``ERR <CODE>`` (``code`` tells which, e.g.
  ``VAR-NOT-SUPPORTED``, ``CMD-NOT-SUPPORTED``) or a reply that does not parse.

``err.stale`` is true for the two "upsd answers, but has no live data" errors (data
stale, driver not connected) and false otherwise; ``err.upsd_reachable`` is false only
for :class:`NutUnreachable` and :class:`NutTimeout`. The trigger needs that distinction:
a stale UPS on a live upsd is not the same event as a upsd that is gone.

:class:`NutReader` is the monitor's ``UpsReader``: one :func:`read_ups` per poll, turned
into a ``hecate.domain.ups.Snapshot``; it never raises.

Note that upsd accepts any ``PASSWORD`` with ``OK`` (NUT 2.8); wrong credentials only
show up as ``ERR ACCESS-DENIED`` at the command that needs them (``INSTCMD``, ``PRIMARY``,
``FSD``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from hecate.domain import text
from hecate.domain.ups import Snapshot, failed, from_variables

if TYPE_CHECKING:
    from hecate.domain.config import Ups

__all__ = [
    "DEFAULT_PORT",
    "NutAccessDenied",
    "NutClient",
    "NutDataStale",
    "NutDriverNotConnected",
    "NutError",
    "NutProtocolError",
    "NutReader",
    "NutTimeout",
    "NutUnknownUps",
    "NutUnreachable",
    "parse_line",
    "quote",
    "read_credentials_file",
    "read_ups",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 3493
MAX_LINE = 64 * 1024  # longest reply line we accept; upsd's own lines are far shorter
MAX_REPLY = 1024 * 1024  # total bytes of one (list) reply
LOGOUT_TIMEOUT = 0.5  # the goodbye is a courtesy: never wait long for it


# -- errors ------------------------------------------------------------------------------


class NutError(Exception):
    """Talking to upsd failed; ``ups`` and ``address`` say about what and where.

    The message may quote upsd (an ``ERR`` text, a malformed reply): it is cleaned of control
    characters and capped (``hecate.domain.text``); ``code`` keeps upsd's code as sent.
    """

    stale: bool = False  # upsd answers but has no live data for the UPS
    upsd_reachable: bool = True  # upsd answered at all

    def __init__(self, what: str, *, address: str, ups: str | None = None, code: str | None = None) -> None:
        self.what = text.clean(what)
        self.address = address
        self.ups = ups
        self.code = code  # the ``ERR`` code upsd sent, if any
        where = f"{ups}@{address}" if ups else address
        shown = f" (ERR {text.clean(code, text.MAX_VALUE_CHARS)})" if code else ""
        super().__init__(f"{where}: {self.what}{shown}")


class NutUnreachable(NutError):
    """No connection to upsd: refused, DNS or network error, or the connection was closed."""

    upsd_reachable = False


class NutTimeout(NutError):
    """upsd did not accept the connection or did not reply completely in time."""

    upsd_reachable = False


class NutDataStale(NutError):
    """``ERR DATA-STALE``: upsd is up but the driver has not updated the data recently."""

    stale = True


class NutDriverNotConnected(NutError):
    """``ERR DRIVER-NOT-CONNECTED``: upsd is up but the UPS driver is not running."""

    stale = True


class NutUnknownUps(NutError):
    """``ERR UNKNOWN-UPS``: upsd does not serve a UPS of that name."""


class NutAccessDenied(NutError):
    """upsd refused the credentials or the action (``ERR ACCESS-DENIED`` and login errors)."""


class NutProtocolError(NutError):
    """Any other ``ERR <CODE>`` (see ``code``), or a reply that does not follow the protocol."""


_ERRORS: dict[str, type[NutError]] = {
    "DATA-STALE": NutDataStale,
    "DRIVER-NOT-CONNECTED": NutDriverNotConnected,
    "UNKNOWN-UPS": NutUnknownUps,
    "ACCESS-DENIED": NutAccessDenied,
    "USERNAME-REQUIRED": NutAccessDenied,
    "PASSWORD-REQUIRED": NutAccessDenied,
    "INVALID-USERNAME": NutAccessDenied,
    "INVALID-PASSWORD": NutAccessDenied,
}


def _describe(code: str) -> str:
    """``DATA-STALE`` -> ``data stale``; ``UNKNOWN-UPS`` -> ``unknown UPS``."""
    return code.lower().replace("-", " ").replace("ups", "UPS")


# -- the line format -----------------------------------------------------------------------


def parse_line(line: str) -> list[str]:
    """Split one protocol line into words; ``"..."`` groups words, ``\\"`` and ``\\\\`` escape.

    ``VAR ups ups.model "A \\"quoted\\" name"`` -> ``["VAR", "ups", "ups.model",
    'A "quoted" name']``. An empty quoted string is a word (``""`` -> ``[""]``). Raises
    ``ValueError`` for an unterminated quote or a dangling backslash.
    """
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in " \t":
            i += 1
            continue
        word: list[str] = []
        quoted = line[i] == '"'
        if quoted:
            i += 1
        while True:
            if i >= n:
                if quoted:
                    raise ValueError("unterminated quoted string")
                break
            char = line[i]
            if char == "\\":
                if i + 1 >= n:
                    raise ValueError("backslash at the end of the line")
                word.append(line[i + 1])
                i += 2
                continue
            if quoted and char == '"':
                i += 1
                if i < n and line[i] not in " \t":
                    raise ValueError("text right after a closing quote")
                break
            if not quoted and char in " \t":
                break
            word.append(char)
            i += 1
        words.append("".join(word))
    return words


def quote(value: str) -> str:
    """``value`` as one protocol word: quoted, with ``"`` and ``\\`` escaped."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"a NUT value cannot contain a line break: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name(kind: str, value: str) -> str:
    """Check a UPS, variable or command name before it goes on the wire (no injection)."""
    if not value or not value.isprintable() or any(c in value for c in ' \t"\\'):
        raise ValueError(f"not a valid NUT {kind} name: {value!r}")
    return value


# -- the client ----------------------------------------------------------------------------


class NutClient:
    """One connection to upsd; use as ``async with NutClient(host, port) as client:``.

    ``connect_timeout`` bounds the TCP connect; ``read_timeout`` bounds each
    request/response exchange, including a whole ``LIST`` reply and the login. When
    ``username`` and ``password`` are given they are sent right after connecting. Requests
    on one client are serialised. After a timeout, a closed connection, a malformed reply
    or a cancellation mid-exchange the connection is dropped and the client is unusable
    (further requests raise :class:`NutUnreachable`); an ``ERR`` reply leaves it usable.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 2.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("NUT login needs both a username and a password, or neither")
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._username = username
        self._password = password
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"NutClient({self.address!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._writer is not None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the connection and log in if credentials were given; on failure nothing stays open."""
        if self._writer is not None:
            raise RuntimeError(f"{self!r} is already connected")
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_LINE), self._connect_timeout
            )
        except TimeoutError as err:
            raise NutTimeout(f"no connection within {self._connect_timeout:g} s",
                             address=self.address) from err
        except OSError as err:  # refused, unreachable, DNS (socket.gaierror is an OSError)
            raise NutUnreachable(f"cannot connect: {_os_reason(err)}", address=self.address) from err
        try:
            if self._username is not None and self._password is not None:
                await self._expect_ok(f"USERNAME {quote(self._username)}")
                await self._expect_ok(f"PASSWORD {quote(self._password)}")
        except BaseException:
            self._abort()
            raise

    async def aclose(self) -> None:
        """Say ``LOGOUT`` (best effort, briefly) and close the connection. Safe to call twice."""
        writer = self._writer
        if writer is None:
            return
        try:
            with contextlib.suppress(NutError, OSError, TimeoutError):
                async with asyncio.timeout(min(self._read_timeout, LOGOUT_TIMEOUT)):
                    await self._exchange("LOGOUT", None)
        finally:
            self._reader = self._writer = None
            writer.close()  # synchronous: the socket is released even if we are cancelled below
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), LOGOUT_TIMEOUT)

    def _abort(self) -> None:
        """Drop the connection at once (no goodbye): it is broken or we are cancelled."""
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            writer.transport.abort()

    # -- requests ----------------------------------------------------------------------

    async def list_ups(self) -> dict[str, str]:
        """Every UPS upsd serves: name -> description."""
        rows = await self._exchange("LIST UPS", None, ["UPS"], width=3)
        return {row[1]: row[2] for row in rows}

    async def list_vars(self, ups: str) -> dict[str, str]:
        """Every variable upsd serves for ``ups``: ``{"ups.status": "OL", ...}``."""
        rows = await self._exchange(f"LIST VAR {_name('UPS', ups)}", ups, ["VAR", ups], width=4)
        values: dict[str, str] = {}
        for row in rows:
            if row[1] != ups:
                raise self._malformed(ups, f"variable for another UPS {row[1]!r} in the list")
            values[row[2]] = row[3]
        return values

    async def get_var(self, ups: str, var: str) -> str:
        """One variable of ``ups``; one it lacks is ``NutProtocolError`` with code ``VAR-NOT-SUPPORTED``."""
        words = await self._request(f"GET VAR {_name('UPS', ups)} {_name('variable', var)}", ups)
        if len(words) != 4 or words[0] != "VAR" or words[1] != ups or words[2] != var:
            raise self._malformed(ups, f"unexpected reply to GET VAR: {_show(words)}")
        return words[3]

    async def instcmd(self, ups: str, cmd: str, value: str | None = None) -> None:
        """Run instant command ``cmd`` on ``ups`` (needs a login with ``instcmds`` rights).

        upsd answers ``OK`` (or ``OK TRACKING <id>`` when tracking is on) once it has handed
        the command to the driver; an unsupported command is ``NutProtocolError`` code
        ``CMD-NOT-SUPPORTED``, missing rights or wrong credentials ``NutAccessDenied``.
        """
        line = f"INSTCMD {_name('UPS', ups)} {_name('command', cmd)}"
        if value is not None:
            line += f" {quote(value)}"
        await self._expect_ok(line, ups)

    async def set_fsd(self, ups: str) -> str:
        """Set FSD (forced shutdown) on ``ups`` as a NUT primary does; returns the login verb upsd granted.

        ``PRIMARY <ups>`` first (upsd before NUT 2.8 only knows ``MASTER``: tried when ``PRIMARY`` is an
        unknown command), then ``FSD <ups>``, which upsd confirms with ``OK FSD-SET``. The login needs
        ``upsmon primary`` in upsd.users; without it (or with a wrong password) :class:`NutAccessDenied`.
        Every ``upsmon`` of the UPS sees ``FSD`` in ``ups.status`` from then on, until upsd restarts.
        """
        name = _name("UPS", ups)
        verb = "PRIMARY"
        try:
            words = await self._request(f"PRIMARY {name}", ups)
        except NutProtocolError as err:
            if err.code not in ("UNKNOWN-COMMAND", "CMD-NOT-SUPPORTED"):
                raise
            verb = "MASTER"
            words = await self._request(f"MASTER {name}", ups)
        if not words or words[0] != "OK":
            raise self._malformed(ups, f"expected OK to {verb}, got {_show(words)}")
        words = await self._request(f"FSD {name}", ups)
        if words != ["OK", "FSD-SET"]:
            raise self._malformed(ups, f"expected OK FSD-SET, got {_show(words)}")
        return verb

    # -- plumbing ------------------------------------------------------------------------

    async def _expect_ok(self, line: str, ups: str | None = None) -> None:
        words = await self._request(line, ups)
        if not words or words[0] != "OK":
            raise self._malformed(ups, f"expected OK to {line.split()[0]}, got {_show(words)}")

    async def _request(self, line: str, ups: str | None) -> list[str]:
        """Send one line and return the words of the one-line reply (``ERR`` raised)."""
        return (await self._exchange(line, ups))[0]

    async def _exchange(
        self, line: str, ups: str | None, listing: list[str] | None = None, width: int = 0
    ) -> list[list[str]]:
        """Send ``line``, read the reply, all within ``read_timeout``; ``ERR`` replies are raised.

        Without ``listing`` the reply is one line (returned as the only row). With it, the
        reply is ``BEGIN LIST <listing>``, rows of ``width`` words starting with
        ``listing[0]``, ``END LIST <listing>``; the rows are returned.
        """
        async with self._lock:
            reader, writer = self._reader, self._writer
            if reader is None or writer is None:
                raise NutUnreachable("not connected", address=self.address, ups=ups)
            verb = line.split(" ", 1)[0]
            try:
                async with asyncio.timeout(self._read_timeout):
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    first, _ = await self._read_words(reader, ups)
                    if first and first[0] == "ERR":
                        raise self._err(first, ups)
                    if listing is None:
                        return [first]
                    if first != ["BEGIN", "LIST", *listing]:
                        expected = " ".join(["BEGIN LIST", *listing])
                        raise self._malformed(ups, f"expected {expected}, got {_show(first)}")
                    rows: list[list[str]] = []
                    total = 0
                    while True:
                        words, size = await self._read_words(reader, ups)
                        if words == ["END", "LIST", *listing]:
                            return rows
                        total += size
                        if total > MAX_REPLY:
                            raise self._malformed(ups, f"LIST reply longer than {MAX_REPLY} bytes")
                        if len(words) != width or words[0] != listing[0]:
                            raise self._malformed(ups, f"unexpected line in LIST {listing[0]}: {_show(words)}")
                        rows.append(words)
            except NutError as err:
                if err.code is None:  # only a well-formed ERR reply leaves the stream in step
                    self._abort()
                raise
            except TimeoutError as err:
                self._abort()
                raise NutTimeout(f"no complete reply to {verb} within {self._read_timeout:g} s",
                                 address=self.address, ups=ups) from err
            except OSError as err:
                self._abort()
                raise NutUnreachable(f"connection lost during {verb}: {_os_reason(err)}",
                                     address=self.address, ups=ups) from err
            except BaseException:  # cancelled mid-exchange: the stream is out of step
                self._abort()
                raise

    async def _read_words(self, reader: asyncio.StreamReader, ups: str | None) -> tuple[list[str], int]:
        """The words of the next line, and its size in bytes."""
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            raise NutUnreachable("connection closed by upsd", address=self.address, ups=ups) from err
        except asyncio.LimitOverrunError as err:
            raise self._malformed(ups, f"reply line longer than {MAX_LINE} bytes") from err
        text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        try:
            return parse_line(text), len(raw)
        except ValueError as err:
            raise self._malformed(ups, f"{err}: {text[:80]!r}") from err

    def _err(self, words: list[str], ups: str | None) -> NutError:
        if len(words) < 2:
            return self._malformed(ups, "ERR without a code")
        code = words[1]
        detail = f": {' '.join(words[2:])}" if len(words) > 2 else ""
        return _ERRORS.get(code, NutProtocolError)(_describe(code) + detail, address=self.address, ups=ups,
                                                  code=code)

    def _malformed(self, ups: str | None, what: str) -> NutProtocolError:
        return NutProtocolError(f"malformed reply: {what}", address=self.address, ups=ups)


def _show(words: list[str]) -> str:
    text = " ".join(words)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _os_reason(err: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed (addr)``."""
    if err.errno is not None and err.errno > 0:  # socket.gaierror's codes are negative
        return os.strerror(err.errno)
    return err.strerror or str(err) or type(err).__name__


# -- conveniences ------------------------------------------------------------------------


async def read_ups(
    host: str,
    port: int,
    ups: str,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 2.0,
) -> dict[str, str]:
    """Connect, ``LIST VAR ups``, close: one poll, as upsmon does it.

    ``timeout`` bounds the connect and the reply each (the login counts as replies).
    """
    async with NutClient(host, port, username=username, password=password,
                         connect_timeout=timeout, read_timeout=timeout) as client:
        return await client.list_vars(ups)


def read_credentials_file(path: str | Path) -> tuple[str, str]:
    """``(username, password)`` from the first line of a ``username:password`` file.

    The password may contain ``:``; the username may not. Raises ``ValueError`` naming the
    file (never echoing the password) when the line is malformed, ``OSError`` when it cannot
    be read.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[0].strip() if lines else ""
    username, sep, password = first.partition(":")
    if not sep or not username.strip() or not password:
        raise ValueError(f"{path}: expected 'username:password' on the first line")
    return username.strip(), password


class NutReader:
    """The monitor's ``UpsReader``: one connection and ``LIST VAR`` per UPS per poll, never raising.

    A failed read is a snapshot without readings whose ``error`` is the :class:`NutError`
    message: ``stale`` (upsd answers, no current data) for data stale / driver not
    connected, unreachable for everything else (upsd gone, timeout, unknown UPS, garbage).
    Reading needs no login, so ``credentials_file`` is not used here. ``timeout`` bounds
    the connect and the reply each: the one given to :meth:`read` (the monitor's, from the
    configuration in force), else the reader's own.
    """

    def __init__(self, *, timeout: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock

    async def read(self, ups: Ups, timeout: float | None = None) -> Snapshot:
        try:
            variables = await read_ups(ups.host, ups.port, ups.name,
                                       timeout=self.timeout if timeout is None else timeout)
        except NutError as err:
            return failed(ups.name, self.clock(), str(err), stale=err.stale)
        except Exception as err:  # a bug here must not stop the monitor: report it as no data
            log.exception("unexpected error reading UPS %s", ups.name)
            return failed(ups.name, self.clock(), f"{ups.name}@{ups.host}:{ups.port}: unexpected error: {err!r}",
                          stale=False)
        return from_variables(ups.name, variables, self.clock())
