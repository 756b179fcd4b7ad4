"""The UPS monitor: poll every UPS, feed the pure decision, act on a shutdown decision.

One asyncio loop, the way upsmon works: poll all UPSes (concurrently, each bounded by
its own timeout), parse, decide, and on the poll that decides a shutdown call the
shutdown handler once. It polls faster while any UPS is on battery or silent after being
on battery. The budget is re-read from the run history when the monitor starts and
after every run, so a new measured shutdown changes the threshold at once.

The monitor owns the configuration it works with: :attr:`Monitor.config` is the one
getter for the poll intervals, the read timeout, the watchdog's staleness and the trigger
thresholds, and :meth:`Monitor.apply` puts a new one in force (a PowerPolicy applied at
runtime). Applying wakes a sleeping loop at once, which plans its next poll again from the
new interval -- a policy that shortens the interval does not wait out the old one.

The monitor keeps the latest snapshots, decision and alerts for ``/v1/status``,
``/metrics`` and ``hecate status``; it never raises out of a poll. It records every outage
for the learned discharge model (:mod:`hecate.services.discharge`), whose runtime estimate
the decision uses for a UPS that reports no runtime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from hecate.adapters.store import StateStore, new_run_id
from hecate.domain import battery, discharge, timestamps, trigger
from hecate.domain import budget as budget_mod
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.runs import RunKind, RunRecord, RunResult
from hecate.domain.ups import Flag, Snapshot
from hecate.services.discharge import OutageRecorder

log = logging.getLogger(__name__)


class UpsReader(Protocol):
    """Reads one UPS within ``timeout`` seconds; never raises -- a failed read is a snapshot with ``ok`` False."""

    async def read(self, ups: Ups, timeout: float) -> Snapshot: ...


ShutdownHandler = Callable[[trigger.Decision, budget_mod.Budget], Awaitable[None]]


@dataclass
class MonitorView:
    """Everything status and metrics show, as of the last poll."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    state: trigger.State = field(default_factory=trigger.State)
    outcome: trigger.Outcome | None = None
    polls: int = 0
    last_poll_at: float | None = None
    runs: list[RunRecord] = field(default_factory=list)
    estimates: dict[str, discharge.RuntimeEstimate] = field(default_factory=dict)
    """The discharge model's runtime estimate per UPS at the last poll."""


