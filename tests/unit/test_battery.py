"""Runtime sanity (which runtimes the trigger trusts), property-based and against real device dumps."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.domain import battery
from hecate.domain.battery import Doubt, Limits, Memory
from hecate.domain.ups import Snapshot, from_variables

LIMITS = Limits(zero_charge_pct=50.0, max_plausible_s=86_400.0, frozen_polls=5)
NUT_DDL = Path(__file__).resolve().parents[1] / "fixtures" / "nut-ddl"
UPSC = Path(__file__).resolve().parents[1] / "fixtures" / "upsc"


def snap(status: str = "OB DISCHRG", runtime: str | None = "900", charge: str | None = "80",
         load: str | None = "30") -> Snapshot:
    variables = {"ups.status": status}
    for key, value in (("battery.runtime", runtime), ("battery.charge", charge), ("ups.load", load)):
        if value is not None:
            variables[key] = value
    return from_variables("pyr", variables, 0.0)


def doubts(readings: list[Snapshot], limits: Limits = LIMITS) -> list[Doubt | None]:
    memory, out = Memory(), []
    for reading in readings:
        verdict, memory = battery.judge(memory, reading, limits)
        out.append(verdict.doubt)
    return out


def load_dump(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep and not key.startswith("#"):
            values[key] = value
    return values


# -- the rules, one by one ----------------------------------------------------------------


def test_zero_at_high_charge_is_untrusted_on_mains_and_on_battery() -> None:
    assert doubts([snap("OL", "0", "100"), snap("OB DISCHRG", "0", "100")]) == [Doubt.zero, Doubt.zero]


def test_zero_at_low_charge_is_a_runtime() -> None:
    assert doubts([snap("OB DISCHRG", "0", "20")]) == [None]


def test_a_ups_that_reported_zero_at_a_high_charge_reports_zero_for_no_estimate_at_any_charge() -> None:
    """nutdrv_qx: 0 on mains at full charge, then 0 all through the outage; its 0 at 20 % means no more."""
    readings = [snap("OL", "0", "100"), snap("OL", "1800", "100"), snap("OB DISCHRG", "0", "20"),
                snap("OL", "0", "30"), snap("OB DISCHRG", "0", "10")]
    assert doubts(readings) == [Doubt.zero, None, Doubt.zero, Doubt.zero, Doubt.zero]
    assert doubts(readings[2:]) == [None, None, None]  # never seen at a high charge: a 0 is a runtime


def test_zero_with_the_charge_unknown_is_a_runtime() -> None:
    assert doubts([snap("OB DISCHRG", "0", None)]) == [None]  # nothing says it is wrong: act on it


@pytest.mark.parametrize("value", ["65535", "100000", "-5", "1e12"])
def test_implausible_values(value: str) -> None:
    assert doubts([snap("OL", value, "100")]) == [Doubt.implausible]


def test_the_ceiling_is_configurable() -> None:
    assert doubts([snap("OL", "20000", "100")], Limits(max_plausible_s=18_000)) == [Doubt.implausible]
    assert doubts([snap("OL", "18000", "100")], Limits(max_plausible_s=18_000)) == [None]


@pytest.mark.parametrize("value", [None, "", "unknown", "n/a"])
def test_missing(value: str | None) -> None:
    assert doubts([snap("OL", value, "100")]) == [Doubt.missing]


def test_frozen_after_n_polls_while_the_charge_falls() -> None:
    readings = [snap("OB DISCHRG", "18358", str(100 - 2 * i)) for i in range(8)]
    # the charge falls 2 points a poll: 5 points down at the 4th poll, 5 polls at the 5th
    assert doubts(readings) == [None] * 4 + [Doubt.frozen] * 4


def test_a_runtime_that_moves_again_is_trusted_again() -> None:
    readings = [snap("OB DISCHRG", "18358", str(100 - 2 * i)) for i in range(6)] + [snap("OB DISCHRG", "600", "88")]
    assert doubts(readings)[-2:] == [Doubt.frozen, None]


def test_a_constant_runtime_at_a_constant_charge_is_not_frozen() -> None:
    assert doubts([snap("OB DISCHRG", "900", "80")] * 20) == [None] * 20


def test_mains_ends_the_frozen_run() -> None:
    frozen = [snap("OB DISCHRG", "1000", str(100 - 2 * i)) for i in range(6)]
    again = [snap("OB DISCHRG", "1000", str(80 - 2 * i)) for i in range(3)]
    assert doubts([*frozen, snap("OL CHRG", "1000", "88"), *again])[-4:] == [None, None, None, None]


def test_a_runtime_rising_at_steady_load_while_the_charge_falls_is_untrusted() -> None:
    readings = [snap("OB DISCHRG", "600", "60", "30"), snap("OB DISCHRG", "3000", "59", "31")]
    assert doubts(readings) == [None, Doubt.rising]


def test_a_runtime_rising_because_the_load_fell_is_trusted() -> None:
    readings = [snap("OB DISCHRG", "600", "60", "60"), snap("OB DISCHRG", "3000", "59", "10")]
    assert doubts(readings) == [None, None]


def test_a_rise_is_judged_against_the_last_trusted_reading_so_it_stays_untrusted() -> None:
    readings = [snap("OB DISCHRG", "600", "60"), snap("OB DISCHRG", "3000", "59"), snap("OB DISCHRG", "2990", "58")]
    assert doubts(readings) == [None, Doubt.rising, Doubt.rising]


def test_a_new_level_that_holds_becomes_the_reference() -> None:
    """One low reading right after the transfer, then the real level: trusted once it held for frozen_polls."""
    readings = [snap("OB DISCHRG", "200", "100")] + [snap("OB DISCHRG", str(1500 - 10 * i), "99") for i in range(8)]
    assert doubts(readings) == [None] + [Doubt.rising] * 4 + [None] * 4


def test_a_level_that_keeps_rising_is_never_the_reference() -> None:
    readings = [snap("OB DISCHRG", "200", "100")] + [snap("OB DISCHRG", str(1500 + 10 * i), "99") for i in range(12)]
    assert doubts(readings) == [None] + [Doubt.rising] * 12


def test_the_reason_is_named() -> None:
    verdict, _ = battery.judge(Memory(), snap("OL", "0", "100"), LIMITS)
    assert verdict.why == "battery.runtime 0 s at 100 % charge (at or above 50 %): firmware that reports no estimate"


# -- properties -------------------------------------------------------------------------

statuses = st.sampled_from(["OL", "OB", "OB DISCHRG", "OL CHRG", "OB LB", "WAIT", "", "OFF", "OB CAL"])
raw = st.one_of(st.none(), st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
                st.floats(allow_nan=True, allow_infinity=True).map(str))


@given(st.lists(st.tuples(statuses, raw, raw, raw), max_size=30),
       st.builds(Limits, st.floats(1, 100), st.floats(1, 86_400), st.integers(2, 50)))
def test_property_nothing_raises_on_any_input(readings: list[tuple[str, str | None, str | None, str | None]],
                                              limits: Limits) -> None:
    doubts([snap(*r) for r in readings], limits)


@given(st.integers(2, 50), st.lists(st.integers(1, 5), min_size=1, max_size=60), st.integers(1, 40))
def test_property_a_falling_runtime_is_never_untrusted(start_min: int, steps: list[int], load: int) -> None:
    """A plausible discharge: runtime and charge fall together at steady load."""
    runtime, charge, readings = start_min * 600.0, 100.0, []
    for step in steps:
        readings.append(snap("OB DISCHRG", f"{runtime:g}", f"{charge:g}", str(load)))
        runtime, charge = max(0.0, runtime - step * 30), max(0.0, charge - step * 0.5)
        if charge < 50 or runtime <= 0:
            break
    assert doubts(readings) == [None] * len(readings)


@given(st.integers(1, 60_000), st.integers(2, 20), st.integers(1, 4))
def test_property_a_constant_runtime_while_the_charge_falls_is_untrusted_after_n_polls(
        value: int, n: int, fall: int) -> None:
    polls = n + 5  # the charge stays at or above 0 %
    readings = [snap("OB DISCHRG", str(value), f"{100 - fall * i}") for i in range(polls)]
    got = doubts(readings, Limits(frozen_polls=n))
    first = next(i for i, d in enumerate(got) if d is not None)
    needed = max(n, 1 + -(-battery.FROZEN_CHARGE_DROP_PCT // fall))  # polls for N readings and a 5-point drop
    assert first == needed - 1
    assert set(got[first:]) == {Doubt.frozen}


# -- real device dumps ------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "dump", "doubt"), [
    (NUT_DDL, "APC__Back-UPS_BK650M2-CH__usbhid-ups__2.8.0__01.dev", None),  # OL DISCHRG, 3618 s
    (NUT_DDL, "Eaton__5SC_750__usbhid-ups__2.7.2__01.dev", None),  # OL CHRG TRIM OFF, 9047 s at 0 % load
    (NUT_DDL, "Tripp_Lite__SMART1500LCDT__usbhid-ups__2.6.3__01.dev", None),  # " 10800": odd spacing
    (NUT_DDL, "Salicru__SPS_ONE_2000VA__nutdrv_qx__2.7.2__01.dev", Doubt.missing),  # nutdrv_qx: no runtime
    (NUT_DDL, "Eaton__Powerware_9130__usbhid-ups__2.6.4__01.dev", Doubt.missing),  # OB, no battery data at all
    (UPSC, "mustek-powermust.dev", Doubt.missing),
    (UPSC, "apc-back-ups-es-650g2.dev", None),
])
def test_real_dumps(folder: Path, dump: str, doubt: Doubt | None) -> None:
    variables = load_dump(folder / dump)
    assert doubts([from_variables("ups", variables, 0.0)]) == [doubt]


def test_a_nutdrv_qx_unit_reporting_zero_at_full_charge_is_untrusted() -> None:
    """The issue's case: the Salicru dump (nutdrv_qx) as such units report it, with ``battery.runtime: 0``."""
    variables = load_dump(NUT_DDL / "Salicru__SPS_ONE_2000VA__nutdrv_qx__2.7.2__01.dev")
    variables |= {"battery.runtime": "0", "battery.charge": "100"}
    verdict, _ = battery.judge(Memory(), from_variables("ups", variables, 0.0), LIMITS)
    assert verdict.doubt is Doubt.zero
