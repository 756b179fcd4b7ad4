"""What status shows of a UPS's battery: whether its runtime is trusted, and which triggers can still fire.

A UPS that reports no runtime, or one Hecate does not trust (:mod:`hecate.domain.battery`), leaves
only the other triggers; status says so plainly rather than showing a runtime nobody acts on.
"""

from __future__ import annotations

from typing import Any

from hecate.domain.config import Trigger
from hecate.domain.trigger import UpsState


def triggers_left(st: UpsState, trigger: Trigger, estimated: bool = False) -> list[str]:
    """The triggers that can fire for this UPS now, in the order they are checked (LB and FSD at once); the
    runtime trigger needs a trusted runtime or, ``estimated``, the discharge model's estimate."""
    out = ["low_battery", "fsd"]
    if st.runtime.trusted or estimated:
        out.append("runtime")
    if trigger.charge_floor_pct is not None:
        out.append("charge_floor")
    if trigger.max_on_battery_s is not None:
        out.append("time_on_battery")
    return [*out, "deadtime"]


def ups_fields(st: UpsState, polled: bool, trigger: Trigger, now: float, estimated: bool = False) -> dict[str, Any]:
    """The status document's battery fields of one UPS (docs/metrics.md)."""
    verdict = st.runtime
    return {
        "runtime_trusted": polled and verdict.trusted,
        "runtime_untrusted_reason": None if verdict.doubt is None else verdict.doubt.value,
        "runtime_untrusted_detail": None if verdict.doubt is None else verdict.why,
        "charge_floor_polls": st.floor_polls,
        "time_on_battery_polls": st.overtime_polls,
        "on_battery_for_s": None if st.on_battery_since is None else round(max(0.0, now - st.on_battery_since), 3),
        "triggers": triggers_left(st, trigger, estimated),
    }
