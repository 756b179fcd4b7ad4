"""Recording outages: the recorder's outage edges and bounds, the discharge state file (atomic,
corrupt, capped, never overwritten blindly), and the monitor writing them off its poll's path."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from hecate.adapters.store import DISCHARGE, StateStore
from hecate.domain import discharge, trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot, failed, from_variables
from hecate.services.discharge import OutageRecorder
from hecate.services.monitor import Monitor


def reading(status: str, charge: float, at: float, load: float = 40.0) -> Snapshot:
    return from_variables("pyr", {"ups.status": status, "battery.charge": str(charge), "ups.load": str(load),
                                  "battery.voltage": "24.5"}, at)


def test_an_outage_is_recorded_from_its_first_on_battery_poll_to_mains(tmp_path: Path) -> None:
    rec = OutageRecorder(StateStore(tmp_path), wall=lambda: 1_800_000_000.0)
    assert rec.observe([reading("OL", 100, 0)], 0.0) == []
    assert rec.observe([reading("OB DISCHRG", 99, 1)], 1.0) == []
    assert rec.observe([failed("pyr", 2.0, "gone", stale=True)], 2.0) == []  # silence does not end it
    assert rec.observe([reading("OB DISCHRG", 97, 3)], 3.0) == []
    assert [o.ups for o in rec.in_progress()] == ["pyr"]
    assert not rec.in_progress()[0].ended
    ended = rec.observe([reading("OL CHRG", 97, 4)], 4.0)
    assert len(ended) == 1
    assert ended[0].ended
    assert [(s.t, s.charge_pct, s.load_pct, s.battery_voltage) for s in ended[0].samples] == [
        (0.0, 99.0, 40.0, 24.5), (2.0, 97.0, 40.0, 24.5)]
    assert ended[0].started_at.startswith("2027-01-15T08:00:00")
    assert rec.open == {}


def test_a_long_outage_stays_bounded_in_memory(tmp_path: Path) -> None:
    rec = OutageRecorder(StateStore(tmp_path))
    for i in range(5 * discharge.MAX_SAMPLES):
        rec.observe([reading("OB", 100 - i / 100, i)], float(i))
    assert len(rec.open["pyr"].samples) <= 2 * discharge.MAX_SAMPLES
    outage = rec.in_progress()[0]
    assert len(outage.samples) <= discharge.MAX_SAMPLES
    assert outage.samples[-1].t == 5 * discharge.MAX_SAMPLES - 1


def outage(start: str, rate: float = 0.1) -> discharge.Outage:
    samples = tuple(discharge.Sample(float(t), 100 - rate * t, 40.0) for t in range(0, 60, 2))
    return discharge.Outage("pyr", start, samples)


def test_the_file_is_written_atomically_mode_0600_and_read_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    history = store.record_outages([outage("2026-01-01T00:00:00Z")])
    assert store.load_discharge() == history
    assert oct(os.stat(store.discharge_path).st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".discharge.json.*.tmp"))
    assert OutageRecorder(store).models["pyr"].rates[0].rate_pct_per_s == pytest.approx(0.1)


def test_the_file_is_capped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for day in range(1, 26):
        store.record_outages([outage(f"2026-01-{day:02d}T00:00:00Z")])
    kept = store.load_discharge()["pyr"]
    assert len(kept) == discharge.MAX_OUTAGES_PER_UPS
    assert kept[-1].started_at == "2026-01-25T00:00:00Z"


def test_a_corrupt_file_reads_as_empty_is_moved_aside_at_the_next_write_and_then_a_new_one_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    store.discharge_path.write_bytes(b'{"version": 1, "ups": {"pyr": "torn')
    with caplog.at_level(logging.WARNING):
        assert OutageRecorder(store).models == {}
    assert store.discharge_path.read_bytes().endswith(b"torn")  # reading moves nothing
    assert any("discharge.json is corrupt" in w for w in store.warnings)
    store.record_outages([outage("2026-01-01T00:00:00Z")])
    aside = list(tmp_path.glob("discharge.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().endswith(b"torn")
    assert any("moved it to" in w for w in store.warnings)
    assert list(store.load_discharge()) == ["pyr"]


def test_a_direct_status_poll_leaves_a_corrupt_file_where_it_is(tmp_path: Path) -> None:
    import socket

    import yaml
    from click.testing import CliRunner

    from hecate.cli import cli

    with socket.socket() as s:  # a port where nothing listens, and no daemon socket: status polls directly
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "hecate.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "ups": [{"name": "pyr", "host": "127.0.0.1", "port": port}],
                                      "metrics": {"socket": str(tmp_path / "hecate.sock")}}))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "discharge.json").write_bytes(b"torn")
    ran = CliRunner().invoke(cli, ["status", "--config", str(config), "--json"])
    assert ran.exit_code == 3, ran.output
    assert (state / "discharge.json").read_bytes() == b"torn"
    assert not list(state.glob("discharge.json.corrupt-*"))


def test_a_scattered_history_gives_no_estimate_and_says_why(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.record_outages([outage("2026-01-01T00:00:00Z", 0.1), outage("2026-01-02T00:00:00Z", 0.1),
                          outage("2026-01-03T00:00:00Z", 1.0)])
    rec = OutageRecorder(store)
    assert rec.estimates([reading("OB DISCHRG", 100, 0)]) == {}
    assert rec.note("pyr") == discharge.SCATTERED
    assert rec.note("other") is None


def test_a_file_that_cannot_be_read_is_not_overwritten(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.discharge_path.mkdir()  # not a regular file: cannot be read
    history = store.record_outages([outage("2026-01-01T00:00:00Z")])
    assert list(history) == ["pyr"]  # the model still learns, in memory
    assert store.discharge_path.is_dir()
    assert store.write_failures[DISCHARGE].active


def test_a_failed_write_is_counted_never_raised(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir = tmp_path / "gone"  # the state dir vanished (an unmounted disk): the write fails
    history = store.record_outages([outage("2026-01-01T00:00:00Z")])
    assert list(history) == ["pyr"]
    assert store.write_failures[DISCHARGE].count == 1


class Reader:
    def __init__(self) -> None:
        self.status, self.charge = "OL", 100.0

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, {"ups.status": self.status, "battery.charge": str(self.charge),
                                         "ups.load": "40"}, 0.0)


def test_the_monitor_records_an_outage_off_its_poll_and_learns_from_it(tmp_path: Path) -> None:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path / "state"),
                                          "ups": [{"name": "pyr", "host": "127.0.0.1"}],
                                          "trigger": {"default_budget_s": 60, "min_budget_s": 1}})
    decisions: list[trigger.Decision] = []

    async def handler(d: trigger.Decision, b: Budget) -> None:
        decisions.append(d)

    clock = [0.0]
    reader = Reader()
    monitor = Monitor(config, reader, StateStore(config.state_dir), handler, clock=lambda: clock[0])

    async def scenario() -> None:
        await monitor.poll_once()
        reader.status = "OB DISCHRG"
        for i in range(20):  # 1 %/s for 20 s
            clock[0], reader.charge = float(i), 100.0 - i
            await monitor.poll_once()
        reader.status = "OL CHRG"
        await monitor.poll_once()
        await monitor.outages.flush()

    asyncio.run(scenario())
    assert monitor.store.load_discharge()["pyr"][0].ended
    reader.charge = 50.0
    asyncio.run(monitor.poll_once())
    est = monitor.view.estimates["pyr"]
    assert est.seconds == pytest.approx(50.0)
    assert est.outages == 1
    assert decisions == []


class BrokenModel(OutageRecorder):
    def estimates(self, snapshots: object) -> dict[str, discharge.RuntimeEstimate]:
        raise ZeroDivisionError("a model that fails")


def test_a_failing_model_never_stops_a_poll_from_deciding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path / "state"),
                                          "ups": [{"name": "pyr", "host": "127.0.0.1"}]})
    decisions: list[trigger.Decision] = []

    async def handler(d: trigger.Decision, b: Budget) -> None:
        decisions.append(d)

    reader = Reader()
    monitor = Monitor(config, reader, StateStore(config.state_dir), handler)
    monitor.outages = BrokenModel(monitor.store)
    with caplog.at_level(logging.ERROR):
        asyncio.run(monitor.poll_once())
        reader.status = "OB DISCHRG LB"
        outcome = asyncio.run(monitor.poll_once())
    assert outcome.shutdown is not None
    assert outcome.shutdown.reason is trigger.Reason.low_battery
    assert [d.reason for d in decisions] == [trigger.Reason.low_battery]
    assert monitor.view.estimates == {}
    assert sum("discharge model's estimates failed" in r.message for r in caplog.records) == 1  # logged once
