"""Hecate's NUT client against the lab's real upsd + dummy-ups, and against hostile fake servers.

The real upsd (NUT 2.8) answers the edge cases like this -- the tests pin it down:

- unknown UPS: ``ERR UNKNOWN-UPS``; missing variable: ``ERR VAR-NOT-SUPPORTED``;
- driver stopped: ``ERR DRIVER-NOT-CONNECTED`` at once (``ERR DATA-STALE`` if it only hangs);
- ``INSTCMD`` without login: ``ERR USERNAME-REQUIRED``; a command the driver lacks:
  ``ERR CMD-NOT-SUPPORTED``;
- a wrong password is accepted with ``OK`` at ``PASSWORD``; only the ``INSTCMD`` fails,
  with ``ERR ACCESS-DENIED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hecate.adapters.nut import (
    MAX_LINE,
    NutAccessDenied,
    NutClient,
    NutDataStale,
    NutDriverNotConnected,
    NutError,
    NutProtocolError,
    NutReader,
    NutTimeout,
    NutUnknownUps,
    NutUnreachable,
    read_ups,
)
from hecate.domain.config import Ups
from hecate.domain.ups import Flag
from hecate_lab.procs import free_port
from hecate_lab.ups import LAB_PASSWORD, LAB_USER, LabUps, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

UPS = "pyrphoros"


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[LabUps]:
    lab_ups = start_ups(tmp_path, UPS)
    try:
        yield lab_ups
    finally:
        lab_ups.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- fake servers on loopback ----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeUpsd:
    """A TCP server on 127.0.0.1 running ``handler`` per connection, closing its side after."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError):
                await self.handler(reader, writer)
        finally:
            writer.transport.abort()
            self.tasks.discard(task)

    async def idle(self, timeout: float = 2.0) -> None:
        """Wait until every connection has ended (the client closed, the server noticed)."""
        async with asyncio.timeout(timeout):
            while self.tasks:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let the aborted transports release their sockets


@contextlib.asynccontextmanager
async def fake_upsd(handler: Handler) -> AsyncIterator[FakeUpsd]:
    fake = FakeUpsd(handler)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        for writer in fake.writers:
            writer.transport.abort()
        await fake.idle()
        await server.wait_closed()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read everything, never answer, until the client goes away."""
    while await reader.read(4096):
        pass


def replying(*lines: bytes, then_close: bool = False) -> Handler:
    """Answer the first request with ``lines`` (raw bytes, newline added), then stay silent or close."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        for line in lines:
            writer.write(line + b"\n")
        await writer.drain()
        if then_close:
            writer.close()
            return
        await silent(reader, writer)
    return handler


# -- the real upsd ---------------------------------------------------------------------------


async def test_list_vars_returns_what_the_lab_set_and_what_upsc_reads(ups: LabUps) -> None:
    values = await read_ups(ups.host, ups.port, UPS)
    assert values["ups.status"] == "OL"
    assert values["battery.runtime"] == "1800"
    assert values["battery.charge"] == "100"
    assert values["ups.load"] == "25"
    assert values["driver.name"] == "dummy-ups"
    assert values == await asyncio.to_thread(ups.read)


async def test_changed_values_are_visible(ups: LabUps) -> None:
    await asyncio.to_thread(ups.set, ups_status="OB DISCHRG", battery_runtime=120, battery_charge=42)
    values = await read_ups(ups.host, ups.port, UPS)
    assert values["ups.status"] == "OB DISCHRG"
    assert values["battery.runtime"] == "120"
    assert values["battery.charge"] == "42"
    assert values == await asyncio.to_thread(ups.read)


