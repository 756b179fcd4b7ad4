"""The connections a run acts through: one SSH pool and one Kubernetes client.

Shutdown and startup both build their actions on :func:`connected`, which opens the SSH
connections in the background (handshakes off the critical path) and translates adapter
errors into the executor's terms: a Kubernetes step that cannot reach the API retries it
with backoff until its deadline and is *skipped* only when the API stayed unreachable that
long (the run goes on over SSH), a refusal *fails* the step, and an SSH error fails it as
transient or not.

A node that a step found unreachable (its connection attempts, retries included, failed) is
*marked down* for the rest of the run: a later step on it (``checked(..., step=)``) first
gives it one short re-probe (:data:`PROBE_TIMEOUT_S`, one TCP connect) and fails at once
if it still does not answer, instead of paying the connection attempts and retries again
in every stage. A node that answers the probe, or any command, is no longer down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hecate.adapters import kube as kube_mod
from hecate.adapters import ssh
from hecate.domain.config import HecateConfig, Host, Node
from hecate.domain.plan import Step
from hecate.domain.results import StepResult
from hecate.services import ports
from hecate.services.executor import BACKOFF_S, Skipped, StepFailed

log = logging.getLogger(__name__)

Partial = Callable[[dict[str, Any]], StepResult]
"""Builds a failed Kubernetes step's result from what the call had done (``{}`` when it says nothing)."""

PROBE_TIMEOUT_S = 2.0
"""The one re-probe a node marked down gets per later step (capped by ``ssh.connect_timeout_s``): a node
on the network answers a TCP connect in milliseconds."""

GONE_POLL_S = 0.1
"""How often a node told to power off is probed until it stops answering (:meth:`Remote.await_gone`)."""
GONE_PROBE_S = 0.25
"""One such probe's TCP connect timeout: a node whose link is down never answers. A live node slower than
this is taken as gone -- the lenient side: no worse than believing the power-off command's reply."""


@dataclass(frozen=True)
class Down:
    """Why a node is marked down: the step that found it unreachable, and the error."""

    step: Step
    reason: str


