"""Recording outages for the discharge model, off the monitor's critical path.

The monitor hands every poll's snapshots to :class:`OutageRecorder`: while a UPS is on
battery its samples (charge, load, battery voltage, the UPS's own runtime) are kept in
memory, bounded (:func:`hecate.domain.discharge.thin`); when it is back on mains the outage
is over and goes to the state dir's ``discharge.json``. An outage that decided a shutdown
is also written at the decision and when its run ends (the host may power off before the
mains come back): each later write of the same outage replaces the earlier one.

The history is read once, when the recorder is made, without side effects (no lock, a corrupt
file stays where it is): ``hecate status`` polling directly makes one too. Writes run in a
thread (:meth:`OutageRecorder.save`), one at a time, and never raise: a poll, or a decided
shutdown, never waits for them. The store counts a failed write
(``discharge`` in ``hecate_state_write_errors_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hecate.adapters.store import StateStore
from hecate.domain import discharge, timestamps
from hecate.domain.ups import MAX_VOLTAGE, Snapshot, parse_number

log = logging.getLogger(__name__)


@dataclass
class _Open:
    started_at: str
    t0: float
    samples: list[discharge.Sample] = field(default_factory=list)

    def outage(self, ups: str, ended: bool) -> discharge.Outage:
        return discharge.Outage(ups, self.started_at, discharge.thin(self.samples), ended)


def sample(snap: Snapshot, t: float) -> discharge.Sample:
    """One on-battery reading as a discharge sample, ``t`` seconds into the outage."""
    voltage = parse_number(snap.variables.get("battery.voltage"), 0.0, MAX_VOLTAGE)
    return discharge.Sample(round(t, 3), snap.charge_pct, snap.load_pct, voltage, snap.runtime_s)


class OutageRecorder:
    """The outages in progress, per UPS; the history learned from; the models fitted on it."""

    def __init__(self, store: StateStore, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall = wall
        self.open: dict[str, _Open] = {}
        self.history: dict[str, list[discharge.Outage]] = store.load_discharge()
        self.models: dict[str, discharge.Model] = discharge.fit_all(self.history)
        self._writes: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def observe(self, snapshots: Iterable[Snapshot], now: float) -> list[discharge.Outage]:
        """Take one poll's snapshots (``now``: the monitor's clock); the outages that ended with it.

        A UPS on battery adds a sample to its outage (one begins); back on mains ends it. A reading
        without current data, or neither on battery nor on mains, changes nothing."""
        ended = []
        for snap in snapshots:
            current = self.open.get(snap.ups)
            if snap.on_battery:
                if current is None:
                    started = timestamps.rfc3339(datetime.fromtimestamp(self.wall(), UTC), fraction=True)
                    current = self.open[snap.ups] = _Open(started, now)
                current.samples.append(sample(snap, now - current.t0))
                if len(current.samples) > 2 * discharge.MAX_SAMPLES:
                    current.samples = list(discharge.thin(current.samples))
            elif snap.on_mains and current is not None:
                ended.append(current.outage(snap.ups, ended=True))
                del self.open[snap.ups]
        return ended

    def in_progress(self) -> list[discharge.Outage]:
        """The outages still open, as they are so far."""
        return [o.outage(ups, ended=False) for ups, o in self.open.items()]

    def estimates(self, snapshots: Iterable[Snapshot]) -> dict[str, discharge.RuntimeEstimate]:
        """The model's runtime estimate for each UPS that has a model and a charge reading now."""
        out = {}
        for snap in snapshots:
            model = self.models.get(snap.ups)
            if model is None or not snap.ok:
                continue
            empty = parse_number(snap.variables.get("battery.charge.low"), 0.0, 100.0)
            estimate = model.estimate(snap.charge_pct, snap.load_pct, empty)
            if estimate is not None:
                out[snap.ups] = estimate
        return out

    def note(self, ups: str) -> str | None:
        """Why the UPS's model gives no estimate though it has outages to learn from (None: it does, or none
        counts)."""
        model = self.models.get(ups)
        return discharge.SCATTERED if model is not None and model.scattered else None

    def save(self, outages: list[discharge.Outage]) -> None:
        """Write ``outages`` in the background (in order, one write at a time); the models follow."""
        if not outages:
            return
        task = asyncio.ensure_future(self._save(outages))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _save(self, outages: list[discharge.Outage]) -> None:
        try:
            async with self._lock:
                history = await asyncio.to_thread(self.store.record_outages, outages)
                self.history = history
                self.models = discharge.fit_all(history)
            for o in outages:
                log.info("UPS %s: recorded %s outage from %s (%d samples); %d outages recorded for it",
                         o.ups, "its" if o.ended else "the ongoing", o.started_at, len(o.samples),
                         len(history.get(o.ups, [])))
        except Exception:  # bookkeeping: never out of the loop
            log.exception("recording an outage failed")

    async def flush(self) -> None:
        """Wait for the writes in flight (tests, and a daemon that stops)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
