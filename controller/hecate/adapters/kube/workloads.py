"""Workloads: scale to zero and back, read availability, restart what is stuck.

Why this module exists: a shutdown scales the tiers' Deployments and StatefulSets to zero
before draining (so that a database stops cleanly rather than by eviction) and records the
replicas on each object (``hecate.io/original-replicas``); a startup scales back exactly
those, waits until the foundation workloads serve and restarts pods that crash-loop. After a
cold start a workload's status may still count the replicas that were ready before the outage:
with ``since`` :meth:`WorkloadOps.workload` checks its pods against their nodes' kubelets.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubernetes import client as kclient

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.nodes import node_signals
from hecate.adapters.kube.transport import Transport
from hecate.domain.kubeobjects import (
    ORIGINAL_REPLICAS,
    SCALABLE_KINDS,
    WORKLOAD_KINDS,
    annotations_of,
    condition,
    crash_looping,
    format_ref,
    label_selector,
    node_ready,
    object_ref,
    parse_ref,
    workload_available,
    workload_fresh,
)

# The generated client's method names: read_namespaced_<snake>, patch_namespaced_<snake>, ...
_SNAKE = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}


class WorkloadOps(Transport):
    async def _list_workloads(self, kind: str, selector: str, namespace: str | None) -> list[dict[str, Any]]:
        snake = _SNAKE[kind]
        if namespace is None:
            data = await self._call(f"list {kind}s ({selector})", kclient.AppsV1Api,
                                    f"list_{snake}_for_all_namespaces", label_selector=selector)
        else:
            data = await self._call(f"list {kind}s in {namespace} ({selector})", kclient.AppsV1Api,
                                    f"list_namespaced_{snake}", namespace, label_selector=selector)
        return list((data or {}).get("items", []))

    async def scale_down(self, selector: str, namespace: str | None = None) -> dict[str, int]:
        """Scale the Deployments and StatefulSets the label selector picks to zero.

        All namespaces when ``namespace`` is None. Only those with ``spec.replicas > 0``
        are patched (``spec.replicas: 0``); returns ``{ref: original replicas}`` of
        exactly those, for startup's restore. Best effort: one workload's refusal does not
        stop the others, and a KubeError at the end names them all; whenever this raises,
        ``err.partial`` is the same-shaped result of what was already scaled.
        """
        scaled: dict[str, int] = {}
        failed: list[str] = []
        for kind in SCALABLE_KINDS:
            try:
                items = await self._list_workloads(kind, selector, namespace)
            except KubeError as err:
                err.partial = scaled
                raise
            for obj in items:
                replicas = (obj.get("spec") or {}).get("replicas", 1)
                ref = object_ref(obj, kind)
                recorded = annotations_of(obj).get(ORIGINAL_REPLICAS)
                if replicas == 0 and recorded is not None and recorded.isdigit():
                    scaled[ref] = int(recorded)  # scaled down by us earlier: the original is on the object
                    continue
                if not isinstance(replicas, int) or replicas <= 0:
                    continue
                ns, _, name = parse_ref(ref)
                try:
                    await self._patch(f"scale {ref} to 0", kclient.AppsV1Api, f"patch_namespaced_{_SNAKE[kind]}",
                                      name, ns, body={"spec": {"replicas": 0},
                                                      "metadata": {"annotations": {ORIGINAL_REPLICAS: str(replicas)}}})
                except KubeNotFound:
                    continue
                except ApiUnavailable as err:
                    err.partial = scaled
                    raise
                except KubeError as err:
                    failed.append(str(err))
                    continue
                scaled[ref] = replicas
        if failed:
            raise KubeError("; ".join(failed), partial=scaled)
        return scaled

    async def scale(self, ref: str, replicas: int) -> None:
        """Set a Deployment's or StatefulSet's ``spec.replicas``; KubeNotFound if it is gone."""
        try:
            namespace, kind, name = parse_ref(ref, SCALABLE_KINDS)
        except ValueError as err:
            raise ValueError(f"{ref}: only Deployments and StatefulSets can be scaled ({err})") from err
        if replicas < 0:
            raise ValueError(f"{ref}: replicas must be >= 0, not {replicas}")
        await self._patch(f"scale {ref} to {replicas}", kclient.AppsV1Api, f"patch_namespaced_{_SNAKE[kind]}",
                          name, namespace, body={"spec": {"replicas": replicas},
                                                 "metadata": {"annotations": {ORIGINAL_REPLICAS: None}}})

    async def replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]:
        """``{ref: spec.replicas}`` of the Deployments and StatefulSets the label selector picks."""
        return {object_ref(obj, kind): int((obj.get("spec") or {}).get("replicas") or 0)
                for kind in SCALABLE_KINDS for obj in await self._list_workloads(kind, selector, namespace)}

    async def scaled_by_hecate(self) -> list[str]:
        """Deployments and StatefulSets (all namespaces) still carrying Hecate's ``original-replicas``."""
        refs: list[str] = []
        for kind in SCALABLE_KINDS:
            refs += [object_ref(obj, kind) for obj in await self._list_workloads(kind, "", None)
                     if ORIGINAL_REPLICAS in annotations_of(obj)]
        return sorted(refs)

    async def restore_replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]:
        """Scale back the workloads Hecate scaled to zero (their ``original-replicas`` annotation).

        One someone else has scaled since (replicas no longer 0) only loses the annotation.
        Returns ``{ref: replicas set}``.
        """
        restored: dict[str, int] = {}
        for kind in SCALABLE_KINDS:
            for obj in await self._list_workloads(kind, selector, namespace):
                recorded = annotations_of(obj).get(ORIGINAL_REPLICAS)
                if recorded is None or not recorded.isdigit():
                    continue
                ref = object_ref(obj, kind)
                replicas = (obj.get("spec") or {}).get("replicas")
                target = int(recorded) if replicas == 0 else int(replicas or 0)
                try:
                    await self.scale(ref, target)
                except KubeNotFound:
                    continue
                if replicas == 0:
                    restored[ref] = target
        return restored

    async def workload(self, ref: str, since: dt.datetime | None = None) -> dict[str, Any]:
        """``{"exists", "available", "detail"}`` of a Deployment, StatefulSet or DaemonSet.

        With ``since`` (when power returned) only a fresh status counts: of the current generation,
        with enough of its pods confirmed Ready by live kubelets
        (:func:`~hecate.domain.kubeobjects.workload_fresh`); that reads its pods, the Nodes and their
        Leases too.
        """
        try:
            namespace, kind, name = parse_ref(ref, WORKLOAD_KINDS)
        except ValueError as err:
            raise ValueError(f"{ref}: not a Deployment, StatefulSet or DaemonSet ({err})") from err
        try:
            obj = await self._call(f"get {ref}", kclient.AppsV1Api, f"read_namespaced_{_SNAKE[kind]}", name, namespace)
        except KubeNotFound:
            return {"exists": False, "available": False, "detail": "not found"}
        obj = obj or {}
        available, detail = workload_available(kind, obj)
        if since is not None and available:
            selector = label_selector((obj.get("spec") or {}).get("selector"))
            pods = [] if selector is None else (await self._call(
                f"list pods of {ref}", kclient.CoreV1Api, "list_namespaced_pod", namespace,
                label_selector=selector) or {}).get("items", [])
            available, detail = workload_fresh(kind, obj, pods, await node_signals(self, since))
        return {"exists": True, "available": available, "detail": detail}

    async def restart_unready_pods(self, ref: str) -> list[str]:
        """Delete the workload's stuck pods -- not Ready on a Ready node, with a container that
        crash-loops or failed to start (:func:`~hecate.domain.kubeobjects.crash_looping`); their
        controller re-creates them. Pods on unready nodes, not yet scheduled, or merely slow are
        left alone. Returns the pods deleted (``namespace/name``)."""
        namespace, kind, name = parse_ref(ref, WORKLOAD_KINDS)
        obj = await self._call(f"get {ref}", kclient.AppsV1Api, f"read_namespaced_{_SNAKE[kind]}", name, namespace)
        labels = (((obj or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not labels:
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = await self._call(f"list pods of {ref}", kclient.CoreV1Api, "list_namespaced_pod", namespace,
                                label_selector=selector)
        nodes = await self._call("list nodes", kclient.CoreV1Api, "list_node")
        ready_nodes = {n["metadata"]["name"] for n in (nodes or {}).get("items", []) if node_ready(n)}
        restarted: list[str] = []
        for pod in (pods or {}).get("items", []):
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in ready_nodes or condition(pod).get("status") == "True" or not crash_looping(pod):
                continue  # a pod that is only slow (a database replaying its log) is left to finish
            pod_name = pod["metadata"]["name"]
            try:
                await self._call(f"delete {format_ref(namespace, 'Pod', pod_name)}", kclient.CoreV1Api,
                                 "delete_namespaced_pod", pod_name, namespace, write=True)
            except KubeNotFound:
                continue
            restarted.append(f"{namespace}/{pod_name}")
        return restarted