class Monitor:
    def __init__(
        self,
        config: HecateConfig,
        reader: UpsReader,
        store: StateStore,
        on_shutdown: ShutdownHandler,
        clock: Callable[[], float] = time.monotonic,
        *,
        unlatch_on_mains: bool = False,
    ) -> None:
        self._config = config
        self._wake = asyncio.Event()  # set by apply(): the sleeping loop plans its next poll again
        self.reader = reader
        self.store = store
        self.on_shutdown = on_shutdown
        self.clock = clock
        self.unlatch_on_mains = unlatch_on_mains
        self._pending: trigger.Decision | None = None  # decided, but the handler has not succeeded yet
        self._acting = asyncio.Lock()  # a poll and a peer's trigger never hand the same decision over twice
        self._runs_mtime: float | None = None
        self.busy: Callable[[], bool] = lambda: False
        """Whether a run started by a decision is still in progress (the latch holds until it ends)."""
        self.view = MonitorView()
        self._active_alerts: set[tuple[str, trigger.AlertKind]] = set()
        self.budget = budget_mod.Budget(config.trigger.default_budget_s, budget_mod.BudgetSource.default, (),
                                        config.trigger.safety_factor, config.trigger.min_budget_s)
        self.refresh_budget()
        self.outages = OutageRecorder(store)
        self._estimates_failed = False
        self._was_busy = False

    # -- the configuration in force -----------------------------------------------------

    @property
    def config(self) -> HecateConfig:
        """The configuration the monitor works with; everything that depends on it reads it here."""
        return self._config

    def apply(self, config: HecateConfig) -> None:
        """Put ``config`` in force: the next poll decides with it (the budget is re-estimated with
        its trigger settings now), and a sleeping loop wakes to plan its next poll from its interval.

        Call it on the monitor's loop.
        """
        self._config = config
        self.refresh_budget()
        self._wake.set()

    def read_timeout(self) -> float:
        """How long one UPS read may take: bounded by the fast (on-battery) poll interval, so one
        silent upsd cannot slow down the polls of the others (reads run concurrently; a poll lasts
        as long as its slowest)."""
        return max(0.5, min(2.0, self.config.trigger.poll_interval_on_battery_s))

    def stale_after(self) -> float:
        """How long without a poll means the monitor is wedged (the watchdog stops its keep-alives)."""
        t = self.config.trigger
        return max(10.0, 5 * max(t.poll_interval_s, t.poll_interval_on_battery_s))

    def polling(self) -> bool:
        """Polls keep happening: the last one is more recent than :meth:`stale_after`."""
        last = self.view.last_poll_at
        return last is not None and self.clock() - last < self.stale_after()

    # -- budget and thresholds ---------------------------------------------------------------

    def refresh_budget(self) -> None:
        """Re-read the run history (a corrupt file reads as empty) and re-estimate the budget."""
        t = self.config.trigger
        self._runs_mtime = self._mtime()
        self.view.runs = self.store.load_runs()
        self.budget = budget_mod.estimate(
            self.view.runs, default_s=t.default_budget_s, history=t.budget_history, safety_factor=t.safety_factor,
            min_budget_s=t.min_budget_s)

    def _mtime(self) -> float | None:
        try:
            return self.store.runs_path.stat().st_mtime
        except OSError:
            return None

    def thresholds(self) -> trigger.Thresholds:
        t = self.config.trigger
        return trigger.Thresholds(
            threshold_s=self.budget.threshold_s,
            debounce_polls=t.debounce_polls,
            deadtime_s=t.deadtime_s,
            protecting=frozenset(u.name for u in self.config.ups if u.protects_cluster),
            estimates=self.view.estimates,
            charge_floor_pct=t.charge_floor_pct,
            max_on_battery_s=t.max_on_battery_s,
            sanity=battery.Limits(t.runtime_zero_charge_pct, t.max_plausible_runtime_s, t.runtime_frozen_polls),
        )

    # -- polling -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every configured UPS has been polled at least once."""
        return all(u.name in self.view.snapshots for u in self.config.ups)

    def interval(self) -> float:
        t = self.config.trigger
        on_battery = any(
            s.on_battery or (not s.ok and self.view.state.ups.get(s.ups, trigger.UpsState()).last_on_battery)
            for s in self.view.snapshots.values()
        )
        return t.poll_interval_on_battery_s if on_battery else t.poll_interval_s

    async def poll_once(self) -> trigger.Outcome:
        if self._mtime() != self._runs_mtime:  # another process (hecate shutdown --execute) recorded a run
            self.refresh_budget()
        timeout = self.read_timeout()
        snapshots: Sequence[Snapshot] = await asyncio.gather(*(self.reader.read(u, timeout) for u in self.config.ups))
        now = self.clock()
        self.view.estimates = self._estimates(snapshots)
        state, outcome = trigger.decide(self.view.state, snapshots, self.thresholds(), now)
        self.view.snapshots = {s.ups: s for s in snapshots}
        self.view.state, self.view.outcome = state, outcome
        self.view.polls += 1
        self.view.last_poll_at = now
        for edge in outcome.transitions:
            log.info("UPS %s: %s -> %s", edge.ups, edge.before.value, edge.after.value)
        active = {(a.ups, a.kind) for a in outcome.alerts}
        for alert in outcome.alerts:  # a standing alert is logged once, on its edge
            if (alert.ups, alert.kind) not in self._active_alerts:
                log.warning("UPS %s: %s", alert.ups, alert.message)
        for ups, kind in self._active_alerts - active:
            log.info("UPS %s: %s cleared", ups, kind.value)
        self._active_alerts = active
        if outcome.fresh and outcome.shutdown is not None:
            log.critical("shutdown decided: UPS %s, %s: %s", outcome.shutdown.ups,
                         outcome.shutdown.reason.value, outcome.shutdown.detail)
            self._pending = outcome.shutdown
        if self._pending is not None:
            await self.act()
        elif (self.unlatch_on_mains and state.latched is not None and not self.busy()
              and self.power_restored()):
            log.info("every protecting UPS is back on mains and no run is in progress: the decision is cleared")
            self.clear_latch()
        self._record_outages(snapshots, now, outcome)
        return outcome

    def _estimates(self, snapshots: Sequence[Snapshot]) -> dict[str, discharge.RuntimeEstimate]:
        """The discharge model's estimates; none when it fails (logged once until it works again): the
        decision never waits on the model, LB, FSD and the other triggers still decide."""
        try:
            estimates = self.outages.estimates(snapshots)
        except Exception:  # the model is an extra: a poll decides without it
            if not self._estimates_failed:
                log.exception("the discharge model's estimates failed; deciding without them")
            self._estimates_failed = True
            return {}
        self._estimates_failed = False
        return estimates

    def _record_outages(self, snapshots: Sequence[Snapshot], now: float, outcome: trigger.Outcome) -> None:
        """Outages that ended go to the history; at a fresh decision, and when the run it started ends, the
        ongoing ones too (the host may power off before mains return). Written in the background."""
        try:
            done = self.outages.observe(snapshots, now)
            busy = self.busy()
            if outcome.fresh or (self._was_busy and not busy):
                done += self.outages.in_progress()
            self._was_busy = busy
            self.outages.save(done)
        except Exception:  # bookkeeping never stops a poll
            log.exception("recording outages failed")

    async def act(self) -> None:
        """Hand the pending decision to the shutdown handler. Retried on every poll until the handler
        succeeds: nothing may drop a shutdown decision (the handlers themselves never fail on a full or
        read-only state disk)."""
        async with self._acting:
            if self._pending is None:
                return
            try:
                await self.on_shutdown(self._pending, self.budget)
                self._pending = None
            except Exception:
                log.exception("acting on the shutdown decision failed; retrying at the next poll")
            finally:
                self.refresh_budget()

    async def decide_external(self, decision: trigger.Decision) -> bool:
        """Latch a decision made outside the polls (a peer's trigger) and act on it now, without
        waiting for a poll. False (nothing done) when a shutdown is already latched."""
        state, fresh = trigger.latch(self.view.state, decision)
        if not fresh:
            return False
        self.view.state = state
        log.critical("shutdown decided: %s", decision.detail)
        self._pending = decision
        await self.act()
        return True

    def power_restored(self) -> bool:
        """Every UPS that protects the cluster was on mains, without FSD, at the last poll."""
        protecting = [u.name for u in self.config.ups if u.protects_cluster]
        snaps = [self.view.snapshots.get(name) for name in protecting]
        return bool(protecting) and all(s is not None and s.on_mains and Flag.FSD not in s.flags for s in snaps)

    def clear_latch(self) -> None:
        """The run that the latched decision started has ended."""
        self.view.state = trigger.reset(self.view.state)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; an unexpected error is logged and the loop goes on."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # the monitor must outlive any single bad poll
                log.exception("poll failed")
            await self._sleep(started, stop)

    async def _sleep(self, started: float, stop: asyncio.Event) -> None:
        """Until the interval in force has passed since ``started``, or ``stop``; :meth:`apply`
        wakes it to measure again with the new configuration's interval."""
        while not stop.is_set():
            self._wake.clear()  # a configuration applied before this point is already in interval()
            delay = self.interval() - (time.monotonic() - started)
            if delay <= 0:
                return
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if not self._wake.is_set():
                return  # the interval has passed, or stop


