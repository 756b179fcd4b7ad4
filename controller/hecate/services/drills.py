"""Disruptive drills: break something on purpose, run the startup, prove it recovered.

A drill runs against whatever cluster the configuration points at -- the lab or a real
one. Without ``execute`` it only says what it would break (it reads nothing and
writes nothing). With ``execute`` it:

1. checks the cluster is healthy enough to start from and takes what it needs to undo
   the break (the bootstrap cache is refreshed first: the drills that delete objects
   refuse to run unless the cache holds every one of them);
2. breaks it -- as a shutdown would, Flux is suspended first, so Flux itself cannot
   repair the break behind the startup's back;
3. runs the real startup (``hecate.services.startup``);
4. verifies recovery with explicit checks;
5. if a check fails, restores what it broke (re-creates the deleted objects, resumes
   Flux, scales back, uncordons), so a failed drill does not leave the cluster broken.

Each drill is recorded in ``runs.json`` as a run of kind ``drill`` (stages ``break``,
``startup``, ``checks``). The drills:

- ``flux-gitea-deadlock``: delete the workloads of ``flux.bootstrap_objects`` that are not
  foundation workloads (Gitea and what it needs) with Flux suspended: Flux cannot fetch,
  Gitea cannot come back through Flux. Startup must detect the deadlock and break it
  from the cache.
- ``foundation-recovery``: delete the foundation workloads (``startup.foundation``)
  that are in the cache. Startup's foundation stage must re-create them and wait until
  they serve.
- ``reconciliation-resume``: do what a shutdown's first stages do -- suspend Flux,
  scale the tiers to zero, cordon the agents -- without powering anything off. Startup
  must resume exactly what Hecate suspended (a user's suspension stays), restore the
  exact replicas and undo only Hecate's cordons.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hecate.adapters import kube as kube_mod
from hecate.adapters.store import StateStore, new_run_id
from hecate.domain import kubeobjects
from hecate.domain.config import WORKLOAD_KINDS, HecateConfig, NodeRole
from hecate.domain.runs import RunKind, RunRecord, RunResult, StageRecord
from hecate.services import bootstrap_cache, ports
from hecate.services import startup as startup_mod
from hecate.services.executor import Progress

BREAK_SETTLE_S = 30.0  # longest to wait for a break to show (e.g. the GitRepository going not Ready)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class DrillResult:
    name: str
    passed: bool
    executed: bool
    breaks: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    startup: RunRecord | None = None
    restored: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Drill:
    name: str
    summary: str
    targets: Callable[[HecateConfig], list[str]]
    """What the drill breaks, from the configuration alone (the dry-run shows this)."""


def deletes(config: HecateConfig, name: str) -> list[str]:
    """The workloads a drill deletes (``namespace/kind/name``).

    ``flux-gitea-deadlock``: the workloads of ``flux.bootstrap_objects`` that are not foundation
    workloads (those are ``foundation-recovery``'s: the foundation stage would re-create them
    before Flux is even looked at). ``foundation-recovery``: the foundation workloads that are cached.
    """
    cached = [r for r in config.flux.bootstrap_objects if kubeobjects.split_ref(r)[1].lower() in WORKLOAD_KINDS]
    if name == "flux-gitea-deadlock":
        return [kubeobjects.canonical_ref(r) for r in cached if r not in config.startup.foundation]
    if name == "foundation-recovery":
        return [kubeobjects.canonical_ref(r) for r in config.startup.foundation if r in cached]
    return []


def _delete_targets(config: HecateConfig, name: str) -> list[str]:
    return ["suspend Flux (as a shutdown does)", *(f"delete {r}" for r in deletes(config, name))]


def _resume_targets(config: HecateConfig) -> list[str]:
    agents = [n.name for n in config.cluster.nodes if n.role is NodeRole.agent]
    return ["suspend Flux (as a shutdown does)",
            *(f"scale tier {t.name} ({t.selector}) to 0" for t in config.shutdown.scale_down),
            *(f"cordon {a}" for a in agents)]


DRILLS: dict[str, Drill] = {d.name: d for d in (
    Drill("flux-gitea-deadlock", "Gitea and what it needs are gone while Flux needs Gitea: startup must break "
          "the deadlock from the bootstrap cache", lambda c: _delete_targets(c, "flux-gitea-deadlock")),
    Drill("foundation-recovery", "foundation workloads are gone: startup must re-create them from the cache "
          "and wait until they serve", lambda c: _delete_targets(c, "foundation-recovery")),
    Drill("reconciliation-resume", "what a shutdown's first stages leave behind: startup must resume exactly "
          "Hecate's suspensions, replicas and cordons", _resume_targets),
)}


class DrillRefused(Exception):
    """The drill cannot run safely (e.g. the cache lacks what it would delete); nothing was broken."""


class DrillBroke(Exception):
    """Suspending Flux failed part-way: ``suspended`` is what must be resumed."""

    def __init__(self, suspended: list[str], cause: Exception) -> None:
        super().__init__(f"suspending Flux failed part-way: {cause}")
        self.suspended = suspended


async def run(config: HecateConfig, name: str, progress: Progress, *, execute: bool) -> DrillResult:
    drill = DRILLS[name]
    result = DrillResult(name=name, passed=False, executed=execute, breaks=drill.targets(config))
    if not execute:
        return result
    store = StateStore(config.state_dir)
    started_at = datetime.now(UTC)
    kube = kube_mod.Kube(config.cluster.kubeconfig, config.cluster.api_timeout_s, cooldown=1.0)
    undo = _Undo()
    try:
        before = await _snapshot(config, kube)  # DrillRefused: nothing broken, nothing recorded
        try:
            t0 = time.monotonic()
            await _break(config, kube, name, before, undo)
            result.timings["break_s"] = round(time.monotonic() - t0, 3)
            t1 = time.monotonic()
            result.startup = await startup_mod.run(config, {"source": "drill", "drill": name}, progress)
            result.timings["startup_s"] = round(time.monotonic() - t1, 3)
            t2 = time.monotonic()
            result.checks = await _checks(config, kube, name, before, result.startup)
            result.timings["checks_s"] = round(time.monotonic() - t2, 3)
            result.passed = all(c.ok for c in result.checks)
        except DrillRefused:
            raise  # refused before breaking anything
        except Exception as err:  # the drill broke something: whatever happened next, put it back
            if isinstance(err, DrillBroke):
                undo.suspended = err.suspended
            result.error = f"{type(err).__name__}: {err}"
            result.passed = False
        if not result.passed:
            result.restored = await undo.run(kube)
        _record(store, result, started_at)
    finally:
        kube.close()
    return result


@dataclass
class _Undo:
    """What a drill broke so far, filled as it breaks (so a half-done break is undone too)."""

    saved: list[dict[str, Any]] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    scaled: dict[str, int] = field(default_factory=dict)
    cordoned: list[str] = field(default_factory=list)

    async def run(self, kube: ports.Cluster) -> list[str]:
        """Best effort: every part is tried; what failed is reported, not raised."""
        done: list[str] = []

        async def attempt(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
            try:
                return await call()
            except (kube_mod.KubeError, ValueError) as err:
                done.append(f"could not {what}: {err}")
                return None

        created = await attempt("re-create", lambda: kube.apply_missing(self.saved)) if self.saved else None
        done += [f"created {r}" for r in (created or {}).get("created", [])]
        resumed = await attempt("resume Flux", lambda: kube.flux_resume(self.suspended, reconcile=True))
        done += [f"resumed {r}" for r in resumed or []]
        for ref, replicas in self.scaled.items():
            if await attempt(f"scale {ref}", functools.partial(kube.scale, ref, replicas)) is None:
                done.append(f"scaled {ref} to {replicas}")
        for node in self.cordoned:
            if await attempt(f"uncordon {node}", functools.partial(kube.uncordon, node)) is None:
                done.append(f"uncordoned {node}")
        return done


# -- before, break, after -------------------------------------------------------------------


async def _snapshot(config: HecateConfig, kube: ports.Cluster) -> dict[str, Any]:
    """What the drill compares against after the startup; refuses an unhealthy starting point."""
    flux = config.flux
    repo = await kube.git_repository(flux.namespace, flux.git_repository)
    if not repo["ready"]:
        raise DrillRefused(f"GitRepository {flux.namespace}/{flux.git_repository} is not Ready before the drill: "
                           f"{repo['message']} -- drills start from a healthy cluster")
    refreshed = await bootstrap_cache.refresh(config, kube)
    cached = {kubeobjects.object_ref(o) for o in bootstrap_cache.load(flux.fallback_manifests_dir)}
    status = await kube.flux_status()
    replicas: dict[str, int] = {}
    for tier in config.shutdown.scale_down:
        replicas.update(await kube.replicas(tier.selector, tier.namespace))
    return {"cached": cached, "cache_refresh": refreshed, "flux": status, "replicas": replicas,
            "cordoned": sorted(await kube.unschedulable_nodes()),
            "user_suspended": sorted(r for r, s in status.items() if s["suspended"] and not s["ours"])}


async def _break(config: HecateConfig, kube: ports.Cluster, name: str, before: dict[str, Any],
                 undo: _Undo) -> None:
    """Break the cluster, recording in ``undo`` each part as soon as it is broken."""
    if name in ("flux-gitea-deadlock", "foundation-recovery"):
        refs = deletes(config, name)
        if not refs:
            raise DrillRefused("nothing to break: " + ("flux.bootstrap_objects has no workload outside "
                                                       "startup.foundation" if name == "flux-gitea-deadlock" else
                                                       "no startup.foundation workload is in flux.bootstrap_objects"))
        uncached = [r for r in refs if r not in before["cached"]]
        if uncached:
            raise DrillRefused(f"the bootstrap cache lacks {', '.join(uncached)}: deleting them would not be "
                               "recoverable (is the GitRepository Ready? see the daemon's cache refresh)")
        saved = await kube.export(refs)
        undo.suspended = await _suspend(kube)
        for ref, manifest in zip(refs, saved, strict=True):
            undo.saved.append(manifest)
            await kube.delete_object(ref)
        if name == "flux-gitea-deadlock":
            await _until_not_ready(config, kube)
        return
    undo.suspended = await _suspend(kube)
    for tier in config.shutdown.scale_down:
        try:
            undo.scaled.update(await kube.scale_down(tier.selector, tier.namespace))
        except kube_mod.KubeError as err:
            undo.scaled.update(err.partial or {})
            raise
    for node in (n.name for n in config.cluster.nodes if n.role is NodeRole.agent):
        if await kube.cordon(node):
            undo.cordoned.append(node)


async def _suspend(kube: ports.FluxControl) -> list[str]:
    try:
        return (await kube.flux_suspend())["suspended"]
    except kube_mod.KubeError as err:
        partial = err.partial or {}
        raise DrillBroke(partial.get("suspended", []), err) from err


async def _until_not_ready(config: HecateConfig, kube: ports.FluxControl) -> None:
    deadline = time.monotonic() + BREAK_SETTLE_S
    while time.monotonic() < deadline:
        if not (await kube.git_repository(config.flux.namespace, config.flux.git_repository))["ready"]:
            return
        await asyncio.sleep(0.5)


async def _checks(config: HecateConfig, kube: ports.Cluster, name: str, before: dict[str, Any],
                  record: RunRecord) -> list[Check]:
    flux = config.flux
    not_ok = [f"{s.name}: {s.detail}" for s in record.stages if s.result is not RunResult.success]
    checks = [Check("startup run succeeded", record.result is RunResult.success,
                    "; ".join([record.result.value if record.result else "?", *not_ok]))]
    repo = await kube.git_repository(flux.namespace, flux.git_repository)
    checks.append(Check(f"GitRepository {flux.namespace}/{flux.git_repository} Ready", repo["ready"], repo["message"]))
    status = await kube.flux_status()
    not_ready = sorted(r for r, s in status.items() if not s["suspended"] and not s["ready"])
    checks.append(Check("every Kustomization and HelmRelease not suspended by a user is Ready", not not_ready,
                        ", ".join(not_ready)))
    user = sorted(r for r, s in status.items() if s["suspended"] and not s["ours"])
    checks.append(Check("user-suspended Flux objects stay suspended", user == before["user_suspended"],
                        f"before {before['user_suspended']}, after {user}"))
    ours = sorted(r for r, s in status.items() if s["ours"])
    checks.append(Check("nothing is left suspended by Hecate", not ours, ", ".join(ours)))
    if name == "flux-gitea-deadlock":
        checks.append(Check("startup detected and broke the deadlock", bool(record.changes.get("deadlock")),
                            f"created {record.changes.get('created')}"))
        gitea = await kube.workload(kubeobjects.canonical_ref(flux.gitea_workload))
        checks.append(Check(f"{flux.gitea_workload} available", gitea["available"], gitea["detail"]))
    for ref in deletes(config, name):
        state = await kube.workload(ref)
        checks.append(Check(f"{ref} back and available", state["available"], state["detail"]))
    if name == "reconciliation-resume":
        replicas: dict[str, int] = {}
        for ref in before["replicas"]:
            obj = await kube.get_object(ref)
            replicas[ref] = int(((obj or {}).get("spec") or {}).get("replicas") or 0)
        checks.append(Check("replicas restored exactly", replicas == before["replicas"],
                            f"before {before['replicas']}, after {replicas}"))
        cordoned = sorted(await kube.unschedulable_nodes())
        checks.append(Check("only Hecate's cordons undone", cordoned == before["cordoned"],
                            f"before {before['cordoned']}, after {cordoned}"))
    return checks


def _record(store: StateStore, result: DrillResult, started_at: datetime) -> None:
    finished = datetime.now(UTC)
    failed = [c for c in result.checks if not c.ok]
    stages = [StageRecord(name="break", duration_s=result.timings.get("break_s", 0.0), result=RunResult.success,
                          detail="; ".join(result.breaks)),
              StageRecord(name="startup", duration_s=result.timings.get("startup_s", 0.0),
                          result=result.startup.result or RunResult.failed if result.startup else RunResult.failed,
                          detail=result.startup.id if result.startup else ""),
              StageRecord(name="checks", duration_s=result.timings.get("checks_s", 0.0),
                          result=RunResult.success if result.passed else RunResult.failed,
                          detail="; ".join(f"{c.name}: {c.detail}" for c in failed))]
    store.append_run(RunRecord(
        id=new_run_id(started_at), kind=RunKind.drill, trigger={"source": "drill", "drill": result.name},
        dry_run=False, started_at=started_at, finished_at=finished,
        duration_s=(finished - started_at).total_seconds(), result=RunResult.success if result.passed else
        RunResult.failed, stages=stages, changes={"restored": result.restored}))
