"""The status document: one JSON object behind ``/v1/status``, ``hecate status --json`` and /metrics.

Its fields are documented in docs/metrics.md ("Status"); the Prometheus collector renders
the same document, so status and metrics can never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hecate.domain import forward, timestamps
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig
from hecate.domain.discharge import RuntimeEstimate
from hecate.domain.policy_source import PolicyView, baseline_view
from hecate.domain.runs import RunKind, RunRecord
from hecate.domain.trigger import AlertKind, Decision, UpsState
from hecate.domain.ups import Flag
from hecate.services import battery_view
from hecate.services.monitor import Monitor, wall_time

RECENT_RUNS = 5


def _iso(monotonic_ts: float | None) -> str | None:
    return None if monotonic_ts is None else timestamps.rfc3339(wall_time(monotonic_ts), fraction=True)


def _decision(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    doc: dict[str, Any] = {"ups": d.ups, "reason": d.reason.value, "detail": d.detail, "at": _iso(d.at),
                           "runtime_s": d.runtime_s, "threshold_s": d.threshold_s}
    if d.peer is not None:  # a peer host's trigger: who, why, and its readings
        doc["peer"] = {"name": d.peer.peer, "key_id": d.peer.key_id, "reason": d.peer.reason,
                       "detail": d.peer.detail, "decided_at": d.peer.decided_at, "ups": [dict(r) for r in d.peer.ups]}
    return doc


def _budget(b: Budget, config: HecateConfig) -> dict[str, Any]:
    return {"seconds": b.seconds, "source": b.source.value, "samples": list(b.samples),
            "safety_factor": b.safety_factor, "threshold_s": b.threshold_s,
            "default_s": config.trigger.default_budget_s, "target_s": b.target_s,
            "min_budget_s": b.min_budget_s, "floor_s": b.floor_s,
            "threshold_basis": b.basis.value, "threshold_why": b.why}


def _estimate(e: RuntimeEstimate | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"seconds": e.seconds, "uncertainty_s": e.uncertainty_s, "conservative_s": e.conservative_s,
            "outages": e.outages, "rate_pct_per_s": e.rate_pct_per_s, "empty_pct": e.empty_pct}


def _run(r: RunRecord) -> dict[str, Any]:
    return {"id": r.id, "kind": r.kind.value, "dry_run": r.dry_run, "result": r.result and r.result.value,
            "started_at": timestamps.rfc3339(r.started_at, fraction=True), "duration_s": r.duration_s,
            "trigger": r.trigger}


def _runs(runs: list[RunRecord]) -> dict[str, Any]:
    counts = Counter((r.kind.value, r.result.value if r.result else "in_flight", r.dry_run) for r in runs)
    last_duration: dict[str, float] = {}
    last: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r.duration_s is not None and not r.dry_run:
            last_duration[r.kind.value] = r.duration_s
        if r.result is not None:  # the last finished run of each kind, dry-runs included
            finished = r.finished_at or r.started_at
            last[r.kind.value] = {"result": r.result.value, "dry_run": r.dry_run,
                                  "finished_at": timestamps.rfc3339(finished, fraction=True)}
    return {
        "count": len(runs),
        "counts": [{"kind": k, "result": res, "dry_run": dry, "count": n}
                   for (k, res, dry), n in sorted(counts.items())],
        "last_duration_s": last_duration,
        "last": last,
        "recent": [_run(r) for r in runs[-RECENT_RUNS:]][::-1],
    }


def _fsd_set_by(runs: list[RunRecord], ups: str) -> dict[str, Any] | None:
    """The latest executed shutdown run, when it set FSD on ``ups`` (its ``set-fsd`` step succeeded)."""
    last = next((r for r in reversed(runs) if r.kind is RunKind.shutdown and not r.dry_run), None)
    if last is None or ups not in last.changes.get("fsd_set", []):
        return None
    return {"run": last.id, "at": timestamps.rfc3339(last.started_at, fraction=True)}


def _listener_alerts(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"ups": None, "kind": "not_listening",
             "message": f"not listening on {lst['address']} ({lst['kind']}): {lst['error'] or 'not bound yet'}; "
                        f"retrying ({lst['bind_failures']} failed binds)"}
            for lst in listeners if not lst["listening"]]


def document(monitor: Monitor, source: str, policy: PolicyView | None = None,
             listeners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status of everything the monitor knows. ``source``: ``daemon`` or ``direct``.

    ``policy``: which policy is in force (the daemon's); without it the document says the
    values are hecate.yaml's (``hecate status`` polling directly). ``listeners``: where the
    daemon's HTTP server listens (:meth:`hecate.adapters.http.Listener.as_dict`); one that
    is not listening is also an alert.
    """
    config, view = monitor.config, monitor.view
    now = datetime.now(UTC)
    if policy is None:
        policy = baseline_view(config, "polled directly: hecate.yaml's values (a running daemon would also apply "
                                       "the cached or cluster PowerPolicy)", now)
    outcome = view.outcome
    ups = []
    for u in config.ups:
        snap = view.snapshots.get(u.name)
        st = view.state.ups.get(u.name, UpsState())
        ups.append({
            "name": u.name,
            "address": f"{u.host}:{u.port}",
            "protects_cluster": u.protects_cluster,
            "polled": snap is not None,
            "reachable": bool(snap and snap.reachable),
            "stale": bool(snap and snap.stale),
            "error": snap.error if snap else None,
            "status": snap.status if snap else None,
            "flags": sorted(f.value for f in snap.flags) if snap else [],
            "unknown_tokens": list(snap.unknown_tokens) if snap else [],
            "on_battery": bool(snap and snap.on_battery),
            "fsd": bool(snap and Flag.FSD in snap.flags),
            "set_fsd": u.set_fsd and u.protects_cluster,
            "fsd_set_by_hecate": _fsd_set_by(view.runs, u.name),
            "phase": st.phase.value,
            "runtime_s": snap.runtime_s if snap else None,
            "charge_pct": snap.charge_pct if snap else None,
            "load_pct": snap.load_pct if snap else None,
            "input_voltage": snap.input_voltage if snap else None,
            "below_threshold_polls": st.below_polls,
            "runtime_estimate": _estimate(view.estimates.get(u.name)),
            "discharge_outages": len(m.rates) if (m := monitor.outages.models.get(u.name)) else 0,
            "discharge_recorded": len(monitor.outages.history.get(u.name, [])),
            "discharge_note": monitor.outages.note(u.name),
            "last_seen_at": _iso(st.last_seen_at),
            **battery_view.ups_fields(st, snap is not None, config.trigger, monitor.clock(),
                                      estimated=u.name in view.estimates),
        })
    runs = view.runs
    short = {a.ups for a in (outcome.alerts if outcome else ()) if a.kind is AlertKind.runtime_short}
    for row in ups:
        row["runtime_short"] = row["name"] in short
    return {
        "host": config.host_name,
        "role": config.role.value,
        "source": source,
        "armed": config.shutdown.execute,
        "generated_at": timestamps.rfc3339(now, fraction=True),
        "polls": view.polls,
        "last_poll_at": _iso(view.last_poll_at),
        "ups": ups,
        "budget": _budget(monitor.budget, config),
        "trigger": {
            "debounce_polls": config.trigger.debounce_polls,
            "deadtime_s": config.trigger.deadtime_s,
            "charge_floor_pct": config.trigger.charge_floor_pct,
            "max_on_battery_s": config.trigger.max_on_battery_s,
            "shutdown_triggered": view.state.latched is not None,
            "decision": _decision(view.state.latched),
        },
        "alerts": [{"ups": a.ups, "kind": a.kind.value, "message": a.message}
                   for a in (outcome.alerts if outcome else ())] + _listener_alerts(listeners or []),
        "listeners": listeners or [],
        "hosts": [{"name": h.name, "address": h.address, "poweroff_order": h.poweroff_order,
                   "stop_commands": len(h.stop_commands), "poweroff": h.poweroff, "wake": h.wake.value,
                   "wait_ssh": h.wait_ssh, "before_cluster": h.before_cluster} for h in config.hosts],
        "runs": _runs(runs),
        "policy": policy.as_dict(now),
        "warnings": list(monitor.store.warnings),
        "state_writes": monitor.store.write_failures_doc(),
    }


def peer_forward(config: HecateConfig, last: forward.ForwardRecord | None, forwarding: bool,
                 counts: Mapping[forward.ForwardResult, int]) -> dict[str, Any]:
    """A peer's forwarding: where to, the last trigger sent (also from before a restart), and whether its
    local fallback ran. ``counts``: forwards ended since the daemon started, by result."""
    settings = config.peer
    return {
        "coordinator_url": settings.coordinator_url,
        "key_id": settings.key_id,
        "forward_for_s": settings.forward_for_s,
        "fallback_local_shutdown": settings.fallback_local_shutdown,
        "forwarding": forwarding,
        "forwards": {r.value: counts.get(r, 0) for r in forward.FINAL_RESULTS},
        "last": last.model_dump(mode="json") if last is not None else None,
    }
