"""Startup: the plan's actions wired to NUT, SSH, Kubernetes and the bootstrap cache.

Every action looks before it acts, so a startup on a healthy cluster changes nothing
(``hecate-bootstrap.service`` runs ``hecate startup --execute`` at every boot). Waits
poll every :data:`POLL_S` within the step's own deadline; a node or workload that does
not come back fails its step, which degrades the run while the rest proceeds. Only the
preflight aborts: starting on a nearly empty battery during flapping mains is how
clusters get corrupted.

The Flux/Gitea deadlock (see ``hecate.services.bootstrap_cache``): ``flux-bootstrap``
watches the GitRepository; when it is not Ready *and* the Gitea workload is not
available for ``flux.detection_window_s``, it applies the cached manifests (missing
objects only), points the GitRepository at the fallback branch if one is given, asks
Flux to reconcile, and waits for the GitRepository and the Kustomizations to be Ready.

Before every stage after the preflight the UPSes are read again: if mains has failed
again the startup stops (recorded as ``aborted``), which frees the run lock for the
daemon's shutdown.

After a cold start etcd still holds the statuses from before the outage -- Nodes Ready,
workloads with all their replicas ready -- until the node controller's grace period marks
them stale. Every readiness check therefore believes only what was written since the run
began (``since``): a Node whose kubelet renewed its Lease or posted a heartbeat since, a
workload whose status is of its current generation and whose pods live kubelets confirmed
(:func:`hecate.domain.kubeobjects.node_signal`, :func:`~hecate.domain.kubeobjects.workload_fresh`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hecate.adapters import kube as kube_mod
from hecate.adapters import nut, wol
from hecate.adapters.store import StateStore
from hecate.domain import kubeobjects
from hecate.domain.config import HecateConfig, Wake
from hecate.domain.params import (
    FluxBootstrapParams,
    FluxResumeParams,
    PreflightParams,
    ScaleParams,
    StartServiceParams,
    VerifyParams,
    WaitParams,
    WakeParams,
    WorkloadParams,
)
from hecate.domain.plan import Action, Step, startup_plan
from hecate.domain.results import (
    BranchChange,
    Done,
    FluxBootstrapped,
    FluxResumed,
    Restored,
    ServiceStarted,
    StepResult,
    Uncordoned,
    Woken,
    WorkloadRecovery,
)
from hecate.domain.runs import RunRecord
from hecate.services import bootstrap_cache, remote
from hecate.services.executor import ActionFn, Executor, Progress, StepFailed

log = logging.getLogger(__name__)

POLL_S = 0.5
KUBE_COOLDOWN_S = 0.4  # startup polls an API that is coming up: every poll (POLL_S) really asks


async def _until(deadline: float, probe: Callable[[], Awaitable[Any]], *, what: str) -> Any:
    """Call ``probe`` every POLL_S until it returns something truthy; StepFailed at the deadline.

    An unreachable API counts as "not yet": the probe is tried again.
    """
    last = ""
    while True:
        try:
            result = await probe()
            if result:
                return result
        except kube_mod.ApiUnavailable as err:
            last = f" (API: {err})"
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what}{last}")
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


async def _api(step: Step, what: str, call: Callable[[], Awaitable[Any]], so_far: StepResult | None = None) -> Any:
    """One Kubernetes call that retries an unreachable API until the step's own deadline.

    A startup talks to an API that is just coming up (503s during etcd elections): unlike
    shutdown, an unreachable API must never let a startup step pass as skipped. ``so_far``
    (what the step changed before this call) goes with the failure.
    """
    deadline = time.monotonic() + max(1.0, step.timeout_s - 2.0)
    while True:
        try:
            return await call()
        except kube_mod.ApiUnavailable as err:
            if time.monotonic() >= deadline:
                raise StepFailed(f"{what}: the API stayed unreachable: {err}", result=so_far) from err
        except kube_mod.KubeError as err:
            raise StepFailed(f"{what}: {err}", result=so_far) from err
        await asyncio.sleep(POLL_S)


def actions(config: HecateConfig, conn: remote.Remote, *, since: datetime) -> dict[Action, ActionFn]:
    """The startup's capabilities; ``since`` is when the run began: only a Node or workload status
    written after it is believed (statuses from before the outage outlive it in etcd)."""
    kube = conn.kube
    flux = config.flux
    reader = nut.NutReader(timeout=2.0)

    async def preflight(step: Step) -> Done:
        ups = next(u for u in config.ups if u.name == step.target)
        params = step.params_as(PreflightParams)
        minimum = params.min_charge_percent
        seen: dict[str, Any] = {}

        async def ok() -> bool:
            snap = await reader.read(ups)
            seen.update(status=snap.status, charge=snap.charge_pct, error=snap.error)
            if snap.on_battery:  # mains failed again (or never came back): leave the lock to the daemon's shutdown
                raise StepFailed(f"UPS {ups.name} is on battery ({snap.status}): not starting the cluster")
            return snap.on_mains and (snap.charge_pct is None or snap.charge_pct >= minimum)

        started = time.monotonic()
        await _until(started + params.timeout_s, ok,
                     what=f"UPS {ups.name} not on mains with charge >= {minimum:g} % within "
                          f"{params.timeout_s:g} s (last: {seen})")
        waited = time.monotonic() - started
        return Done(f"on mains, charge {seen['charge']}%" + (f" after {waited:.0f} s" if waited > 1 else ""))

    async def wake(step: Step) -> Woken:
        if await conn.pool.probe(step.target, conn.probe_timeout) is None:  # its sshd answers
            return Woken(False, "already up")
        params = step.params_as(WakeParams)
        started = time.monotonic()
        woken = await send_wake(step, params)
        if params.wait_s <= 0:
            return woken
        # A `hosts:` machine with wait_ssh: its sshd answers before the step is done.
        why: str | None = "not probed"

        async def answers() -> bool:
            nonlocal why
            why = await conn.pool.probe(step.target, conn.probe_timeout)
            return why is None

        try:
            await _until(started + params.wait_s, answers, what=f"sshd did not answer within {params.wait_s:g} s")
        except StepFailed as err:
            raise StepFailed(f"{err} ({woken.note or 'not woken'}; last: {why})", result=woken) from err
        up = f"sshd up after {time.monotonic() - started:.1f} s"
        return Woken(woken.woken, "; ".join(filter(None, [woken.note, up])))

    async def send_wake(step: Step, params: WakeParams) -> Woken:
        if params.method is Wake.none:
            return Woken(False, "")
        if params.method is Wake.wol:
            if not params.mac:
                raise StepFailed(f"{step.target} has no wake_mac: cannot send Wake-on-LAN")
            await asyncio.to_thread(wol.send_magic_packet, params.mac)
            return Woken(True, f"Wake-on-LAN to {params.mac}")
        argv = list(params.argv)
        if not argv:
            raise StepFailed("startup.wake is 'command' but startup.wake_command is empty")
        try:
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                           timeout=config.ssh.command_timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise StepFailed(f"{argv[0]}: {err}") from err
        if done.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-200:]}")
        return Woken(True, f"ran {argv[0]}")

    async def start_service(step: Step) -> ServiceStarted:
        params = step.params_as(StartServiceParams)
        unit, timeout = params.unit, params.command_timeout_s
        deadline = time.monotonic() + params.boot_timeout_s
        while True:  # the node may still be booting: its sshd answers when it is up
            try:
                active = await conn.command(step.target, f"systemctl is-active {unit}", timeout)
                if active.exit_code == 0:
                    return ServiceStarted(unit, started=False)
                # --no-block: a k3s server with embedded etcd reports started only once etcd has a quorum,
                # which needs the other servers: waiting here would deadlock the first one. wait-api waits.
                await conn.checked(step.target, f"systemctl start --no-block {unit}", timeout)
                return ServiceStarted(unit, started=True)
            except StepFailed as err:
                if not err.transient or time.monotonic() >= deadline:
                    raise StepFailed(f"{err} (node not reachable within {params.boot_timeout_s:g} s)"
                                     if err.transient else str(err)) from err
            await asyncio.sleep(POLL_S)

    async def wait_api(step: Step) -> Done:
        started = time.monotonic()
        timeout = step.params_as(WaitParams).timeout_s
        version = await _until(started + timeout, kube.server_version,
                               what=f"the API did not answer within {timeout:g} s")
        return Done(f"{version} after {time.monotonic() - started:.1f} s")

    async def wait_node(step: Step) -> Done:
        started = time.monotonic()
        last = "not registered"

        async def ready() -> bool:
            nonlocal last
            signal = (await kube.node_signals(since)).get(step.target)
            last = signal.detail if signal is not None else "not registered"
            return signal is not None and signal.up

        timeout = step.params_as(WaitParams).timeout_s
        try:
            await _until(started + timeout, ready, what=f"not Ready after {timeout:g} s")
        except StepFailed as err:
            raise StepFailed(f"{err}: {last}") from err
        return Done(f"Ready after {time.monotonic() - started:.1f} s")

    async def uncordon(step: Step) -> Uncordoned:
        nodes: list[str] = await _api(step, "uncordon", kube.cordoned_by_hecate)
        done: list[str] = []
        for node in nodes:
            await _api(step, f"uncordon {node}", functools.partial(kube.uncordon, node), Uncordoned(tuple(done)))
            done.append(node)
        return Uncordoned(tuple(done))

    async def apply_cache(manifests_dir: str) -> dict[str, Any]:
        try:
            objects = bootstrap_cache.load(Path(manifests_dir) if manifests_dir else flux.fallback_manifests_dir)
        except bootstrap_cache.CacheError as err:
            raise StepFailed(f"bootstrap cache: {err}") from err
        if not objects:
            return {"created": [], "present": [], "failed": {}, "empty": True}
        result: dict[str, Any] = await kube.apply_missing(objects)
        return result

    async def wait_workload(step: Step) -> WorkloadRecovery:
        ref = kubeobjects.canonical_ref(step.target)
        params = step.params_as(WorkloadParams)
        started = time.monotonic()
        deadline = started + params.timeout_s
        recover_at = started + params.recovery_after_s
        restarted: list[str] = []
        applied: list[str] = []
        state: dict[str, Any] = {}
        while True:
            try:
                state = await kube.workload(ref, since)
                if state["available"]:
                    return WorkloadRecovery(tuple(restarted), tuple(applied), time.monotonic() - started)
                if not state["exists"] or time.monotonic() >= recover_at:
                    applied += (await apply_cache(params.manifests_dir))["created"]
                    if state["exists"]:
                        restarted += await kube.restart_unready_pods(ref)
                    recover_at = time.monotonic() + params.recovery_after_s
            except kube_mod.ApiUnavailable:
                pass
            except kube_mod.KubeError as err:
                raise StepFailed(str(err), result=WorkloadRecovery(tuple(restarted), tuple(applied))) from err
            if time.monotonic() >= deadline:
                raise StepFailed(f"not available after {params.timeout_s:g} s "
                                 f"({state.get('detail', 'API unreachable')})",
                                 result=WorkloadRecovery(tuple(restarted), tuple(applied)))
            await asyncio.sleep(POLL_S)

    async def flux_resume(step: Step) -> FluxResumed:
        status = await _api(step, "flux-resume", kube.flux_status)
        ours = sorted(ref for ref, s in status.items() if s["suspended"] and s["ours"])
        resumed: list[str] = []
        for ref in ours:
            resumed += await _api(step, f"resume {ref}", functools.partial(kube.flux_resume, [ref], reconcile=True),
                                  FluxResumed(tuple(resumed)))
        cleared = tuple(await _api(step, "clear stale marks", kube.clear_stale_marks, FluxResumed(tuple(resumed))))
        branch = step.params_as(FluxResumeParams).force_branch
        if not branch:
            return FluxResumed(tuple(resumed), cleared)
        previous = await _api(step, "force branch",
                              functools.partial(kube.set_git_branch, flux.namespace, flux.git_repository, branch),
                              FluxResumed(tuple(resumed), cleared))
        return FluxResumed(tuple(resumed), cleared, BranchChange(previous, branch))

    async def flux_bootstrap(step: Step) -> FluxBootstrapped:
        namespace, name = step.target.split("/", 1)
        repo_ref = kubeobjects.format_ref(namespace, kubeobjects.GIT_REPOSITORY, name)
        params = step.params_as(FluxBootstrapParams)
        gitea = kubeobjects.canonical_ref(params.gitea_workload)
        window, ready_timeout = params.detection_window_s, params.ready_timeout_s
        started = time.monotonic()
        deadline = started + window + ready_timeout
        stuck_since: float | None = None
        requested = False
        so_far = FluxBootstrapped()
        last = "API unreachable"

        async def break_deadlock() -> None:
            nonlocal so_far
            cached = await apply_cache(params.manifests_dir)
            so_far = replace(so_far, fallback=True, applied=tuple(cached["created"]), apply_failed=cached["failed"])
            if cached.get("empty"):
                log.warning("the bootstrap cache %s is empty: nothing to apply", flux.fallback_manifests_dir)
            if params.branch:
                previous = await kube.set_git_branch(namespace, name, params.branch)
                so_far = replace(so_far, branch=BranchChange(previous, params.branch))
            await _request_reconcile(repo_ref)

        while True:
            now = time.monotonic()
            try:
                if not requested:
                    # After a cold start etcd still holds the statuses from before the outage: only a
                    # status written after our reconcile request (lastHandledReconcileAt) is believed.
                    await _request_reconcile(repo_ref)
                    requested = True
                repo = await kube.git_repository(namespace, name)
                fresh = repo["handled_at"] is not None and repo["handled_at"] == repo["requested_at"]
                if repo["ready"] and fresh:
                    status = await kube.flux_status()
                    waiting = sorted(r for r, s in status.items() if kubeobjects.parse_ref(r)[1] == "Kustomization"
                                     and not s["suspended"] and not (s["ready"] and s["fresh"]))
                    if not waiting:
                        return replace(so_far, ready_after_s=now - started)
                    last = f"waiting for {', '.join(waiting)}"
                    stuck_since = None
                else:
                    gitea_state = await kube.workload(gitea, since)
                    last = (f"GitRepository not Ready ({repo['reason']}: {repo['message']})" if fresh else
                            "GitRepository has not handled the reconcile request yet") + \
                        f"; Gitea {gitea_state['detail']}"
                    if gitea_state["available"]:
                        stuck_since = None
                    else:
                        stuck_since = stuck_since if stuck_since is not None else now
                        if now - stuck_since >= window and not so_far.deadlock:
                            so_far = replace(so_far, deadlock=True)
                            log.warning("Flux/Gitea deadlock: %s for %.0f s", last, now - stuck_since)
                            if params.fallback:
                                await break_deadlock()
                                # the plan gives this step window + 2 x ready_timeout: this fits in it
                                deadline = max(deadline, time.monotonic() + ready_timeout)
            except kube_mod.ApiUnavailable as err:
                last = f"API unreachable: {err}"
            except kube_mod.KubeError as err:
                raise StepFailed(str(err), result=so_far) from err
            if time.monotonic() >= deadline:
                why = ("deadlocked and the fallback is off (flux.bootstrap_fallback: false)"
                       if so_far.deadlock and not params.fallback else "not Ready")
                if so_far.fallback and not so_far.applied:
                    why += (f"; the fallback created nothing (the cache in {params.manifests_dir} "
                            "is empty or everything in it exists)")
                raise StepFailed(f"Flux {why} after {time.monotonic() - started:.0f} s: {last}", result=so_far)
            await asyncio.sleep(POLL_S)

    async def _request_reconcile(repo_ref: str) -> None:
        status = await kube.flux_status()
        await kube.request_reconcile([repo_ref, *sorted(r for r, s in status.items() if not s["suspended"])])

    async def restore(step: Step) -> Restored:
        tier = step.params_as(ScaleParams)
        restored = await _api(step, "restore", functools.partial(kube.restore_replicas, tier.selector,
                                                                 tier.namespace))
        return Restored(restored)

    async def verify(step: Step) -> Done:
        params = step.params_as(VerifyParams)
        namespace, name = params.git_repository.split("/", 1)
        problems: list[str] = []

        async def converged() -> bool:
            problems.clear()
            signals = await kube.node_signals(since)
            problems.extend(f"node {n} not Ready" + (f" ({signals[n].detail})" if n in signals else "")
                            for n in params.nodes if n not in signals or not signals[n].up)
            for ref in params.foundation:
                state = await kube.workload(kubeobjects.canonical_ref(ref), since)
                if not state["available"]:
                    problems.append(f"{ref} {state['detail']}")
            try:
                repo = await kube.git_repository(namespace, name)
                if not repo["ready"]:
                    problems.append(f"GitRepository {namespace}/{name} not Ready: {repo['message']}")
            except kube_mod.KubeNotFound:
                problems.append(f"GitRepository {namespace}/{name} not found")
            status = await kube.flux_status()
            problems.extend(f"{r} not Ready" for r, s in sorted(status.items())
                            if not s["suspended"] and not s["ready"])
            # What Hecate changed must all be undone, whatever an earlier stage reported.
            problems.extend(f"{r} still suspended by Hecate" for r, s in sorted(status.items())
                            if s["suspended"] and s["ours"])
            problems.extend(f"node {n} still cordoned by Hecate" for n in await kube.cordoned_by_hecate())
            problems.extend(f"{r} still scaled down by Hecate" for r in await kube.scaled_by_hecate())
            return not problems

        try:
            await _until(time.monotonic() + params.timeout_s, converged,
                         what=f"not converged after {params.timeout_s:g} s")
        except StepFailed as err:
            raise StepFailed(f"{err}: {'; '.join(problems)}") from err
        except kube_mod.KubeError as err:
            raise StepFailed(str(err)) from err
        return Done("nodes Ready, Flux Ready, foundation available")

    return {
        Action.preflight: preflight, Action.wake: wake, Action.start_service: start_service,
        Action.wait_api: wait_api, Action.wait_node: wait_node, Action.uncordon: uncordon,
        Action.wait_workload: wait_workload, Action.flux_resume: flux_resume,
        Action.flux_bootstrap: flux_bootstrap, Action.restore: restore, Action.verify: verify,
    }


async def run(config: HecateConfig, trigger: dict[str, Any], progress: Progress, *,
              force_branch: str | None = None) -> RunRecord:
    """Execute the startup (resuming one a killed process left this boot). Raises ``RunInProgress``."""
    plan = startup_plan(config, force_branch=force_branch)
    since = datetime.now(UTC)  # statuses written before the run may be from before the outage
    reader = nut.NutReader(timeout=2.0)
    protecting = [u for u in config.ups if u.protects_cluster]

    async def power_failed_again() -> str | None:
        """Mains failing again during a startup: stop, so that the daemon's shutdown can take the lock."""
        snapshots = await asyncio.gather(*(reader.read(u) for u in protecting))
        on_battery = [s.ups for s in snapshots if s.on_battery]
        return f"UPS {', '.join(on_battery)} on battery again" if on_battery else None

    async with remote.connected(config, plan.node_parallelism, kube_cooldown=KUBE_COOLDOWN_S) as conn:
        executor = Executor(StateStore(config.state_dir), actions(config, conn, since=since), progress)
        return await executor.run_or_resume(plan, trigger, interrupt=power_failed_again if protecting else None)
