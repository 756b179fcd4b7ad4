"""Untrustworthy runtimes played through the real upsd + dummy-ups, read by the monitor on Hecate's NUT client.

One lab UPS for the module; each test plays an outage trace (dummy-ups ``TIMER`` steps) and polls
every 0.25 s, keeping every outcome, so what the decision did at each poll can be asserted:

* (b) ``battery.runtime: 0`` at 100 % charge on battery: no shutdown from the runtime, the
  ``runtime_untrusted`` alert in status and metrics; the charge floor and LB still trigger (two
  monitors on the same upsd, one with a charge floor, one without).
* (c) a runtime frozen at 18358 s while the charge falls: untrusted after ``runtime_frozen_polls``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hecate.adapters import metrics, nut
from hecate.adapters.store import StateStore
from hecate.domain import trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig
from hecate.domain.ups import Snapshot
from hecate.services import status
from hecate.services.monitor import Monitor
from hecate_lab.ups import LabUps, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

POLL_S = 0.25


@pytest.fixture(scope="module")
def lab_ups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUps]:
    ups = start_ups(tmp_path_factory.mktemp("battery"), "pyrphoros")
    try:
        yield ups
    finally:
        ups.stop()


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[trigger.Decision] = []

    async def __call__(self, decision: trigger.Decision, budget: Budget) -> None:
        self.decisions.append(decision)


def make_monitor(tmp_path: Path, ups: LabUps, name: str, **trigger_overrides: object) -> tuple[Monitor, Recorder]:
    config = HecateConfig.model_validate({
        "state_dir": str(tmp_path / name),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"default_budget_s": 300, "debounce_polls": 3, "poll_interval_s": POLL_S,
                    "poll_interval_on_battery_s": POLL_S, **trigger_overrides},
    })
    recorder = Recorder()
    return Monitor(config, nut.NutReader(timeout=1.0), StateStore(config.state_dir), recorder), recorder


Poll = tuple[trigger.Outcome, Snapshot]


def poll_until(monitors: list[Monitor], done: Callable[[], bool], timeout: float) -> list[list[Poll]]:
    """Poll every monitor every ``POLL_S`` until ``done()``; every monitor's outcomes and readings, in order."""
    history: list[list[Poll]] = [[] for _ in monitors]

    async def loop() -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the trace did not reach its end in time"
            for monitor, polls in zip(monitors, history, strict=True):
                outcome = await monitor.poll_once()
                [snap] = monitor.view.snapshots.values()
                polls.append((outcome, snap))
            await asyncio.sleep(POLL_S)

    asyncio.run(loop())
    return history


def alert_kinds(outcome: trigger.Outcome) -> set[trigger.AlertKind]:
    return {a.kind for a in outcome.alerts}


def test_a_zero_runtime_at_full_charge_never_triggers_but_the_charge_floor_and_lb_do(
        tmp_path: Path, lab_ups: LabUps) -> None:
    lab_ups.set(ups_status="OL", battery_charge=100, battery_runtime=0)
    # A UPS that reported 0 at full charge reports 0 for "no estimate": its 0 at 25 % is no runtime either, so
    # what is left to trigger is the floor and LB.
    floor, floor_rec = make_monitor(tmp_path, lab_ups, "floor", charge_floor_pct=30)
    plain, plain_rec = make_monitor(tmp_path, lab_ups, "plain")
    [before] = poll_until([plain], lambda: plain.view.polls >= 1, 5)
    assert alert_kinds(before[0][0]) == set()  # on mains: neither runtime_short nor alerted (status shows it)

    lab_ups.play([(0, {"ups.status": "OB DISCHRG"}), (2, {"battery.charge": 25}),
                  (2, {"ups.status": "OB LB DISCHRG", "battery.charge": 10})])
    snapshot: dict[str, object] = {}

    def on_battery_doc() -> bool:
        snap = plain.view.snapshots.get(lab_ups.name)
        if not snapshot and snap is not None and snap.on_battery and snap.charge_pct == 100:
            snapshot.update(status.document(plain, "direct"))
        return bool(plain_rec.decisions)

    floor_out, plain_out = poll_until([floor, plain], on_battery_doc, 20)

    full = [o for o, snap in plain_out if snap.on_battery and snap.charge_pct == 100]
    assert len(full) >= 5  # 2 s at 100 % on battery, "0 s left" at every poll: more polls than debounce_polls
    assert all(o.shutdown is None for o in full)
    assert all(trigger.AlertKind.runtime_untrusted in alert_kinds(o) for o, snap in plain_out if snap.on_battery)
    # the floor fires on the third poll at or below 30 %; the monitor without one waits for LB
    assert [d.reason for d in floor_rec.decisions] == [trigger.Reason.charge_floor]
    fired = next(i for i, (o, _) in enumerate(floor_out) if o.fresh)
    assert [snap.charge_pct is not None and snap.charge_pct <= 30 for _, snap in floor_out[fired - 2:fired + 1]] == [
        True] * 3
    assert [d.reason for d in plain_rec.decisions] == [trigger.Reason.low_battery]
    first_lb = next(i for i, (_, snap) in enumerate(plain_out) if "LB" in snap.flags)
    assert plain_out[first_lb][0].fresh  # LB acts on the first poll that shows it

    [row] = snapshot["ups"]  # type: ignore[misc]
    assert (row["on_battery"], row["runtime_s"], row["runtime_trusted"], row["runtime_untrusted_reason"]) == (
        True, 0.0, False, "zero")
    assert row["triggers"] == ["low_battery", "fsd", "deadtime"]
    text = metrics.render(metrics.registry_for(lambda: snapshot)).decode()
    assert 'hecate_ups_runtime_trusted{ups="pyrphoros"} 0.0' in text


def test_a_runtime_frozen_while_the_charge_falls_is_untrusted_after_n_polls(tmp_path: Path, lab_ups: LabUps) -> None:
    lab_ups.set(ups_status="OL", battery_charge=100, battery_runtime=18358)
    monitor, recorder = make_monitor(tmp_path, lab_ups, "frozen")
    lab_ups.play([(0, {"ups.status": "OB DISCHRG"}), (1, {"battery.charge": 97}), (1, {"battery.charge": 94})])

    def frozen() -> bool:
        return monitor.view.state.ups.get(lab_ups.name, trigger.UpsState()).runtime.doubt is not None

    [polls] = poll_until([monitor], frozen, 15)
    flagged = [i for i, (o, _) in enumerate(polls) if trigger.AlertKind.runtime_untrusted in alert_kinds(o)]
    assert flagged == [len(polls) - 1]  # the poll that found it frozen, the last one
    on_battery = [snap for _, snap in polls if snap.on_battery]
    assert len(on_battery) >= 5  # runtime_frozen_polls
    assert {snap.runtime_s for snap in on_battery} == {18358.0}
    charges = [snap.charge_pct or 0.0 for snap in on_battery]
    assert charges[0] - charges[-1] >= 5
    state = monitor.view.state.ups[lab_ups.name]
    assert state.runtime.doubt is not None
    assert state.runtime.doubt.value == "frozen"
    assert state.runtime_memory.same_polls >= 5  # runtime_frozen_polls
    assert "frozen at 18358 s" in state.runtime.why
    assert recorder.decisions == []
    doc = status.document(monitor, "direct")
    assert doc["ups"][0]["runtime_untrusted_reason"] == "frozen"
