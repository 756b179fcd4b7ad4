"""Status text lines for UPSes whose runtime is missing or not trusted: why, what stands in for it (the
learned discharge model's estimate, when there is one), and which triggers are left."""

from __future__ import annotations

from typing import Any

TRIGGER_TEXT = {"low_battery": "LB", "fsd": "FSD", "runtime": "runtime", "deadtime": "deadtime"}


def runtime_lines(ups: list[dict[str, Any]], trig: dict[str, Any]) -> list[str]:
    lines = []
    for u in ups:
        reason = u.get("runtime_untrusted_reason")
        if not u.get("polled") or not u.get("reachable") or u.get("stale") or reason is None:
            continue
        what = ("no runtime reported" if reason == "missing"
                else f"runtime not trusted ({u['runtime_untrusted_detail']})")
        est = u.get("runtime_estimate")
        if est:
            n = est["outages"]
            lines.append(f"Runtime:   {u['name']}: {what}; runtime {est['seconds']:.0f} s (estimated ± "
                         f"{est['uncertainty_s']:.0f} s from {n} outage{'s' if n != 1 else ''}): the runtime "
                         f"trigger uses {est['conservative_s']:.0f} s")
            continue
        named = []
        for t in u.get("triggers", []):
            if t == "charge_floor":
                named.append(f"charge floor {trig['charge_floor_pct']:g} %")
            elif t == "time_on_battery":
                named.append(f"{trig['max_on_battery_s']:g} s on battery")
            else:
                named.append(TRIGGER_TEXT.get(t, t))
        learned = u.get("discharge_recorded")
        lines.append(f"Runtime:   {u['name']}: {what}; it triggers on {', '.join(named)}"
                     + (f" ({learned} outages recorded, {u.get('discharge_note') or 'none long enough to learn from'})"
                        if learned else ""))
    return lines
