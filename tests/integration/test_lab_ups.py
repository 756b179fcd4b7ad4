"""The lab UPS is the real NUT upsd + dummy-ups, read back here with the real upsc."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from hecate_lab.ups import LabUps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def upsc(ups: LabUps, var: str) -> str:
    return subprocess.run(["upsc", ups.address, var], capture_output=True, text=True,
                          check=True, timeout=5).stdout.strip()


def test_upsd_serves_the_values_the_lab_set(ups: LabUps) -> None:
    assert upsc(ups, "ups.status") == "OL"
    assert upsc(ups, "battery.runtime") == "1800"
    ups.set(ups_status="OB DISCHRG", battery_runtime=420, battery_charge=61, ups_load=37)
    assert upsc(ups, "ups.status") == "OB DISCHRG"
    assert upsc(ups, "battery.runtime") == "420"
    assert upsc(ups, "battery.charge") == "61"
    assert upsc(ups, "ups.load") == "37"


def test_a_change_is_served_within_two_seconds(ups: LabUps) -> None:
    for runtime in (900, 899, 898):  # same-second rewrites must not be missed
        started = time.monotonic()
        ups.set(wait=False, battery_runtime=runtime)
        while upsc(ups, "battery.runtime") != str(runtime):
            assert time.monotonic() - started < 2.0, f"runtime {runtime} not served within 2 s"
            time.sleep(0.05)


def test_speaks_the_nut_protocol_on_its_port(ups: LabUps) -> None:
    with socket.create_connection((ups.host, ups.port), timeout=5) as conn:
        conn.sendall(b"GET VAR pyrphoros ups.status\nGET VAR nosuchups ups.status\n")
        reply = b""
        while reply.count(b"\n") < 2:
            chunk = conn.recv(4096)
            assert chunk, "upsd closed the connection"
            reply += chunk
    assert reply.splitlines() == [b'VAR pyrphoros ups.status "OL"', b"ERR UNKNOWN-UPS"]


def test_stopping_upsd_refuses_connections_and_stop_is_clean(ups: LabUps) -> None:
    upsd_pid, driver_pid = ups.upsd_pid, ups.driver_pid
    ups.stop_upsd()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ups.host, ups.port), timeout=2).close()
    ups.stop()
    for pid in (upsd_pid, driver_pid):
        assert not Path(f"/proc/{pid}").exists()


def test_killed_driver_makes_upsd_report_it(ups: LabUps) -> None:
    ups.stop_driver()
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(["upsc", ups.address, "ups.status"], capture_output=True, text=True,
                             check=False, timeout=5)
        if out.returncode != 0:
            break
        assert time.monotonic() < deadline, "upsd kept serving a dead driver's data"
        time.sleep(0.2)
    assert "Driver not connected" in out.stderr or "Data stale" in out.stderr


def test_a_played_trace_is_served_in_order_once_and_set_goes_on_from_its_end(ups: LabUps) -> None:
    ups.play([(0, {"ups.status": "OB DISCHRG", "battery.charge": 90}), (1, {"battery.charge": 80})])
    seen: list[str] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and (not seen or seen[-1] != "80"):
        charge = ups.read().get("battery.charge", "")
        if not seen or seen[-1] != charge:
            seen.append(charge)
        time.sleep(0.1)
    assert seen[-2:] == ["90", "80"], seen
    time.sleep(1.5)  # played once: the trace does not start again
    assert ups.read()["battery.charge"] == "80"
    ups.set(ups_status="OL")
    assert ups.read()["battery.charge"] == "80"
    with pytest.raises(ValueError, match="whole seconds"):
        ups.play([(0, {"battery.charge": 70}), (0.5, {"battery.charge": 60})])
    assert ups.values["battery.charge"] == "80"  # a refused trace changes nothing
