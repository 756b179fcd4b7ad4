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

from hecate.adapters import kube as kube_mod
from hecate.adapters import nut, ssh
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig
from hecate.domain.plan import Action, Step, shutdown_plan
from hecate.domain.runs import RunKind, RunRecord
from hecate.services.executor import ActionFn, Executor, Progress, Skipped, StepFailed, UndoFn

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
    kube: kube_mod.Kube


@contextlib.asynccontextmanager
async def capabilities(config: HecateConfig) -> AsyncIterator[Capabilities]:
    # One thread per node a stage may touch at once: each command holds its thread while it runs.
    width = max(1, min(config.shutdown.parallelism, len(config.cluster.nodes)))
    pool = ssh.SshPool(config.ssh, config.cluster.nodes, max_workers=width)
    kube = kube_mod.Kube(config.cluster.kubeconfig, config.cluster.api_timeout_s)
    # Open the SSH connections while the Kubernetes stages run, so handshakes are off the critical
    # path; a failure here is harmless (a command connects on first use and reports it).
    preconnect = asyncio.create_task(pool.connect_all(), name="ssh-preconnect")

    async def k8s(what: str, call: Callable[[], Any]) -> Any:
        try:
            return await call()
        except kube_mod.ApiUnavailable as err:
            raise Skipped(f"Kubernetes API unreachable, {what} skipped: {err}",
                          data=_partial(what, err.partial)) from err
        except kube_mod.KubeError as err:
            raise StepFailed(f"{what}: {err}", data=_partial(what, err.partial)) from err

    async def node_command(step: Step, command: str, *, lost_is_success: bool = False) -> dict[str, Any]:
        try:
            result = await pool.run(step.target, command, timeout=step.params["command_timeout_s"])
        except (ssh.SshDisconnected, ssh.SshTimeout) as err:
            if lost_is_success:  # the poweroff took the node (and its sshd) away before it could reply
                return {"detail": f"no reply after the command was sent ({type(err).__name__}): taken as off"}
            raise StepFailed(str(err), transient=err.transient) from err
        except ssh.SshError as err:
            raise StepFailed(str(err), transient=err.transient) from err
        if result.exit_code != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            raise StepFailed(f"`{command}` exited {result.exit_code}" + (f": {output[-1]}" if output else ""))
        return {}

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
    try:
        yield Capabilities(actions, {Action.flux_suspend: flux_unsuspend}, pool, kube)
    finally:
        preconnect.cancel()
        await asyncio.gather(preconnect, return_exceptions=True)
        await pool.close()
        kube.close()


def _partial(what: str, partial: Any) -> dict[str, Any]:
    """A failed Kubernetes step's partial result, in the shape its success would have had."""
    if not isinstance(partial, dict):
        return {}
    return {"scaled": partial} if what == "scale-down" else partial


def in_flight_shutdown(store: StateStore) -> str | None:
    """The id of a shutdown a killed process left in the journal, if any."""
    for run_id in store.in_flight_runs():
        head = next((e for e in store.journal_read(run_id) if e.get("event") == "run"), None)
        if head and head.get("plan", {}).get("kind") == RunKind.shutdown.value:
            return run_id
    return None


async def run(config: HecateConfig, trigger: dict[str, Any], progress: Progress, *,
              power_restored: Callable[[], bool] | None = None) -> RunRecord:
    """Execute the shutdown (or resume the one in the journal). Raises ``RunInProgress``."""
    store = StateStore(config.state_dir)
    plan = shutdown_plan(config)  # from the host's configuration, also when resuming
    async with capabilities(config) as caps:
        executor = Executor(store, caps.actions, progress, undo=caps.undo)
        pending = in_flight_shutdown(store)
        if pending is not None and not executor.is_stale(pending):
            return await executor.resume(pending, plan=plan, power_restored=power_restored)
        if pending is not None:  # from an earlier boot: record it as interrupted, then do what was asked
            try:
                await executor.resume(pending)
            except ValueError as err:  # a journal without a plan: discarded
                log.warning("%s", err)
        return await executor.run(plan, trigger, power_restored=power_restored)
