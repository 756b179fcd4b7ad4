"""The learned discharge model on the real lab upsd + dummy-ups: a UPS with no ``battery.runtime``.

One outage trace, played by dummy-ups itself (:meth:`LabUps.play`), holds two outages with the
charge falling linearly at 2 %/s (the second from 90 %): the monitor records the first one itself (discharge.json,
written by the product's own recorder when the UPS is back on mains), learns the rate from it,
and during the second its estimate follows the trace and the runtime trigger decides on the
conservative bound -- with at least the budget left before the trace's charge reaches 0.

Kept short: the first outage lasts 11 s, just over the 10 s the model needs (polled every
0.25 s, the recorded span is at least ~10.4 s), one second on mains, and the second starts at
90 %, two points above where the conservative bound (one outage: -30 %) crosses the threshold.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hecate.adapters import metrics, nut
from hecate.adapters.store import StateStore
from hecate.cli import render
from hecate.domain import trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig
from hecate.services import status
from hecate.services.monitor import Monitor
from hecate_lab.ups import DEFAULT_VARS, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

RATE = 2  # %/s, the trace's fall in both outages
POLL_S = 0.25


def test_an_estimate_learned_from_a_recorded_outage_triggers_with_the_budget_left(tmp_path: Path) -> None:
    ups = start_ups(tmp_path, "aporia", values={k: v for k, v in DEFAULT_VARS.items() if k != "battery.runtime"})
    try:
        assert "battery.runtime" not in ups.read()
        config = HecateConfig.model_validate({
            "state_dir": str(tmp_path / "state"),
            "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
            "trigger": {"default_budget_s": 10, "min_budget_s": 1, "debounce_polls": 3,
                        "poll_interval_on_battery_s": POLL_S},
        })
        decisions: list[trigger.Decision] = []

        async def handler(decision: trigger.Decision, budget: Budget) -> None:
            decisions.append(decision)

        monitor = Monitor(config, nut.NutReader(timeout=1.0), StateStore(config.state_dir), handler)
        threshold = monitor.budget.threshold_s  # the floor: 1 s + 30 s margin
        first = [(0, {"ups.status": "OB DISCHRG", "battery.charge": 100})]
        first += [(1, {"battery.charge": 100 - RATE * i}) for i in range(1, 11)]  # 11 s on battery with mains' step
        mains = [(1, {"ups.status": "OL CHRG", "battery.charge": 90})]  # the lab's battery recharges at once
        second = [(1, {"ups.status": "OB DISCHRG"})] + [(1, {"battery.charge": 90 - RATE * i}) for i in range(1, 30)]
        ups.play(first + mains + second)

        seen: list[tuple[float, float | None]] = []  # (charge, estimate) at each poll of the second outage

        async def watch() -> None:
            deadline = time.monotonic() + 60
            recorded = False
            while not decisions and time.monotonic() < deadline:
                await monitor.poll_once()
                snap = monitor.view.snapshots[ups.name]
                recorded = recorded or bool(monitor.outages.history.get(ups.name))
                if recorded and snap.on_battery and snap.charge_pct is not None:
                    est = monitor.view.estimates.get(ups.name)
                    seen.append((snap.charge_pct, est.seconds if est else None))
                await asyncio.sleep(POLL_S)
            await monitor.outages.flush()

        asyncio.run(watch())

        assert len(decisions) == 1, "no shutdown decided within the trace"
        decision = decisions[0]
        assert decision.reason is trigger.Reason.runtime
        assert "estimated runtime" in decision.detail
        assert decision.runtime_s is not None
        assert decision.runtime_s <= threshold
        # From the trace's known end: the charge at the decision falls to 0 at RATE %/s.
        charge_at_decision = monitor.view.snapshots[ups.name].charge_pct
        assert charge_at_decision is not None
        left_s = charge_at_decision / RATE
        assert left_s >= monitor.budget.seconds
        assert left_s >= threshold  # the conservative bound erred on the safe side
        # The estimate follows the trace (the learned rate is the trace's): within 20 % at every poll.
        assert seen
        for charge, estimate in seen:
            assert estimate is not None
            assert estimate == pytest.approx(charge / RATE, rel=0.2)
        model = monitor.outages.models[ups.name]
        assert model.rates[0].rate_pct_per_s == pytest.approx(RATE, rel=0.15)

        history = monitor.store.load_discharge()[ups.name]
        assert [o.ended for o in history] == [True, False]  # the first at mains, the second at the decision
        assert all(s.runtime_s is None for o in history for s in o.samples)

        doc = status.document(monitor, "direct")
        row = doc["ups"][0]
        assert row["runtime_s"] is None
        assert row["runtime_estimate"]["outages"] == 1
        assert "(estimated ± " in render.status_text(doc)
        text = metrics.render(metrics.registry_for(lambda: doc)).decode()
        assert f'hecate_ups_discharge_outages{{ups="{ups.name}"}} 1.0' in text
        assert "hecate_ups_runtime_estimate_seconds{" in text
    finally:
        ups.stop()