async def test_list_ups_and_get_var_and_an_err_keeps_the_connection(ups: LabUps) -> None:
    async with NutClient(ups.host, ups.port) as client:
        assert await client.list_ups() == {UPS: "Hecate lab UPS"}
        assert await client.get_var(UPS, "ups.status") == "OL"
        with pytest.raises(NutProtocolError) as info:
            await client.get_var(UPS, "no.such.var")
        assert info.value.code == "VAR-NOT-SUPPORTED"
        assert str(info.value) == f"{UPS}@{ups.host}:{ups.port}: var not supported (ERR VAR-NOT-SUPPORTED)"
        assert client.connected  # an ERR reply leaves the connection in step
        results = await asyncio.gather(*(client.get_var(UPS, var) for var in
                                         ("battery.runtime", "ups.load", "battery.charge") * 5))
        assert results == ["1800", "25", "100"] * 5  # concurrent requests are serialised


async def test_unknown_ups(ups: LabUps) -> None:
    with pytest.raises(NutUnknownUps) as info:
        await read_ups(ups.host, ups.port, "nosuchups")
    err = info.value
    assert str(err) == f"nosuchups@{ups.host}:{ups.port}: unknown UPS (ERR UNKNOWN-UPS)"
    assert (err.ups, err.address, err.code) == ("nosuchups", f"{ups.host}:{ups.port}", "UNKNOWN-UPS")
    assert not err.stale
    assert err.upsd_reachable
    async with NutClient(ups.host, ups.port) as client:
        with pytest.raises(NutUnknownUps):
            await client.get_var("nosuchups", "ups.status")


async def test_stopped_driver_is_stale_not_unreachable(ups: LabUps) -> None:
    await asyncio.to_thread(ups.stop_driver)
    started = time.monotonic()
    err: NutError | None = None
    while err is None:
        try:
            await read_ups(ups.host, ups.port, UPS)
        except (NutDriverNotConnected, NutDataStale) as caught:
            err = caught
        else:
            assert time.monotonic() - started < 10, "upsd kept serving data of a stopped driver"
            await asyncio.sleep(0.2)
    print(f"stopped driver: {err} after {time.monotonic() - started:.2f} s")
    assert err.stale
    assert err.upsd_reachable
    assert err.code in ("DRIVER-NOT-CONNECTED", "DATA-STALE")
    assert str(err).startswith(f"{UPS}@{ups.host}:{ups.port}: ")
    # upsd itself still answers
    async with NutClient(ups.host, ups.port) as client:
        assert UPS in await client.list_ups()


async def test_stopped_upsd_is_unreachable(ups: LabUps) -> None:
    await asyncio.to_thread(ups.stop_upsd)
    with pytest.raises(NutUnreachable) as info:
        await read_ups(ups.host, ups.port, UPS)
    err = info.value
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert str(err) == f"{ups.host}:{ups.port}: cannot connect: Connection refused"
    assert not err.stale
    assert not err.upsd_reachable


async def test_unresolvable_host_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: fail the lookup in the loop rather than asking the machine's resolver.
    async def no_such_host(host: str, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_host)
    with pytest.raises(NutUnreachable) as info:
        await read_ups("upsd.example.invalid", 3493, UPS)
    assert isinstance(info.value.__cause__, socket.gaierror)
    assert str(info.value) == "upsd.example.invalid:3493: cannot connect: Name or service not known"


async def test_instcmd_with_lab_login(ups: LabUps) -> None:
    async with NutClient(ups.host, ups.port, username=LAB_USER, password=LAB_PASSWORD) as client:
        await client.instcmd(UPS, "load.off")  # dummy-ups lists load.off: upsd says OK
        with pytest.raises(NutProtocolError) as info:
            await client.instcmd(UPS, "beeper.toggle")
        assert info.value.code == "CMD-NOT-SUPPORTED"
        assert str(info.value) == f"{UPS}@{ups.host}:{ups.port}: cmd not supported (ERR CMD-NOT-SUPPORTED)"
        with pytest.raises(NutProtocolError, match="CMD-NOT-SUPPORTED"):
            await client.instcmd(UPS, "test.battery.start", "with a value")
        assert await client.get_var(UPS, "ups.status") == "OL"


