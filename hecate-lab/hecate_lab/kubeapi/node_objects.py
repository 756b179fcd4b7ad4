"""The ``v1`` Node objects of the lab's nodes, their kubelets' Leases, and the rule for their Ready condition.

A lab node's Node is Ready while its ``state.json`` (:mod:`hecate_lab.nodestate`) says k3s
runs; the Node carries what a k3s node registers (labels, addresses, capacity, nodeInfo), and
its kubelet renews a ``coordination.k8s.io/v1`` Lease of the node's name in ``kube-node-lease``.
See docs/lab-kubeapi.md (rule 3).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from hecate.domain import timestamps
from hecate_lab.kubeapi.manifest import LabNode
from hecate_lab.kubeapi.resources import format_time, parse_time
from hecate_lab.nodestate import k3s_running, read_state

HEARTBEAT_PERIOD = dt.timedelta(seconds=10)  # how often a running "kubelet" refreshes Ready
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # what a kubelet writes in spec.leaseDurationSeconds

READY_REASON = "KubeletReady"
READY_MESSAGE = "kubelet is posting ready status"
NOT_READY_REASON = "NodeStatusUnknown"
NOT_READY_MESSAGE = "Kubelet stopped posting node status."
STARTING_REASON = "KubeletNotReady"
STARTING_MESSAGE = "container runtime status check may not have completed yet"


def node_ready_condition(
    state: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    *,
    heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD,
    ready: bool | None = None,
) -> dict[str, Any]:
    """The Node's ``Ready`` condition for a node in ``state``, given the current one.

    Pure. Ready is ``"True"`` exactly when :func:`~hecate_lab.nodestate.k3s_running`:
    the node is powered and one of its k3s services is active; otherwise ``"False"``
    with the node controller's reason (a real cluster says ``"Unknown"``; the simulator
    asks only once the grace period has passed, rule 3). ``ready=False`` holds a running node
    NotReady (its kubelet is still starting: :func:`hecate_lab.cluster_sim.node_ready`
    decides). ``lastTransitionTime`` moves only when the
    status changes. ``lastHeartbeatTime`` is what a kubelet would post: refreshed on a
    change and then every ``heartbeat_period`` while k3s runs, frozen while it does not.
    When nothing is due, the result equals ``previous``, so the caller writes the Node
    only when the result differs.
    """
    running = k3s_running(dict(state))
    is_ready = running and (ready is None or ready)
    status = "True" if is_ready else "False"
    nows = format_time(now)
    prev = dict(previous) if previous else {}
    changed = prev.get("status") != status

    last_heartbeat = parse_time(prev.get("lastHeartbeatTime"))
    heartbeat: str
    if last_heartbeat is None or (running and (changed or now - last_heartbeat >= heartbeat_period)):
        heartbeat = nows
    else:  # k3s up and a heartbeat is not yet due, or k3s down: nobody posts
        heartbeat = str(prev["lastHeartbeatTime"])

    transition = nows if changed or parse_time(prev.get("lastTransitionTime")) is None \
        else str(prev["lastTransitionTime"])
    reason, message = (READY_REASON, READY_MESSAGE) if is_ready else \
        (STARTING_REASON, STARTING_MESSAGE) if running else (NOT_READY_REASON, NOT_READY_MESSAGE)
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": transition,
    }


def lease_object(node: LabNode, renewed: dt.datetime) -> dict[str, Any]:
    """The Lease a node's kubelet renews (``spec.renewTime`` with microseconds, as ``metav1.MicroTime``)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node.name, "namespace": NODE_LEASE_NAMESPACE},
        "spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_DURATION_S,
                 "renewTime": format_micro_time(renewed)},
    }


def format_micro_time(when: dt.datetime) -> str:
    return timestamps.rfc3339(when, fraction=True)


def read_node_state(node: LabNode) -> dict[str, Any] | None:
    """The node's state.json, or None while it is absent or unreadable."""
    try:
        return read_state(node.dir)
    except (OSError, ValueError):
        return None


def node_labels(node: LabNode) -> dict[str, str]:
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "k3s",
    }
    if node.role == "server":
        labels["node-role.kubernetes.io/control-plane"] = "true"
        labels["node-role.kubernetes.io/master"] = "true"
    return labels


def node_object(
    node: LabNode, ready: Mapping[str, Any], *, k3s_version: str, index: int = 0,
) -> dict[str, Any]:
    """The v1 Node a k3s node of this role registers (without server-set metadata)."""
    pressure = [
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ]
    conditions = [
        {"type": ctype, "status": "False", "reason": reason, "message": message,
         "lastHeartbeatTime": ready["lastHeartbeatTime"], "lastTransitionTime": ready["lastTransitionTime"]}
        for ctype, reason, message in pressure
    ]
    conditions.append(dict(ready))
    addresses = [{"type": "Hostname", "address": node.name}]
    if node.address:
        addresses.insert(0, {"type": "InternalIP", "address": node.address})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": node_labels(node),
            "annotations": {"k3s.io/hostname": node.name, "hecate.io/lab-role": node.role},
        },
        "spec": {"podCIDR": f"10.42.{index}.0/24", "podCIDRs": [f"10.42.{index}.0/24"],
                 "providerID": f"k3s://{node.name}"},
        "status": {
            "conditions": conditions,
            "addresses": addresses,
            "capacity": {"cpu": "4", "memory": "8048292Ki", "pods": "110", "ephemeral-storage": "61202244Ki"},
            "allocatable": {"cpu": "4", "memory": "8048292Ki", "pods": "110",
                            "ephemeral-storage": "59536912386"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node.name}.boot.hecate.lab")),
                "containerRuntimeVersion": "containerd://1.7.23-k3s2",
                "kernelVersion": "6.1.0-28-amd64",
                "kubeProxyVersion": k3s_version,
                "kubeletVersion": k3s_version,
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, f"{node.name}.hecate.lab").hex,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node.name}.hecate.lab")),
            },
        },
    }
