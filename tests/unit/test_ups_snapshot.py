"""Snapshot parsing against real `upsc` dumps (NUT device dump library) and hostile values."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.domain.ups import Flag, from_variables, parse_number, parse_status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upsc"


def load_dump(name: str) -> dict[str, str]:
    values = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values[key] = value
    return values


@pytest.mark.parametrize(
    ("dump", "flags", "runtime", "charge", "load", "voltage"),
    [
        ("apc-back-ups-es-650g2.dev", {Flag.OL}, 2079.0, 100.0, 15.0, 250.0),
        ("eaton-5e1100iusb.dev", {Flag.OL, Flag.CHRG}, 3160.0, 100.0, 8.0, 227.0),
        ("cyberpower-cp1500pfclcd.dev", {Flag.OL}, 1530.0, 100.0, 25.0, 116.0),
        ("mustek-powermust.dev", {Flag.OL}, None, 100.0, 7.0, 241.4),  # blazer_usb: no runtime
        ("powercool-1500va.dev", {Flag.OL}, None, None, 11.0, 246.0),  # nutdrv_qx: no charge either
    ],
)
def test_real_dumps_parse(dump: str, flags: set[Flag], runtime: float | None, charge: float | None,
                          load: float, voltage: float) -> None:
    snap = from_variables("ups", load_dump(dump), at=0.0)
    assert snap.flags == flags
    assert snap.unknown_tokens == ()
    assert (snap.runtime_s, snap.charge_pct, snap.load_pct, snap.input_voltage) == (runtime, charge, load, voltage)
    assert snap.on_mains
    assert not snap.on_battery


def test_real_dump_on_battery() -> None:
    values = load_dump("apc-back-ups-es-650g2.dev") | {"ups.status": "OB DISCHRG", "battery.runtime": "412"}
    snap = from_variables("pyrphoros", values, at=5.0)
    assert snap.on_battery
    assert not snap.on_mains
    assert snap.runtime_s == 412.0


def test_unknown_tokens_are_kept_not_fatal() -> None:
    flags, unknown = parse_status("OL ECO ALARM OL")
    assert flags == {Flag.OL}
    assert unknown == ("ECO", "ALARM")
    assert parse_status(None) == (frozenset(), ())


@pytest.mark.parametrize("raw", [None, "", "  ", "unknown", "UNKNOWN", "n/a", "nan", "NaN", "inf", "-inf", "-1",
                                 "1e400", "abc", "12,5", "0x10", "700000"])
def test_bad_runtime_is_not_known(raw: str | None) -> None:
    assert parse_number(raw, 0.0, 7 * 24 * 3600.0) is None


def test_good_numbers() -> None:
    assert parse_number(" 42 ", 0, 100) == 42.0
    assert parse_number("0", 0, 100) == 0.0
    assert parse_number("99.5", 0, 100) == 99.5
    assert parse_number("101", 0, 100) is None


@given(st.dictionaries(st.sampled_from(["ups.status", "battery.runtime", "battery.charge", "ups.load",
                                        "input.voltage"]), st.text(max_size=30)))
def test_property_any_values_parse_without_raising(values: dict[str, str]) -> None:
    snap = from_variables("ups", values, at=0.0)
    for number in (snap.runtime_s, snap.charge_pct, snap.load_pct, snap.input_voltage):
        assert number is None or number >= 0
