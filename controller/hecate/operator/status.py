"""The PowerPolicy's ``status``, built from the policy in force and the daemon's status document.

Pure: :func:`status_body` takes what the daemon knows (:class:`Snapshot`) and the
conditions last written (for ``lastTransitionTime``, which only moves when a condition's
``status`` changes, as ``metav1.Condition`` wants) and returns the whole ``status`` object
-- every key, ``None`` for "remove" (it is sent as a JSON merge patch) -- matching the
CRD's status schema (:func:`hecate.domain.crd.status_schema`).

Conditions (kstatus conventions: ``Ready`` is the summary, ``Stalled`` the abnormal-true
condition kstatus reads as ``Failed``; every condition and the status carry
``observedGeneration``, so a generation Hecate has not processed yet reads as in progress):

``Ready``
    This generation is a valid policy for this host and in force (``False``, reason
    ``Invalid``: the message names the field and says which policy stays in force).
    ``kubectl wait --for=condition=Ready`` waits on it.
``Stalled``
    ``True`` exactly when ``Ready`` is ``False``: Hecate will not act on this generation until
    it is edited (kstatus, Flux health checks: ``Failed``).
``Cached``
    This generation is in ``policy-cache.yaml`` (``False``: a rejected object, whose last
    valid predecessor stays cached, or a failed write).
``Armed``
    ``shutdown.execute`` is true in hecate.yaml: a decision powers the cluster off
    (``False``: decisions are recorded as dry-runs). Never set by a policy.
``ShutdownInProgress``
    The daemon is running a shutdown right now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hecate.domain import timestamps
from hecate.domain.policy_source import ClusterObject, PolicyView, Source
from hecate.domain.trigger import Phase as UpsPhase

CONDITION_TYPES = ("Ready", "Stalled", "Cached", "Armed", "ShutdownInProgress")

# Worst first: the UPS summary is about the protecting UPS closest to a shutdown.
_SEVERITY = {UpsPhase.critical.value: 5, UpsPhase.below_threshold.value: 4, UpsPhase.on_battery.value: 3,
             UpsPhase.lost.value: 2, UpsPhase.unknown.value: 1, UpsPhase.on_mains.value: 0}


@dataclass(frozen=True)
class Snapshot:
    """What the daemon knows right now (taken on the daemon's loop)."""

    document: Mapping[str, Any]
    """The ``/v1/status`` document."""
    shutting_down: bool
    starting_up: bool
    policy: PolicyView


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int | None,
               previous: Mapping[str, Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(type_) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    condition = {"type": type_, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": since or timestamps.rfc3339(now)}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def still_in_force(view: PolicyView) -> str:
    """Which policy stays in force while the cluster object is rejected."""
    if view.source is Source.cache and view.policy is not None:
        return f"generation {view.policy.generation} stays in force from Hecate's cache"
    return "hecate.yaml's policy stays in force"


def rejection(view: PolicyView) -> str:
    """Why the observed generation was rejected and what Hecate acts on instead (condition and Event)."""
    return f"generation {view.observed_generation} rejected: {view.rejected or 'invalid'}; {still_in_force(view)}"


def conditions(snap: Snapshot, previous: Mapping[str, Mapping[str, Any]], now: datetime,
               cache_path: str) -> list[dict[str, Any]]:
    view = snap.policy
    gen = view.observed_generation
    rows = []
    if view.cluster is ClusterObject.invalid:
        why = rejection(view)
        rows.append(_condition("Ready", False, "Invalid", why, gen, previous, now))
        rows.append(_condition("Stalled", True, "Invalid", why, gen, previous, now))
    else:
        rows.append(_condition("Ready", True, "InForce", f"generation {gen} is valid for this host and in force",
                               gen, previous, now))
        rows.append(_condition("Stalled", False, "Valid", "nothing blocks this generation", gen, previous, now))
    cached = view.cached
    cached_at = timestamps.rfc3339(cached.cached_at) if cached is not None else None
    if view.cluster is ClusterObject.valid and view.cache_error is None and cached is not None \
            and cached.generation == gen:
        rows.append(_condition("Cached", True, "Cached",
                               f"generation {cached.generation} cached in {cache_path} at {cached_at}",
                               gen, previous, now))
    elif view.cache_error is not None:
        rows.append(_condition("Cached", False, "WriteFailed", view.cache_error, gen, previous, now))
    elif cached is not None:
        rows.append(_condition("Cached", False, "PreviousGenerationCached",
                               f"this generation is not cached; generation {cached.generation} (cached "
                               f"{cached_at}) is in force from the cache", gen, previous, now))
    else:
        rows.append(_condition("Cached", False, "NothingCached",
                               "no valid PowerPolicy is cached: hecate.yaml's policy is in force", gen, previous, now))
    if view.config.shutdown.execute:
        rows.append(_condition("Armed", True, "Execute", "shutdown.execute is true in hecate.yaml: a shutdown "
                               "decision stops and powers off the cluster", gen, previous, now))
    else:
        rows.append(_condition("Armed", False, "DryRun", "shutdown.execute is false in hecate.yaml: shutdown "
                               "decisions are only recorded", gen, previous, now))
    if snap.shutting_down:
        rows.append(_condition("ShutdownInProgress", True, "ShuttingDown", "the daemon is shutting the cluster down",
                               gen, previous, now))
    else:
        rows.append(_condition("ShutdownInProgress", False, "Idle", "no shutdown is running", gen, previous, now))
    return rows


def phase(snap: Snapshot) -> str:
    if snap.shutting_down:
        return "ShuttingDown"
    if snap.starting_up:
        return "StartingUp"
    if snap.policy.cluster is ClusterObject.invalid:
        return "Invalid"
    return "Active"


def ups_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    members = [{
        "name": u["name"], "state": u["phase"], "protectsCluster": bool(u["protects_cluster"]),
        "reachable": bool(u["reachable"]) and not u.get("stale", False), "onBattery": bool(u["on_battery"]),
        "runtimeSeconds": u.get("runtime_s"), "chargePercent": u.get("charge_pct"),
    } for u in rows]
    protecting = [m for m in members if m["protectsCluster"]] or members
    summary: dict[str, Any] = {"members": members, "onBattery": any(m["onBattery"] for m in protecting)}
    if protecting:
        worst = max(protecting, key=lambda m: _SEVERITY.get(m["state"], 0))
        summary.update(state=worst["state"], name=worst["name"], runtimeSeconds=worst["runtimeSeconds"],
                       chargePercent=worst["chargePercent"])
    return summary


def _time(value: str | None) -> datetime | None:
    return timestamps.parse(value) if value else None


def last_run(document: Mapping[str, Any]) -> dict[str, Any] | None:
    recent = (document.get("runs") or {}).get("recent") or []
    if not recent:
        return None
    run = recent[0]
    started = _time(run.get("started_at"))
    duration = run.get("duration_s")
    finished = started + timedelta(seconds=duration) if started is not None and duration is not None \
        and run.get("result") else None
    return {"id": run["id"], "kind": run["kind"], "result": run.get("result"), "dryRun": bool(run.get("dry_run")),
            "startedAt": timestamps.rfc3339(started), "finishedAt": timestamps.rfc3339(finished),
            "durationSeconds": None if duration is None else max(0.0, float(duration))}


def status_body(snap: Snapshot, previous: Mapping[str, Mapping[str, Any]], now: datetime,
                cache_path: str) -> dict[str, Any]:
    """The whole ``status`` (a merge patch: ``None`` removes a key)."""
    doc, view = snap.document, snap.policy
    budget = doc.get("budget") or {}
    return {
        "phase": phase(snap),
        "observedGeneration": view.observed_generation,
        "conditions": conditions(snap, previous, now, cache_path),
        "ups": ups_summary(doc.get("ups") or []),
        "budgetSeconds": budget.get("seconds"),
        "budgetSource": budget.get("source"),
        "thresholdSeconds": budget.get("threshold_s"),
        "lastRun": last_run(doc),
        "source": view.source.value,
        "cachedAt": timestamps.rfc3339(view.policy.cached_at) if view.policy is not None else None,
    }
