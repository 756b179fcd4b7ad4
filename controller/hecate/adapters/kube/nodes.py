"""Nodes: readiness, cordon and uncordon, drain through the Eviction API, volume attachments.

Why this module exists: before a node is stopped its pods must leave it the way Kubernetes
allows -- evictions, which honour PodDisruptionBudgets -- but a drain must never block a
shutdown for longer than its timeout. Hecate marks the nodes it cordons
(``hecate.io/cordoned-by``), so that a startup uncordons those and no other. After a cold
start a Node's ``Ready`` may be the status from before the outage: a startup reads it with the
node's Lease (:func:`node_signals`) and believes only what a kubelet wrote since the run began.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from kubernetes import client as kclient

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.transport import Transport
from hecate.domain import kubeobjects
from hecate.domain.kubeobjects import (
    CORDONED_BY,
    NODE_LEASE_NAMESPACE,
    OWNER,
    NodeSignal,
    annotations_of,
    drain_skip_reason,
    format_ref,
    marked_by_hecate,
    node_ready,
    pod_ref,
)

log = logging.getLogger(__name__)

EVICTION_CONCURRENCY = 8


def _node(name: str) -> str:
    return format_ref(None, "Node", name)


async def list_nodes(transport: Transport) -> list[dict[str, Any]]:
    data = await transport._call("list nodes", kclient.CoreV1Api, "list_node")
    return list((data or {}).get("items", []))


async def node_leases(transport: Transport) -> list[dict[str, Any]]:
    """The kubelets' Leases in ``kube-node-lease``; none when the API has none or Hecate may not read
    them (a warning: readiness then rests on the Ready heartbeat alone, which a kubelet posts when it
    starts and every few minutes)."""
    try:
        data = await transport._call(f"list Leases in {NODE_LEASE_NAMESPACE}", kclient.CoordinationV1Api,
                                     "list_namespaced_lease", NODE_LEASE_NAMESPACE)
    except KubeNotFound:
        return []
    except ApiUnavailable:
        raise
    except KubeError as err:
        if "leases" not in transport._warned:
            transport._warned.add("leases")
            log.warning("cannot read the node Leases (%s): node readiness rests on heartbeats alone; "
                        "grant list on leases in %s (manifests/rbac.yaml)", err, NODE_LEASE_NAMESPACE)
        return []
    return list((data or {}).get("items", []))


async def node_signals(transport: Transport, since: dt.datetime) -> dict[str, NodeSignal]:
    """Every Node's :class:`~hecate.domain.kubeobjects.NodeSignal` against ``since`` (Leases and Nodes read now).

    The Leases are read first: a kubelet that starts between the two reads must not pair its fresh
    Lease with the Ready status from before the outage that the Node still showed a moment earlier
    (a kubelet posts its status when it starts; read after the Lease, the Node has it).
    """
    leases = await node_leases(transport)
    nodes = await list_nodes(transport)
    return kubeobjects.node_signals(nodes, leases, since, dt.datetime.now(dt.UTC))


class NodeOps(Transport):
    async def _nodes(self) -> list[dict[str, Any]]:
        return await list_nodes(self)

    async def nodes_ready(self, since: dt.datetime | None = None) -> dict[str, bool]:
        """Every Node and whether its ``Ready`` condition is ``"True"``; with ``since``, only if its
        kubelet wrote since (:meth:`node_signals`)."""
        if since is not None:
            return {name: signal.up for name, signal in (await self.node_signals(since)).items()}
        return {node["metadata"]["name"]: node_ready(node) for node in await self._nodes()}

    async def node_signals(self, since: dt.datetime) -> dict[str, NodeSignal]:
        """Every Node's readiness as a startup believes it: Ready, and a Lease renewal or Ready heartbeat
        not older than ``since`` (:func:`hecate.domain.kubeobjects.node_signal`)."""
        return await node_signals(self, since)

    async def unschedulable_nodes(self) -> list[str]:
        """Every cordoned node, whoever cordoned it."""
        return [n["metadata"]["name"] for n in await self._nodes()
                if (n.get("spec") or {}).get("unschedulable") is True]

    async def cordoned_by_hecate(self) -> list[str]:
        """Nodes that are unschedulable because Hecate cordoned them."""
        return [n["metadata"]["name"] for n in await self._nodes()
                if (n.get("spec") or {}).get("unschedulable") is True and marked_by_hecate(n, CORDONED_BY)]

    async def volume_attachments(self) -> list[str]:
        """Names of the storage.k8s.io/v1 VolumeAttachments (empty when there are none)."""
        data = await self._call("list VolumeAttachments", kclient.StorageV1Api, "list_volume_attachment")
        return [item["metadata"]["name"] for item in (data or {}).get("items", [])]

    async def cordon(self, node: str) -> bool:
        """Mark the node unschedulable; True if Hecate changed it, False if already cordoned."""
        data = await self._call(f"get {_node(node)}", kclient.CoreV1Api, "read_node", node)
        if (data or {}).get("spec", {}).get("unschedulable") is True:
            return marked_by_hecate(data, CORDONED_BY)  # ours from an earlier run, or someone else's
        await self._patch(f"cordon {_node(node)}", kclient.CoreV1Api, "patch_node", node,
                          body={"spec": {"unschedulable": True}, "metadata": {"annotations": {CORDONED_BY: OWNER}}})
        return True

    async def uncordon(self, node: str) -> None:
        """Make the node schedulable again (removes ``spec.unschedulable``, as kubectl does)."""
        await self._patch(f"uncordon {_node(node)}", kclient.CoreV1Api, "patch_node", node,
                          body={"spec": {"unschedulable": None}, "metadata": {"annotations": {CORDONED_BY: None}}})

    async def clear_stale_cordon_marks(self) -> list[str]:
        """Drop ``cordoned-by`` from nodes someone uncordoned by hand; returns their refs (``/node/NAME``)."""
        cleared: list[str] = []
        for node in await self._nodes():
            name = node["metadata"]["name"]
            if annotations_of(node).get(CORDONED_BY) and (node.get("spec") or {}).get("unschedulable") is not True:
                await self._patch(f"clear mark on {_node(name)}", kclient.CoreV1Api, "patch_node", name,
                                  body={"metadata": {"annotations": {CORDONED_BY: None}}})
                cleared.append(_node(name))
        return cleared

    async def _node_pods(self, node: str) -> list[dict[str, Any]]:
        data = await self._call(f"list pods on {_node(node)}", kclient.CoreV1Api, "list_pod_for_all_namespaces",
                                field_selector=f"spec.nodeName={node}")
        return list((data or {}).get("items", []))

    async def _evict(self, namespace: str, name: str) -> tuple[str, str]:
        """One eviction: ("evicted" | "gone" | "blocked" | "failed", detail)."""
        body = kclient.V1Eviction(api_version="policy/v1", kind="Eviction",
                                  metadata=kclient.V1ObjectMeta(name=name, namespace=namespace))
        try:
            await self._call(f"evict {format_ref(namespace, 'Pod', name)}", kclient.CoreV1Api,
                             "create_namespaced_pod_eviction", name, namespace, body, write=True,
                             server_error_is_unavailable=False)
        except KubeNotFound:
            return "gone", ""
        except ApiUnavailable:
            raise
        except KubeError as err:
            return ("blocked" if err.status == 429 else "failed"), str(err)
        return "evicted", ""

    async def drain(self, node: str, timeout_s: float) -> dict[str, Any]:
        """Evict every pod on ``node`` but DaemonSet and mirror pods, within ``timeout_s``.

        Does not cordon (call :meth:`cordon` first). Evictions go through the Eviction API
        (policy/v1), so PodDisruptionBudgets are honoured: a refusal (429) is retried every
        ``retry_interval`` until ``timeout_s``, then given up -- a drain never blocks a
        shutdown for longer than its timeout. A pod counts as evicted once the API has
        accepted its eviction (or when it is already gone); other refusals are not retried
        and land in ``failed``. With time left, the drain then waits for evicted pods to
        leave the node (``terminating`` lists those still there at the deadline).
        Returns ``{"node", "evicted", "blocked", "skipped", "failed", "terminating",
        "timed_out"}`` (pods as ``namespace/name``; ``skipped`` with the reason,
        ``failed`` with the API's answer); ``timed_out`` is true when the deadline passed
        with pods still blocked or terminating. Whenever this raises, ``err.partial`` is
        the same-shaped result of what was done.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(timeout_s))
        result: dict[str, Any] = {"node": node, "evicted": [], "blocked": [], "skipped": {}, "failed": {},
                                  "terminating": [], "timed_out": False}
        try:
            pods = await self._node_pods(node)
        except KubeError as err:
            err.partial = result
            raise
        pending: list[str] = []
        for pod in pods:
            reason = drain_skip_reason(pod)
            if reason:
                result["skipped"][pod_ref(pod)] = reason
            else:
                pending.append(pod_ref(pod))
        limit = asyncio.Semaphore(EVICTION_CONCURRENCY)

        async def evict(ref: str) -> tuple[str, str]:
            namespace, name = ref.split("/", 1)
            async with limit:
                return await self._evict(namespace, name)

        while pending:
            outcomes = await asyncio.gather(*(evict(ref) for ref in pending), return_exceptions=True)
            still: list[str] = []
            error: BaseException | None = None
            for ref, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    error = error or outcome
                    still.append(ref)
                    continue
                state, detail = outcome
                if state in ("evicted", "gone"):
                    result["evicted"].append(ref)
                elif state == "blocked":
                    still.append(ref)
                else:
                    result["failed"][ref] = detail
            pending = still
            if error is not None:  # the API went away mid-drain: report what was done
                result["blocked"] = pending
                if isinstance(error, KubeError):
                    error.partial = result
                raise error
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.sleep(min(self.retry_interval, remaining))
        result["blocked"] = pending
        if result["blocked"]:
            log.warning("drain %s: gave up after %.0fs on %s (PodDisruptionBudget)", node, timeout_s,
                        ", ".join(pending))

        evicted = set(result["evicted"])
        while evicted:
            try:
                present = {pod_ref(p) for p in await self._node_pods(node)} & evicted
            except KubeError as err:
                err.partial = result
                raise
            result["terminating"] = sorted(present)
            remaining = deadline - loop.time()
            if not present or remaining <= 0:
                break
            await asyncio.sleep(min(self.retry_interval, remaining))
        result["timed_out"] = bool(result["blocked"] or result["terminating"])
        return result
