"""Rules 1 to 3: the API follows its servers, a cold start loses what is annotated, Nodes follow
their kubelets -- which can only write while the API serves -- and the node controller.

See docs/lab-kubeapi.md for the contract; :mod:`hecate_lab.kubeapi.simulator` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hecate.domain.kubeobjects import WORKLOAD_KINDS
from hecate_lab.cluster_sim.objects import (
    LOST_ON_COLD_START,
    ObjRef,
    annotations_of,
    condition_true,
    is_true,
    labels_of,
    match_selector_object,
    meta_of,
    ref_of,
    spec_of,
)
from hecate_lab.cluster_sim.timing import elapsed, held_since


@dataclass(frozen=True)
class ApiState:
    """Whether the API serves; ``quorum_since`` is when the server quorum last became true."""

    available: bool
    quorum_since: float | None = None
    message: str = ""


def has_quorum(running: int, servers: int) -> bool:
    """A majority (more than half) of the servers run k3s; no servers at all: always."""
    return servers == 0 or 2 * running > servers


def api_state(previous: ApiState | None, running: int, servers: int, now: float, delay: float) -> ApiState:
    """The API's availability from how many of the ``servers`` run k3s.

    Pure. Available when :func:`has_quorum` has held for ``delay`` seconds. ``previous``
    None is the simulator's first look: a quorum found then counts as long established
    (a lab that starts with its servers up serves at once). While unavailable,
    ``message`` says why, for the 503 answers.
    """
    if servers == 0:  # a lab without servers: nothing to wait for
        return ApiState(True, -math.inf, "")
    quorum = has_quorum(running, servers)
    if previous is None:
        since: float | None = -math.inf if quorum else None
    else:
        since = held_since(quorum, previous.quorum_since, now)
    needed = servers // 2 + 1
    if not quorum:
        return ApiState(False, None, f"lab API down: {running} of {servers} k3s servers running "
                                     f"(quorum needs {needed})")
    if elapsed(since, now, delay):
        return ApiState(True, since, "")
    assert since is not None
    return ApiState(False, since, f"lab API starting: {running} of {servers} k3s servers running, "
                                  f"serving {since + delay - now:.1f}s from now")


def cold_start_victims(objects: Iterable[Mapping[str, Any]]) -> list[ObjRef]:
    """What a cold start deletes: annotated objects, what they own (transitively), the pods they select.

    Pure. ``objects`` are every live object (each with ``kind``); the result lists refs in
    the order they should be deleted (owners first). A workload's pods are found both
    through ``ownerReferences`` (Deployment -> ReplicaSet -> Pod) and through its
    ``spec.selector`` in its namespace.
    """
    objects = [o for o in objects if isinstance(o, Mapping)]
    victims: list[ObjRef] = []
    uids: set[str] = set()
    seen: set[ObjRef] = set()

    def add(obj: Mapping[str, Any]) -> None:
        ref = ref_of(obj)
        if ref in seen:
            return
        seen.add(ref)
        victims.append(ref)
        uid = meta_of(obj).get("uid")
        if uid:
            uids.add(str(uid))

    roots = [o for o in objects if is_true(annotations_of(o).get(LOST_ON_COLD_START))]
    for obj in roots:
        add(obj)
    for root in roots:
        selector = spec_of(root).get("selector")
        if root.get("kind") in WORKLOAD_KINDS and isinstance(selector, Mapping):
            for pod in objects:
                if pod.get("kind") == "Pod" and meta_of(pod).get("namespace") == meta_of(root).get("namespace") \
                        and match_selector_object(selector, labels_of(pod)):
                    add(pod)
    grew = True
    while grew:
        grew = False
        for obj in objects:
            owners = meta_of(obj).get("ownerReferences") or []
            if ref_of(obj) not in seen and any(str(o.get("uid")) in uids for o in owners if isinstance(o, Mapping)):
                add(obj)
                grew = True
    return victims


def node_ready(running: bool, running_since: float | None, now: float, delay: float) -> bool:
    """A Node is Ready once its k3s has run for ``delay`` seconds."""
    return running and elapsed(running_since, now, delay)


def kubelet_posts(running: bool, api_available: bool) -> bool:
    """A node's kubelet writes its Node status and renews its Lease: its k3s runs and the API serves.

    While the API is down nobody writes, so every Node keeps what it last said -- after a cold start
    the API serves the statuses from before the outage.
    """
    return running and api_available


def lease_due(last_renewal: float | None, now: float, period: float) -> bool:
    """A posting kubelet renews its Lease every ``period`` seconds (at once when it has not yet)."""
    return last_renewal is None or now - last_renewal >= period


def lost_since(last_renewal: float | None, serving_since: float | None) -> float | None:
    """From when the node controller counts a silent kubelet's grace period: its last Lease renewal,
    or the moment the API came back when that is later (a node controller that restarts with the API
    has seen no heartbeat yet, so it grants every node a full grace period). None: nothing to count."""
    known = [t for t in (last_renewal, serving_since) if t is not None]
    return max(known) if known else None


def node_lost(last_renewal: float | None, serving_since: float | None, now: float, grace: float) -> bool:
    """The node controller marks a Node whose kubelet does not post NotReady once ``grace`` seconds
    have passed since :func:`lost_since`; until then the Node keeps its last (maybe stale) status."""
    return elapsed(lost_since(last_renewal, serving_since), now, grace)


def schedulable(node: Mapping[str, Any]) -> bool:
    """Ready and not cordoned (``spec.unschedulable``)."""
    return condition_true(node, "Ready") and not is_true(spec_of(node).get("unschedulable"))


def node_fits(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> bool:
    """The pod's ``nodeSelector`` matches the node's labels."""
    wanted = pod_spec.get("nodeSelector") or {}
    have = labels_of(node)
    return all(have.get(k) == v for k, v in wanted.items())
