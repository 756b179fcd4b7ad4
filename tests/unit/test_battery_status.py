"""How status, metrics and the status text show untrusted and missing runtimes and the triggers left."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hecate.adapters import metrics
from hecate.adapters.store import StateStore
from hecate.cli import render
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot, from_variables
from hecate.services import status
from hecate.services.monitor import Monitor

pytestmark = pytest.mark.timeout(30)

READINGS = {
    "qx": {"ups.status": "OL", "battery.runtime": "0", "battery.charge": "100"},  # nutdrv_qx on mains
    "mustek": {"ups.status": "OB DISCHRG", "battery.charge": "90"},  # no runtime at all
    "apc": {"ups.status": "OL", "battery.runtime": "2079", "battery.charge": "100"},
}


class Reader:
    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, READINGS[ups.name], time.monotonic())


def document(tmp_path: Path, trigger: dict[str, Any]) -> dict[str, Any]:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": n} for n in READINGS],
                                         "trigger": trigger})

    async def nothing(*_: object) -> None: ...

    monitor = Monitor(config, Reader(), StateStore(tmp_path), nothing)
    asyncio.run(monitor.poll_once())
    return status.document(monitor, "direct")


def test_status_metrics_and_text_name_the_untrusted_and_the_missing_runtime(tmp_path: Path) -> None:
    doc = document(tmp_path, {"charge_floor_pct": 30})
    rows = {u["name"]: u for u in doc["ups"]}
    assert (rows["qx"]["runtime_trusted"], rows["qx"]["runtime_untrusted_reason"]) == (False, "zero")
    assert (rows["mustek"]["runtime_trusted"], rows["mustek"]["runtime_untrusted_reason"]) == (False, "missing")
    assert (rows["apc"]["runtime_trusted"], rows["apc"]["runtime_untrusted_reason"]) == (True, None)
    assert rows["qx"]["runtime_short"] is False  # an untrusted 0 is not a weak battery
    assert rows["mustek"]["triggers"] == ["low_battery", "fsd", "charge_floor", "deadtime"]
    assert rows["apc"]["triggers"] == ["low_battery", "fsd", "runtime", "charge_floor", "deadtime"]
    assert rows["mustek"]["on_battery_for_s"] is not None
    assert doc["alerts"] == []  # qx's zero on mains is shown (nutdrv_qx reports it always), not alerted
    assert doc["trigger"]["charge_floor_pct"] == 30

    text = metrics.render(metrics.registry_for(lambda: doc)).decode()
    assert 'hecate_ups_runtime_trusted{ups="qx"} 0.0' in text
    assert 'hecate_ups_runtime_trusted{ups="mustek"} 0.0' in text
    assert 'hecate_ups_runtime_trusted{ups="apc"} 1.0' in text

    shown = render.status_text(doc)
    assert "Runtime:   mustek: no runtime reported; it triggers on LB, FSD, charge floor 30 %, deadtime" in shown
    assert "Runtime:   qx: runtime not trusted (battery.runtime 0 s at 100 % charge" in shown


def test_without_a_charge_floor_a_ups_without_runtime_is_left_with_lb(tmp_path: Path) -> None:
    doc = document(tmp_path, {})
    shown = render.status_text(doc)
    assert "Runtime:   mustek: no runtime reported; it triggers on LB, FSD, deadtime" in shown
