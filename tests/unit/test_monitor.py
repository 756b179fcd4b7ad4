"""The monitor loop with a fake reader: handler retries, unlatching, poll interval, budget reload, and
the configuration it owns (a policy applied at runtime wakes it and reaches every consumer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hecate.adapters.store import StateStore
from hecate.daemon import Daemon
from hecate.domain import trigger
from hecate.domain.budget import Budget
from hecate.domain.config import Envelope, HecateConfig, Policy, Ups
from hecate.domain.ups import Snapshot, from_variables
from hecate.services.monitor import Monitor, dry_run_recorder

pytestmark = pytest.mark.timeout(30)


class FakeReader:
    def __init__(self) -> None:
        self.status = {"pyr": "OL"}
        self.now = 0.0
        self.timeouts: list[float] = []

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        self.timeouts.append(timeout)
        return from_variables(ups.name, {"ups.status": self.status[ups.name], "battery.runtime": "100"}, self.now)


def config(tmp_path: Path) -> HecateConfig:
    return HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": "pyr"}]})


def poll(monitor: Monitor, reader: FakeReader) -> trigger.Outcome:
    reader.now += 1
    return asyncio.run(monitor.poll_once())


def test_a_failing_handler_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    calls: list[str] = []

    async def flaky(decision: trigger.Decision, budget: Budget) -> None:
        calls.append(decision.reason.value)
        if len(calls) < 3:
            raise OSError("No space left on device")

    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), flaky, clock=lambda: reader.now)
    reader.status["pyr"] = "OB LB"
    for _ in range(5):
        poll(monitor, reader)
    assert calls == ["low_battery"] * 3  # failed twice, then done; never called again while latched


def test_standing_fsd_on_mains_is_recorded_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, store, dry_run_recorder(store), clock=lambda: reader.now,
                      unlatch_on_mains=True)
    reader.status["pyr"] = "OL FSD"  # upsd keeps FSD until it restarts
    for _ in range(10):
        poll(monitor, reader)
    assert len(store.load_runs()) == 1
    reader.status["pyr"] = "OL"
    poll(monitor, reader)
    assert monitor.view.state.latched is None


def test_faster_polls_on_battery(tmp_path: Path) -> None:
    reader = FakeReader()
    slow_on_mains = _with_trigger(config(tmp_path), poll_interval_s=2.0)  # the default polls every 1 s on both
    monitor = Monitor(slow_on_mains, reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    poll(monitor, reader)
    assert monitor.interval() == 2.0
    reader.status["pyr"] = "OB DISCHRG"
    poll(monitor, reader)
    assert monitor.interval() == 1.0


def test_runs_recorded_by_another_process_change_the_budget(tmp_path: Path) -> None:
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    assert monitor.budget.seconds == 300
    (tmp_path / "runs.json").write_text(json.dumps([{
        "id": "r1", "kind": "shutdown", "dry_run": False, "result": "success", "duration_s": 80.0,
        "started_at": "2026-11-27T03:00:00+00:00", "finished_at": "2026-11-27T03:01:20+00:00"}]))
    poll(monitor, reader)
    assert monitor.budget.seconds == 190  # one shorter run moves the default halfway towards it
    assert monitor.budget.target_s == 80


# -- the monitor owns its config: a policy applied at runtime reaches every consumer at once ----------


def _with_trigger(config: HecateConfig, **trigger: float) -> HecateConfig:
    return config.model_copy(update={"trigger": config.trigger.model_copy(update=trigger)})


class PollCounter(FakeReader):
    """A FakeReader that says when a poll has read."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = asyncio.Event()

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        self.polled.set()
        return await super().read(ups, timeout)


@contextlib.asynccontextmanager
async def running(monitor: Monitor, reader: PollCounter) -> AsyncIterator[None]:
    """The monitor's loop, past its first poll; stopped (within 5 s) on leaving."""
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    try:
        await asyncio.wait_for(reader.polled.wait(), 5)
        reader.polled.clear()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def daily_monitor(tmp_path: Path) -> tuple[Monitor, PollCounter]:
    """A monitor that polls once a day."""
    reader = PollCounter()
    daily = _with_trigger(config(tmp_path), poll_interval_s=86400)
    return Monitor(daily, reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path))), reader


