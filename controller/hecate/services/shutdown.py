"""Shutdown: the plan's actions wired to SSH, Kubernetes, NUT and the local host.

``capabilities(config)`` returns the action map the executor runs, built on one SSH pool
(connections reused for the whole run), one Kubernetes client, and the host. A
Kubernetes step that cannot reach the API is *skipped* with a warning -- shutdown never
depends on the cluster being healthy -- while node steps proceed over SSH.

``run(config, ...)`` executes a new shutdown or resumes one a killed process left in
the journal; the daemon and ``hecate shutdown --execute`` both call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hecate.adapters import nut, ssh
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig
from hecate.domain.plan import Action, Step, shutdown_plan
from hecate.domain.runs import RunKind, RunRecord
from hecate.services import ports, remote
from hecate.services.executor import ActionFn, Executor, Progress, Skipped, StepFailed, UndoFn, in_flight

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
async def capabilities(config: HecateConfig) -> AsyncIterator[Capabilities]:
    async with remote.connected(config, config.shutdown.parallelism) as conn:
        yield _capabilities(config, conn)


def _capabilities(config: HecateConfig, conn: remote.Remote) -> Capabilities:
    kube, k8s = conn.kube, conn.k8s

    async def node_command(step: Step, command: str, *, lost_is_success: bool = False) -> dict[str, Any]:
        detail = await conn.checked(step.target, command, step.params["command_timeout_s"],
                                    lost_is_success=lost_is_success)
        return {"detail": detail} if detail else {}

    async def flux_suspend(step: Step) -> dict[str, Any]:
        data: dict[str, Any] = await k8s("flux-suspend", kube.flux_suspend)
        data["detail"] = f"suspended {len(data['suspended'])}, already suspended {len(data['already_suspended'])}"
        return data

    async def flux_unsuspend(data: dict[str, Any]) -> None:
        await kube.flux_resume(list(data.get("suspended", [])))

    async def scale_down(step: Step) -> dict[str, Any]:
        scaled = await k8s("scale-down", lambda: kube.scale_down(step.params["selector"], step.params["namespace"]))
        return {"scaled": scaled, "detail": f"{len(scaled)} workloads to 0"}

    async def wait_volumes(step: Step) -> dict[str, Any]:
        deadline = time.monotonic() + float(step.params["timeout_s"])
        while True:
            remaining = await k8s("wait-volumes", kube.volume_attachments)
            if not remaining or time.monotonic() >= deadline:
                break
            await asyncio.sleep(2)
        return {"remaining": remaining, "detail": f"{len(remaining)} volume attachments remain" if remaining else ""}

    async def drain(step: Step) -> dict[str, Any]:
        cordoned = await k8s("cordon", lambda: kube.cordon(step.target))
        try:
            result: dict[str, Any] = await k8s(
                "drain", lambda: kube.drain(step.target, step.params["drain_timeout_s"]))
        except (StepFailed, Skipped) as err:
            err.data["cordoned"] = cordoned  # startup must still undo our cordon
            raise
        result["cordoned"] = cordoned
        if result.get("timed_out"):
            result["detail"] = f"drain timeout: {len(result.get('blocked', []))} pods left (PodDisruptionBudget)"
        return result

    async def stop_service(step: Step) -> dict[str, Any]:
        return await node_command(step, f"systemctl stop {step.params['unit']}")

    async def killall(step: Step) -> dict[str, Any]:
        return await node_command(step, KILLALL)

    async def poweroff(step: Step) -> dict[str, Any]:
        return await node_command(step, step.params["command"], lost_is_success=True)

    async def ups_power_cycle(step: Step) -> dict[str, Any]:
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
                    return {"command": command,
                            "detail": f"{command} sent: the UPS cuts its outputs and restores them when mains returns"}
        except (OSError, ValueError) as err:
            raise StepFailed(str(err)) from err
        except nut.NutError as err:
            raise StepFailed(str(err), transient=not err.upsd_reachable) from err
        raise StepFailed(f"UPS {ups.name} does not support {', '.join(POWER_CYCLE_COMMANDS)}: it cannot "
                         "power-cycle its outputs, so hosts may stay off when mains returns")

    async def host_command(step: Step) -> dict[str, Any]:
        argv = [str(a) for a in step.params["argv"]]
        try:
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                           timeout=step.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise StepFailed(f"{argv[0]}: {err}") from err
        if done.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-200:]}")
        return {}

    actions: dict[Action, ActionFn] = {
        Action.flux_suspend: flux_suspend, Action.scale_down: scale_down, Action.wait_volumes: wait_volumes,
        Action.host_hook: host_command, Action.drain: drain, Action.stop_service: stop_service,
        Action.killall: killall, Action.poweroff: poweroff, Action.ups_power_cycle: ups_power_cycle,
        Action.local_poweroff: host_command,
    }
    return Capabilities(actions, {Action.flux_suspend: flux_unsuspend}, conn.pool, kube)


def in_flight_shutdown(store: StateStore) -> str | None:
    """The id of a shutdown a killed process left in the journal, if any."""
    return in_flight(store, RunKind.shutdown)


async def run(config: HecateConfig, trigger: dict[str, Any], progress: Progress, *,
              power_restored: Callable[[], bool] | None = None) -> RunRecord:
    """Execute the shutdown (or resume the one in the journal). Raises ``RunInProgress``."""
    plan = shutdown_plan(config)  # from the host's configuration, also when resuming
    async with capabilities(config) as caps:
        executor = Executor(StateStore(config.state_dir), caps.actions, progress, undo=caps.undo)
        return await executor.run_or_resume(plan, trigger, power_restored=power_restored)
