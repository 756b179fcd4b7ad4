"""Shutdown: the plan's actions wired to SSH, Kubernetes, NUT and the local host.

``capabilities(config, plan)`` returns the action map the executor runs, built on one SSH
pool (connections reused for the whole run, as many at work as the plan's stages run node
commands at once), one Kubernetes client, and the host. A Kubernetes step that cannot reach
the API tries again with backoff within its own time (:func:`api_window`): a blip of a few
seconds must not cost the cluster its Flux suspension, scale-down or drain. Only when the
API stays unreachable that long is the step *skipped* with a warning -- shutdown never
depends on the cluster being healthy -- and node steps proceed over SSH.

``run(config, ...)`` executes a new shutdown or resumes one a killed process left in
the journal; the daemon and ``hecate shutdown --execute`` both call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hecate.adapters import kube as kube_mod
from hecate.adapters import nut, ssh
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig
from hecate.domain.params import (
    DrainParams,
    HostCommandParams,
    HostStopParams,
    NodeCommandParams,
    PoweroffParams,
    ScaleParams,
    StopServiceParams,
    WaitParams,
)
from hecate.domain.plan import Action, Plan, Step, shutdown_plan
from hecate.domain.results import (
    Done,
    Drained,
    FluxSuspended,
    FsdSet,
    PowerCycled,
    ScaledDown,
    StepResult,
    VolumesWaited,
)
from hecate.domain.runs import RunKind, RunRecord
from hecate.services import ports, remote
from hecate.services.executor import ActionFn, Executor, Progress, StepFailed, UndoFn, in_flight

log = logging.getLogger(__name__)

KILLALL = "/usr/local/bin/k3s-killall.sh"
# The NUT instant command that cuts the outputs after `ups.delay.shutdown` and restores them when
# mains returns (the POWERDOWNFLAG flow). `load.off`/`load.off.delay` would cut them for good: never used.
POWER_CYCLE_COMMANDS = ("shutdown.return",)


@dataclass
class Capabilities:
    actions: dict[Action, ActionFn]
    undo: dict[Action, UndoFn]
    pool: ssh.SshPool
    kube: ports.Cluster


@contextlib.asynccontextmanager
async def capabilities(config: HecateConfig, plan: Plan) -> AsyncIterator[Capabilities]:
    async with remote.connected(config, plan.node_parallelism) as conn:
        yield _capabilities(config, conn)


API_RETRY_MARGIN_S = 0.5
"""Room left in a step after its last API attempt (scheduling, journaling)."""


def api_window(step: Step, stage_timeout_s: float, api_timeout_s: float) -> float:
    """How long a Kubernetes step keeps calling an unreachable API, from its start.

    The step's own timeout, never past ``shutdown.stage_timeout_s``, less one call's timeout
    (``cluster.api_timeout_s``) so that an attempt started before the end also ends in time: the
    executor's per-step bound never cuts a retry short, and the step is reported as skipped, not
    timed out. Purely computational.
    """
    return max(0.0, min(step.timeout_s, stage_timeout_s) - api_timeout_s - API_RETRY_MARGIN_S)


NUT_TIMEOUT_S = 2.0
"""Bounds upsd's connect and each exchange (login, PRIMARY, FSD) when setting FSD."""


async def set_fsd(config: HecateConfig, step: Step) -> FsdSet:
    """The ``set-fsd`` action: log in with the UPS's ``credentials_file``, ``PRIMARY``, ``FSD``.

    Wrong credentials or a user without ``upsmon primary`` fail the step with what to fix; a upsd that
    does not answer fails it as transient (retried within the step's bounds). Nothing here stops the run.
    """
    ups = next((u for u in config.ups if u.name == step.target), None)
    if ups is None:
        raise StepFailed(f"ups {step.target} is no longer in the configuration")
    if ups.credentials_file is None:
        raise StepFailed(f"ups {ups.name} has no credentials_file: upsd needs a login to set FSD")
    try:
        user, password = nut.read_credentials_file(ups.credentials_file)
    except (OSError, ValueError) as err:
        raise StepFailed(f"ups {ups.name}: cannot read credentials_file: {err}") from err
    try:
        async with nut.NutClient(ups.host, ups.port, username=user, password=password,
                                 connect_timeout=NUT_TIMEOUT_S, read_timeout=NUT_TIMEOUT_S) as client:
            login = await client.set_fsd(ups.name)
    except nut.NutAccessDenied as err:
        raise StepFailed(f"{err}: upsd refused to set FSD for user {user!r} (check the password in "
                         f"{ups.credentials_file} and that upsd.users gives the user `upsmon primary`)") from err
    except nut.NutError as err:
        raise StepFailed(f"setting FSD failed: {err}", transient=not err.upsd_reachable) from err
    log.warning("set FSD on UPS %s at %s:%s: its upsmon secondaries shut down", ups.name, ups.host, ups.port)
    return FsdSet(login)