def trigger_info(decision: trigger.Decision, budget: budget_mod.Budget) -> dict[str, object]:
    """What a run record says about the decision that started it."""
    if decision.peer is not None:
        p = decision.peer
        return {"source": "peer", "peer": p.peer, "key_id": p.key_id, "reason": p.reason, "detail": p.detail,
                "ups": [dict(r) for r in p.ups], "peer_decided_at": p.decided_at,
                "decided_at": timestamps.rfc3339(wall_time(decision.at), fraction=True)}
    return {
        "source": "ups", "ups": decision.ups, "reason": decision.reason.value, "detail": decision.detail,
        "runtime_s": decision.runtime_s, "threshold_s": decision.threshold_s, "budget_s": budget.seconds,
        "budget_source": budget.source.value,
        "decided_at": timestamps.rfc3339(wall_time(decision.at), fraction=True),
    }


def wall_time(monotonic_ts: float) -> datetime:
    """A ``time.monotonic()`` instant as a wall-clock time (decisions use the monotonic clock
    so an NTP step cannot fire or stall deadtime; people read wall-clock times)."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic_ts), UTC)


def dry_run_recorder(store: StateStore, clock: Callable[[], float] = time.time) -> ShutdownHandler:
    """A shutdown handler that only records the decision as a dry-run shutdown run."""

    async def record(decision: trigger.Decision, budget: budget_mod.Budget) -> None:
        at = datetime.fromtimestamp(clock(), UTC)
        record = RunRecord(
            id=new_run_id(at), kind=RunKind.shutdown, dry_run=True, started_at=at, finished_at=at,
            duration_s=0.0, result=RunResult.success, trigger=trigger_info(decision, budget),
        )
        await asyncio.to_thread(store.append_run, record)
        log.warning("dry-run: recorded shutdown run %s; nothing was touched", record.id)

    return record