async def test_instcmd_without_login_is_access_denied(ups: LabUps) -> None:
    async with NutClient(ups.host, ups.port) as client:
        with pytest.raises(NutAccessDenied) as info:
            await client.instcmd(UPS, "load.off")
    assert info.value.code == "USERNAME-REQUIRED"


async def test_wrong_password_is_denied_at_the_instcmd(ups: LabUps) -> None:
    # upsd answers OK to any PASSWORD; the refusal comes with the command that needs it.
    async with NutClient(ups.host, ups.port, username=LAB_USER, password="wrong") as client:
        assert (await client.list_vars(UPS))["ups.status"] == "OL"  # reading needs no login
        with pytest.raises(NutAccessDenied) as info:
            await client.instcmd(UPS, "load.off")
    assert info.value.code == "ACCESS-DENIED"
    assert str(info.value) == f"{UPS}@{ups.host}:{ups.port}: access denied (ERR ACCESS-DENIED)"
    async with NutClient(ups.host, ups.port, username="nobody", password="x") as client:
        with pytest.raises(NutAccessDenied, match="ACCESS-DENIED"):
            await client.instcmd(UPS, "load.off")


def scripted(replies: dict[bytes, bytes], received: list[bytes]) -> Handler:
    """Answer each request by its verb from ``replies`` (``OK`` for others); record every request."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            received.append(line)
            writer.write(replies.get(line.split(b" ", 1)[0].strip(), b"OK") + b"\n")
            await writer.drain()
    return handler


async def test_set_fsd_logs_in_as_primary_then_sets_fsd() -> None:
    received: list[bytes] = []
    replies = {b"PRIMARY": b"OK PRIMARY-GRANTED", b"FSD": b"OK FSD-SET", b"LOGOUT": b"OK Goodbye"}
    async with (fake_upsd(scripted(replies, received)) as fake,
                NutClient("127.0.0.1", fake.port, username="hecate", password="pw") as client):
        assert await client.set_fsd(UPS) == "PRIMARY"
    assert received[:4] == [b'USERNAME "hecate"\n', b'PASSWORD "pw"\n', b"PRIMARY pyrphoros\n",
                            b"FSD pyrphoros\n"]


async def test_set_fsd_on_an_older_upsd_falls_back_to_master() -> None:
    received: list[bytes] = []
    replies = {b"PRIMARY": b"ERR UNKNOWN-COMMAND", b"MASTER": b"OK MASTER-GRANTED", b"FSD": b"OK FSD-SET"}
    async with (fake_upsd(scripted(replies, received)) as fake,
                NutClient("127.0.0.1", fake.port, username="hecate", password="pw") as client):
        assert await client.set_fsd(UPS) == "MASTER"
    assert b"MASTER pyrphoros\n" in received
    assert b"FSD pyrphoros\n" in received


@pytest.mark.parametrize(
    ("replies", "error", "match"),
    [
        ({b"PRIMARY": b"ERR ACCESS-DENIED"}, NutAccessDenied, "access denied"),
        ({b"PRIMARY": b"OK PRIMARY-GRANTED", b"FSD": b"ERR ACCESS-DENIED"}, NutAccessDenied, "access denied"),
        ({b"PRIMARY": b"OK PRIMARY-GRANTED", b"FSD": b"OK"}, NutProtocolError, "expected OK FSD-SET"),
        ({b"PRIMARY": b"WHAT"}, NutProtocolError, "expected OK to PRIMARY"),
        ({b"PRIMARY": b"ERR UNKNOWN-UPS"}, NutUnknownUps, "unknown UPS"),
    ],
)
async def test_set_fsd_refusals_and_odd_replies(replies: dict[bytes, bytes], error: type[NutError],
                                                match: str) -> None:
    received: list[bytes] = []
    async with (fake_upsd(scripted(replies, received)) as fake,
                NutClient("127.0.0.1", fake.port, username="hecate", password="pw") as client):
        with pytest.raises(error, match=match):
            await client.set_fsd(UPS)


async def test_no_sockets_leak_over_200_polls(ups: LabUps) -> None:
    await read_ups(ups.host, ups.port, UPS)  # warm up lazily opened fds (resolver, loop)
    before = open_fds()
    started = time.monotonic()
    for _ in range(200):
        values = await read_ups(ups.host, ups.port, UPS)
        assert values["ups.status"] == "OL"
    elapsed = time.monotonic() - started
    for _ in range(20):
        with pytest.raises(NutUnknownUps):
            await read_ups(ups.host, ups.port, "nosuchups")
    for _ in range(5):  # login + polite logout path
        async with NutClient(ups.host, ups.port, username=LAB_USER, password=LAB_PASSWORD) as client:
            await client.list_vars(UPS)
    assert open_fds() <= before, f"fds grew from {before} to {open_fds()}"
    print(f"200 polls in {elapsed:.2f} s ({elapsed / 200 * 1000:.1f} ms each)")


async def test_nut_reader_turns_reads_into_snapshots(ups: LabUps) -> None:
    reader = NutReader(timeout=1.0)
    cfg = Ups(name=UPS, host=ups.host, port=ups.port)
    await asyncio.to_thread(ups.set, ups_status="OB DISCHRG", battery_runtime=120)
    snap = await reader.read(cfg)
    assert snap.ok
    assert snap.on_battery
    assert snap.flags == {Flag.OB, Flag.DISCHRG}
    assert snap.runtime_s == 120
    unknown = await reader.read(Ups(name="nosuchups", host=ups.host, port=ups.port))
    assert not unknown.ok
    assert unknown.error == f"nosuchups@{ups.host}:{ups.port}: unknown UPS (ERR UNKNOWN-UPS)"
    await asyncio.to_thread(ups.stop_driver)
    async with asyncio.timeout(10):
        while not (snap := await reader.read(cfg)).stale:
            await asyncio.sleep(0.2)
    assert snap.reachable
    assert not snap.ok
    assert snap.error is not None
    assert snap.error.endswith("(ERR DRIVER-NOT-CONNECTED)") or snap.error.endswith("(ERR DATA-STALE)")
    await asyncio.to_thread(ups.stop_upsd)
    gone = await reader.read(cfg)
    assert not gone.reachable
    assert not gone.stale
    assert gone.error == f"{ups.host}:{ups.port}: cannot connect: Connection refused"


# -- hostile servers -------------------------------------------------------------------------


async def test_silent_server_times_out_and_leaks_nothing() -> None:
    async with fake_upsd(silent) as fake:
        port = fake.port
        before = open_fds()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(NutTimeout) as info:
                await read_ups("127.0.0.1", port, UPS, timeout=0.5)
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 1.0, elapsed
            print(f"silent server: NutTimeout after {elapsed:.3f} s (timeout 0.5 s)")
        assert str(info.value) == f"{UPS}@127.0.0.1:{port}: no complete reply to LIST within 0.5 s"
        assert not info.value.upsd_reachable
        await fake.idle()  # the server saw every connection end
        assert open_fds() <= before


async def test_silent_login_times_out() -> None:
    async with fake_upsd(silent) as fake:
        started = time.monotonic()
        with pytest.raises(NutTimeout, match="USERNAME"):
            async with NutClient("127.0.0.1", fake.port, username="u", password="p", read_timeout=0.3):
                pass
        assert time.monotonic() - started < 0.8


async def test_connect_timeout_when_the_listen_queue_is_full() -> None:
    # A listener that never accepts, with a full queue: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            before = open_fds()
            started = time.monotonic()
            with pytest.raises(NutTimeout) as info:
                async with NutClient("127.0.0.1", port, connect_timeout=0.3):
                    pass
            assert time.monotonic() - started < 0.8
            assert str(info.value) == f"127.0.0.1:{port}: no connection within 0.3 s"
            assert open_fds() <= before


async def test_cancelled_poll_closes_its_socket() -> None:
    peer_gone = asyncio.Event()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await silent(reader, writer)
        peer_gone.set()

    async with fake_upsd(watch) as fake:
        before = open_fds()
        task = asyncio.create_task(read_ups("127.0.0.1", fake.port, UPS, timeout=30))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(peer_gone.wait(), 2)  # the server saw our close
        await fake.idle()
        assert open_fds() <= before


async def test_polite_logout_on_close() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"LIST VAR"):
                writer.write(b"BEGIN LIST VAR pyrphoros\nEND LIST VAR pyrphoros\n")
            elif line.startswith(b"LOGOUT"):
                writer.write(b"OK Goodbye\n")
                writer.close()
                return
            else:
                writer.write(b"OK\n")

    async with fake_upsd(record) as fake:
        assert await read_ups("127.0.0.1", fake.port, UPS, username="hecate", password='p"w d') == {}
        await asyncio.sleep(0.05)
    assert received == [b'USERNAME "hecate"\n', b'PASSWORD "p\\"w d"\n', b"LIST VAR pyrphoros\n",
                        b"LOGOUT\n"]


async def test_escaped_values_from_the_wire() -> None:
    reply = (b"BEGIN LIST VAR pyrphoros",
             b'VAR pyrphoros ups.model "A \\"quoted\\" back\\\\slash"',
             b'VAR pyrphoros ups.status "OB LB"',
             b'VAR pyrphoros empty ""',
             b"END LIST VAR pyrphoros")
    async with fake_upsd(replying(*reply)) as fake:
        values = await read_ups("127.0.0.1", fake.port, UPS)
    assert values == {"ups.model": 'A "quoted" back\\slash', "ups.status": "OB LB", "empty": ""}


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ((b"\x00\xff\xfe garbage \x01",), "expected BEGIN LIST VAR pyrphoros"),
        ((b"HTTP/1.1 400 Bad Request",), "expected BEGIN LIST VAR pyrphoros"),
        ((b"ERR",), "ERR without a code"),
        ((b"BEGIN LIST VAR pyrphoros", b'VAR pyrphoros ups.status "OL'), "unterminated"),
        ((b"BEGIN LIST VAR pyrphoros", b"VAR pyrphoros ups.status"), "unexpected line in LIST VAR"),
        ((b"BEGIN LIST VAR pyrphoros", b'VAR other ups.status "OL"', b"END LIST VAR pyrphoros"),
         "another UPS"),
        ((b"x" * (MAX_LINE + 10),), "longer than"),
    ],
)
async def test_garbage_is_a_protocol_error(lines: tuple[bytes, ...], match: str) -> None:
    async with fake_upsd(replying(*lines)) as fake:
        with pytest.raises(NutProtocolError, match=match) as info:
            await read_ups("127.0.0.1", fake.port, UPS, timeout=1)
    assert info.value.code is None
    assert info.value.ups == UPS


async def test_endless_list_is_cut_off() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"BEGIN LIST VAR pyrphoros\n")
        line = b'VAR pyrphoros x "' + b"y" * 1000 + b'"\n'
        while True:
            writer.write(line * 64)
            await writer.drain()

    async with fake_upsd(endless) as fake:
        with pytest.raises(NutProtocolError, match="LIST reply longer than"):
            await read_ups("127.0.0.1", fake.port, UPS, timeout=5)


async def test_connection_closed_mid_reply_is_unreachable() -> None:
    async with fake_upsd(replying(b"BEGIN LIST VAR pyrphoros", b'VAR pyrphoros ups.status "OL"',
                                  then_close=True)) as fake:
        with pytest.raises(NutUnreachable, match="connection closed by upsd") as info:
            await read_ups("127.0.0.1", fake.port, UPS)
    assert not info.value.upsd_reachable


async def test_client_is_unusable_after_a_timeout() -> None:
    async with fake_upsd(silent) as fake, NutClient("127.0.0.1", fake.port, read_timeout=0.2) as client:
        with pytest.raises(NutTimeout):
            await client.list_ups()
        assert not client.connected
        with pytest.raises(NutUnreachable, match="not connected"):
            await client.list_ups()


# -- escape sequences from upsd never reach the terminal ------------------------------------------

ESCAPES = "\x1b[2J\x1b[H\x1b]0;owned\x07"  # clear screen, cursor home, window title


async def hecate_status(tmp_path: Path, port: int) -> str:
    """``hecate status`` (a real process, polling directly) on one UPS at ``port``; its stdout."""
    config = tmp_path / "hecate.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmetrics: {{listen: '127.0.0.1:{free_port()}'}}\n"
                      f"ups: [{{name: {UPS}, host: 127.0.0.1, port: {port}}}]\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hecate", "status", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, err.decode()  # WARNING: on battery or stale, not armed, no daemon running
    return out.decode()


def assert_printable(out: str) -> None:
    for line in out.splitlines():
        assert line.isprintable(), f"control characters reach the terminal: {line!r}"


async def test_real_upsd_drops_control_bytes_and_hecate_shows_the_rest(ups: LabUps, tmp_path: Path) -> None:
    # What a driver reports passes through upsd's own parser: NUT 2.8 drops the control bytes, the
    # printable rest of an escape sequence ("[2J") arrives. Hecate reads the flags and prints it as is.
    await asyncio.to_thread(ups.set_vars, {"ups.status": f"OB {ESCAPES}LB", "ups.model": f"M{ESCAPES}"}, False)
    async with asyncio.timeout(10):
        while (values := await read_ups(ups.host, ups.port, UPS))["ups.model"] == "Lab UPS 1500":
            await asyncio.sleep(0.2)
    assert values["ups.status"] == "OB [2J[H]0;ownedLB"
    snap = await NutReader(timeout=1.0).read(Ups(name=UPS, host=ups.host, port=ups.port))
    assert snap.flags == {Flag.OB}
    assert snap.unknown_tokens == ("[2J[H]0;ownedLB",)
    out = await hecate_status(tmp_path, ups.port)
    assert_printable(out)
    assert "OB [2J[H]0;ownedLB" in out


async def test_a_hostile_upsds_escape_sequences_never_reach_the_terminal(tmp_path: Path) -> None:
    status = f"OB {ESCAPES}LB \x9b31m\u202e".encode()
    reply = (b"BEGIN LIST VAR pyrphoros",
             b'VAR pyrphoros ups.status "' + status + b'"',
             b'VAR pyrphoros battery.runtime "600"',
             b'VAR pyrphoros ups.model "' + b"M" * 5000 + b'"',
             b"END LIST VAR pyrphoros")
    async with fake_upsd(replying(*reply)) as fake:
        snap = await NutReader(timeout=1.0).read(Ups(name=UPS, port=fake.port))
        assert snap.flags == {Flag.OB}  # "\x07LB" is not LB, as upsmon reads it
        assert snap.status == "OB LB "  # the 8-bit CSI "\x9b31m" goes whole, the bidi override too
        assert len(snap.variables["ups.model"]) == 256
        out = await hecate_status(tmp_path, fake.port)
    assert_printable(out)
    assert "status not understood: 'OB LB '" in out
    err = (b"ERR DATA-STALE \x1b]0;owned\x07\x1b[31mdriver says hi",)
    async with fake_upsd(replying(*err)) as fake:
        snap = await NutReader(timeout=1.0).read(Ups(name=UPS, port=fake.port))
        assert snap.stale
        assert snap.error == f"{UPS}@127.0.0.1:{fake.port}: data stale: driver says hi (ERR DATA-STALE)"
        out = await hecate_status(tmp_path, fake.port)
    assert_printable(out)
    assert "no current data: " in out


def test_all_errors_are_nut_errors() -> None:
    for kind in (NutUnreachable, NutTimeout, NutDataStale, NutDriverNotConnected, NutUnknownUps,
                 NutAccessDenied, NutProtocolError):
        assert issubclass(kind, NutError)