class Remote:
    def __init__(self, pool: ssh.SshPool, kube: ports.Cluster, *, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
        self.pool = pool
        self.kube = kube
        self.probe_timeout = probe_timeout
        self.down: dict[str, Down] = {}
        """Nodes marked down in this run (node name -> why)."""
        self.api_down = False
        """A step waited its whole deadline for the API in vain: later calls try once, not again that long."""

    async def k8s(self, what: str, call: Callable[[], Any], partial: Partial | None = None, *,
                  until: float | None = None) -> Any:
        """Await one Kubernetes call: unreachable API -> retried, then Skipped; refusal -> StepFailed.

        ``until`` (a ``time.monotonic()`` deadline): an unreachable API is called again with
        backoff (at least the client's cool-down, ``ApiUnavailable.retry_after``), the last time at
        the deadline -- an API blip of a few seconds must not cost the cluster its
        Flux suspension, scale-down or drain -- and the step is skipped only when the API stayed
        unreachable that long. Then the API counts as down for the rest of the run (``api_down``):
        later calls try once, so a dead API costs one deadline per run, not one per step, until a
        call gets through. Without ``until``: one attempt. The call is repeated whole, so it must be
        idempotent (Hecate's own marks make the shutdown's calls so). ``partial`` turns what the
        last attempt had changed before it stopped into the step's result.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                result = await call()
            except kube_mod.ApiUnavailable as err:
                now = time.monotonic()
                # Give up when the deadline has come, or the client would not try the network before it.
                if until is None or self.api_down or now + err.retry_after >= until:
                    self.api_down = self.api_down or until is not None
                    tried = f" for {time.monotonic() - started:.1f} s ({attempt + 1} attempts)" if attempt else ""
                    raise Skipped(f"Kubernetes API unreachable{tried}, {what} skipped: {err}",
                                  result=_partial(partial, err.partial)) from err
                backoff = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                await asyncio.sleep(max(err.retry_after, min(backoff, until - now)))  # the last try at the deadline
                continue
            except kube_mod.KubeError as err:
                self.api_down = False  # the API answered
                raise StepFailed(f"{what}: {err}", result=_partial(partial, err.partial)) from err
            self.api_down = False
            return result

    async def command(self, node: str, command: str, timeout: float) -> ssh.CommandResult:
        """Run one command on a node; a non-zero exit is returned, an SSH error raises StepFailed."""
        try:
            return await self.pool.run(node, command, timeout=timeout)
        except ssh.SshError as err:
            raise StepFailed(str(err), transient=err.transient) from err

    async def checked(self, node: str, command: str, timeout: float, *, lost_is_success: bool = False,
                      step: Step | None = None) -> str:
        """Like :meth:`command`, but a non-zero exit fails the step; returns a detail for the record.

        ``lost_is_success``: a poweroff may take the node (and its sshd) away before it replies.
        ``step``: the step the command belongs to, for marking the node down (see the module's doc):
        a node another step found unreachable is re-probed once, and fails the step at once if silent.
        """
        if step is not None:
            await self._unless_down(node, step)
        try:
            result = await self.pool.run(node, command, timeout=timeout)
        except (ssh.SshDisconnected, ssh.SshTimeout) as err:
            self._note(node, step, None)  # it answered before it went away
            if lost_is_success:
                return f"no reply after the command was sent ({type(err).__name__}): taken as off"
            raise StepFailed(str(err), transient=err.transient) from err
        except ssh.SshError as err:
            self._note(node, step, err)
            raise StepFailed(str(err), transient=err.transient) from err
        self._note(node, step, None)
        if result.exit_code != 0:
            output = result.last_line()
            raise StepFailed(f"`{command}` exited {result.exit_code}" + (f": {output}" if output else ""))
        return ""


    async def await_gone(self, node: str, deadline: float) -> float:
        """Wait until ``node`` stops answering a TCP connect on its SSH port: its power-off took it away.

        Returns the seconds waited. A power-off command's reply (exit 0: ``systemctl poweroff`` only
        queues the job) or its lost session proves nothing; a node that still answers at ``deadline``
        (a ``time.monotonic()`` instant) fails the step: it did not power off.
        """
        started = time.monotonic()
        while True:
            if await self.pool.probe(node, min(GONE_PROBE_S, self.probe_timeout)) is not None:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise StepFailed(f"{node} still answers on its SSH port {time.monotonic() - started:.1f} s after "
                                 "the power-off command: it did not power off")
            await asyncio.sleep(GONE_POLL_S)

    async def _unless_down(self, node: str, step: Step) -> None:
        """Fail ``step`` at once when ``node`` is marked down by another step and a re-probe finds it silent."""
        mark = self.down.get(node)
        if mark is None or mark.step == step:  # not down, or this step's own retries: the full attempts
            return
        why = await self.pool.probe(node, self.probe_timeout)
        if why is None:
            log.warning("%s answers again (was marked down: %s): trying it", node, mark.reason)
            del self.down[node]
            return
        raise StepFailed(f"{node} is down: not tried again (its {mark.step.action.value} step found it unreachable: "
                         f"{mark.reason}; re-probe: {why})")

    def _note(self, node: str, step: Step | None, err: ssh.SshError | None) -> None:
        """Mark ``node`` down after ``step`` found it unreachable; any answer clears the mark."""
        if step is None:
            return
        if err is None:
            self.down.pop(node, None)
        elif isinstance(err, ssh.SshUnreachable):
            self.down[node] = Down(step, str(err))


@contextlib.asynccontextmanager
async def connected(config: HecateConfig, width: int, *, kube_cooldown: float = kube_mod.COOLDOWN_S,
                    preconnect: bool = True) -> AsyncIterator[Remote]:
    """``width``: the most node commands at once (the plan's ``node_parallelism``)."""
    # One thread per node a stage may touch at once: each command holds its thread while it runs.
    # The nodes and the `hosts:` machines outside the cluster, reached with the same SSH settings.
    targets: list[Node | Host] = [*config.cluster.nodes, *config.hosts]
    width = max(1, min(width, len(targets)))
    pool = ssh.SshPool(config.ssh, targets, max_workers=width)
    kube = kube_mod.Kube(config.cluster.kubeconfig, config.cluster.api_timeout_s, cooldown=kube_cooldown)
    probe_timeout = min(PROBE_TIMEOUT_S, config.ssh.connect_timeout_s)
    # A failure here is harmless: a command connects on first use and reports it.
    task = asyncio.create_task(pool.connect_all(), name="ssh-preconnect") if preconnect else None
    try:
        yield Remote(pool, kube, probe_timeout=probe_timeout)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        kube.close()


def _partial(build: Partial | None, done: Any) -> StepResult | None:
    return build(done if isinstance(done, dict) else {}) if build is not None else None