def _capabilities(config: HecateConfig, conn: remote.Remote) -> Capabilities:
    kube, k8s = conn.kube, conn.k8s

    def api_until(step: Step) -> float:
        return time.monotonic() + api_window(step, config.shutdown.stage_timeout_s, config.cluster.api_timeout_s)

    async def node_command(step: Step, command: str, timeout: float, *, lost_is_success: bool = False) -> Done:
        # step=: a node an earlier stage found unreachable gets one short re-probe, not every attempt again.
        return Done(await conn.checked(step.target, command, timeout, lost_is_success=lost_is_success, step=step))

    async def flux_suspend(step: Step) -> FluxSuspended:
        return FluxSuspended.from_data(await k8s("flux-suspend", kube.flux_suspend, FluxSuspended.from_data,
                                                 until=api_until(step)))

    async def flux_unsuspend(result: StepResult) -> None:
        if isinstance(result, FluxSuspended):
            await kube.flux_resume(list(result.suspended))

    async def scale_down(step: Step) -> ScaledDown:
        tier = step.params_as(ScaleParams)
        return ScaledDown(await k8s("scale-down", lambda: kube.scale_down(tier.selector, tier.namespace), ScaledDown,
                                    until=api_until(step)))

    async def wait_volumes(step: Step) -> VolumesWaited:
        deadline = time.monotonic() + step.params_as(WaitParams).timeout_s
        until = min(deadline, api_until(step))
        while True:
            remaining = await k8s("wait-volumes", kube.volume_attachments, until=until)
            if not remaining or time.monotonic() >= deadline:
                break
            await asyncio.sleep(2)
        return VolumesWaited(tuple(remaining))

    async def drain(step: Step) -> Drained:
        timeout = step.params_as(DrainParams).timeout_s
        started = time.monotonic()
        until = api_until(step)
        cordoned = await k8s("cordon", lambda: kube.cordon(step.target), until=until)
        evicted: list[str] = []  # by attempts the API cut short: the next attempt no longer sees those pods

        async def attempt() -> dict[str, Any]:
            try:  # the PodDisruptionBudget wait gets what an API blip left of the drain timeout
                report: dict[str, Any] = await kube.drain(step.target, max(0.0, started + timeout - time.monotonic()))
            except kube_mod.ApiUnavailable as err:
                if isinstance(err.partial, dict):
                    evicted.extend(err.partial.get("evicted", []))
                raise
            return with_evicted(report)

        def with_evicted(report: dict[str, Any]) -> dict[str, Any]:
            return {**report, "evicted": sorted({*evicted, *report.get("evicted", [])})} if evicted else report

        # A drain that fails or is skipped still records the cordon: startup must undo it.
        report = await k8s("drain", attempt, lambda done: Drained(cordoned, with_evicted(done)), until=until)
        return Drained(cordoned, report)

    async def stop_service(step: Step) -> Done:
        params = step.params_as(StopServiceParams)
        return await node_command(step, f"systemctl stop {params.unit}", params.command_timeout_s)

    async def host_stop(step: Step) -> Done:
        # Every command runs even when one before it failed (stop what can be stopped); an unreachable
        # host fails the step at once. The command line is quoted: the remote shell runs argv, nothing more.
        params = step.params_as(HostStopParams)
        failed: list[str] = []
        for argv in params.commands:
            try:
                await node_command(step, shlex.join(argv), params.command_timeout_s)
            except StepFailed as err:
                if err.transient:
                    raise
                failed.append(str(err))
        if failed:
            raise StepFailed("; ".join(failed))
        return Done(f"{len(params.commands)} command{'s' if len(params.commands) != 1 else ''} ran")

    async def killall(step: Step) -> Done:
        return await node_command(step, KILLALL, step.params_as(NodeCommandParams).command_timeout_s)

    async def poweroff(step: Step) -> Done:
        # Done only once the node is gone: its reply, or a session its power-off cut, is not proof.
        params = step.params_as(PoweroffParams)
        started = time.monotonic()
        sent = await node_command(step, params.command, params.command_timeout_s, lost_is_success=True)
        waited = await conn.await_gone(step.target, started + params.command_timeout_s)
        return Done("; ".join(filter(None, [sent.note, f"gone after {waited:.1f} s"])))

    async def ups_power_cycle(step: Step) -> PowerCycled:
        ups = next(u for u in config.ups if u.name == step.target)
        if ups.credentials_file is None:
            raise StepFailed(f"ups {ups.name} has no credentials_file: upsd needs a login for instant commands")
        try:
            user, password = nut.read_credentials_file(ups.credentials_file)
            async with nut.NutClient(ups.host, ups.port, username=user, password=password) as client:
                for command in POWER_CYCLE_COMMANDS:
                    try:
                        await client.instcmd(ups.name, command)
                    except nut.NutProtocolError as err:
                        if err.code == "CMD-NOT-SUPPORTED":
                            continue
                        raise
                    return PowerCycled(command)
        except (OSError, ValueError) as err:
            raise StepFailed(str(err)) from err
        except nut.NutError as err:
            raise StepFailed(str(err), transient=not err.upsd_reachable) from err
        raise StepFailed(f"UPS {ups.name} does not support {', '.join(POWER_CYCLE_COMMANDS)}: it cannot "
                         "power-cycle its outputs, so hosts may stay off when mains returns")

    async def host_command(step: Step) -> Done:
        argv = list(step.params_as(HostCommandParams).argv)
        try:
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                           timeout=step.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise StepFailed(f"{argv[0]}: {err}") from err
        if done.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-200:]}")
        return Done()

    async def fsd(step: Step) -> FsdSet:
        return await set_fsd(config, step)

    actions: dict[Action, ActionFn] = {
        Action.set_fsd: fsd, Action.flux_suspend: flux_suspend, Action.scale_down: scale_down,
        Action.wait_volumes: wait_volumes,
        Action.host_hook: host_command, Action.drain: drain, Action.stop_service: stop_service,
        Action.host_stop: host_stop,
        Action.killall: killall, Action.poweroff: poweroff, Action.ups_power_cycle: ups_power_cycle,
        Action.local_poweroff: host_command,
    }
    return Capabilities(actions, {Action.flux_suspend: flux_unsuspend}, conn.pool, kube)


def in_flight_shutdown(store: StateStore) -> str | None:
    """The id of a shutdown a killed process left in the journal, if any."""
    return in_flight(store, RunKind.shutdown)


async def run(config: HecateConfig, trigger: dict[str, Any], progress: Progress, *,
              power_restored: Callable[[], bool] | None = None, store: StateStore | None = None,
              armed: bool = False) -> RunRecord:
    """Execute the shutdown (or resume the one in the journal). Raises ``RunInProgress``.

    ``store``: the daemon's (its write failures show in status); ``armed``: the daemon's armed
    shutdown, which goes on without the cross-process run lock when the lock file cannot be
    opened (a person's ``hecate shutdown --execute`` is refused then).
    """
    plan = shutdown_plan(config)  # from the host's configuration, also when resuming
    async with capabilities(config, plan) as caps:
        executor = Executor(store or StateStore(config.state_dir), caps.actions, progress, undo=caps.undo,
                            lock_required=not armed)
        return await executor.run_or_resume(plan, trigger, power_restored=power_restored)