async def test_applying_a_config_wakes_a_monitor_sleeping_on_a_long_interval(tmp_path: Path) -> None:
    monitor, reader = daily_monitor(tmp_path)
    async with running(monitor, reader):
        await asyncio.sleep(0.05)  # asleep for a day now
        assert monitor.view.polls == 1
        started = time.monotonic()
        monitor.apply(_with_trigger(monitor.config, poll_interval_s=0.1))
        await asyncio.wait_for(reader.polled.wait(), 5)
        assert time.monotonic() - started < 1.0  # the new interval, not the rest of the day
        assert monitor.config.trigger.poll_interval_s == 0.1


async def test_a_wake_plans_again_from_the_last_poll_it_does_not_poll_at_every_apply(tmp_path: Path) -> None:
    monitor, reader = daily_monitor(tmp_path)
    async with running(monitor, reader):
        monitor.apply(_with_trigger(monitor.config, poll_interval_s=3600, safety_factor=2.0))
        await asyncio.sleep(0.2)
        assert monitor.view.polls == 1  # an hour since the last poll has not passed yet
        assert monitor.budget.safety_factor == 2.0  # but the thresholds are the new ones already


async def test_stop_still_ends_a_sleeping_monitor_at_once(tmp_path: Path) -> None:
    monitor, reader = daily_monitor(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    await asyncio.wait_for(reader.polled.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 1)


def test_the_nut_read_timeout_follows_the_config_in_force(tmp_path: Path) -> None:
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    poll(monitor, reader)
    assert reader.timeouts[-1] == 1.0  # the on-battery interval (1 s by default)
    monitor.apply(_with_trigger(monitor.config, poll_interval_on_battery_s=0.6))
    poll(monitor, reader)
    assert reader.timeouts[-1] == 0.6
    monitor.apply(_with_trigger(monitor.config, poll_interval_on_battery_s=30))
    poll(monitor, reader)
    assert reader.timeouts[-1] == 2.0  # never longer than 2 s


def test_the_watchdog_staleness_follows_the_config_in_force(tmp_path: Path) -> None:
    reader = FakeReader()
    monitor = Monitor(config(tmp_path), reader, StateStore(tmp_path), dry_run_recorder(StateStore(tmp_path)),
                      clock=lambda: reader.now)
    assert not monitor.polling()  # never polled
    poll(monitor, reader)
    reader.now += 9
    assert monitor.polling()
    reader.now += 200
    assert not monitor.polling()  # 209 s without a poll at 2 s intervals: wedged
    monitor.apply(_with_trigger(monitor.config, poll_interval_s=60))
    assert monitor.stale_after() == 300
    assert monitor.polling()  # a policy that polls every minute: 209 s is not wedged


async def test_a_policy_from_the_operators_thread_reaches_the_daemons_monitor_at_once(tmp_path: Path) -> None:
    """The whole path: the operator accepts a PowerPolicy (in its thread), the daemon applies it on
    its loop, the monitor wakes, reads with the new timeout, and the watchdog judges by it."""
    wide = Envelope(min_poll_interval_s=0.1)  # polls every 0.1 s: faster than the shipped envelope allows
    baseline = _with_trigger(config(tmp_path), poll_interval_s=86400).model_copy(
        update={"policy": Policy(name="t", envelope=wide)})
    reader = PollCounter()
    daemon = Daemon(baseline, reader)
    daemon.loop = asyncio.get_running_loop()
    async with running(daemon.monitor, reader):
        daemon.policy.connected()
        obj = {"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy",
               "metadata": {"name": "t", "uid": "u1", "generation": 1, "resourceVersion": "1"},
               "spec": {"trigger": {"poll_interval_s": 0.1, "poll_interval_on_battery_s": 0.7}}}
        started = time.monotonic()
        await asyncio.to_thread(daemon.policy.accept, obj)
        await asyncio.wait_for(reader.polled.wait(), 5)
        assert time.monotonic() - started < 1.0
        assert daemon.config is daemon.monitor.config
        assert daemon.config.trigger.poll_interval_s == 0.1
        assert reader.timeouts[-1] == 0.7
        assert daemon.monitor.stale_after() == 10.0
