"""Rule 4: workloads get their pods, pods get a node and become Ready, workloads count them.

What the Deployment, StatefulSet, DaemonSet and ReplicaSet controllers and the scheduler would
do, as pure functions: :func:`plan_pods` (create, place, delete), :func:`pod_status`,
:func:`workload_status`, :func:`available`, :func:`blockers` and the order to reconcile in
(:func:`dependency_order`). See docs/lab-kubeapi.md for the contract.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hecate_lab.cluster_sim.control_plane import node_fits, schedulable
from hecate_lab.cluster_sim.objects import (
    DEPENDS_ON,
    KIND_BY_LOWER,
    STUCK,
    ObjRef,
    annotations_of,
    condition,
    condition_true,
    is_true,
    labels_of,
    make_condition,
    meta_of,
    spec_of,
    status_of,
    terminating,
)
from hecate_lab.cluster_sim.timing import due_in, elapsed, format_time, held_since


def replicas(workload: Mapping[str, Any]) -> int:
    value = spec_of(workload).get("replicas", 1)
    return value if isinstance(value, int) and value >= 0 else 1


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """``obj`` has a controller ownerReference to ``owner`` (by uid when both have one)."""
    uid = meta_of(owner).get("uid")
    for ref in meta_of(obj).get("ownerReferences") or []:
        if not isinstance(ref, Mapping) or ref.get("kind") != owner.get("kind") \
                or ref.get("name") != meta_of(owner).get("name"):
            continue
        if uid and ref.get("uid") and ref.get("uid") != uid:
            continue
        return True
    return False


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = meta_of(owner)
    ref = {"apiVersion": owner.get("apiVersion", "apps/v1"), "kind": owner.get("kind"), "name": meta.get("name"),
           "controller": True, "blockOwnerDeletion": True}
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    return ref


def short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def replicaset_name(deployment: Mapping[str, Any]) -> tuple[str, str]:
    """The (name, pod-template-hash) of the one ReplicaSet the lab keeps per Deployment."""
    meta = meta_of(deployment)
    pod_hash = short_hash(f"{meta.get('namespace')}/{meta.get('name')}", 9)
    return f"{meta.get('name')}-{pod_hash}", pod_hash


def replicaset_for(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The ReplicaSet manifest for a Deployment (its pods' owner)."""
    meta = meta_of(deployment)
    name, pod_hash = replicaset_name(deployment)
    template = dict(spec_of(deployment).get("template") or {})
    tmeta = dict(template.get("metadata") or {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), "pod-template-hash": pod_hash}
    template["metadata"] = tmeta
    selector = dict(spec_of(deployment).get("selector") or {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), "pod-template-hash": pod_hash}
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": meta.get("namespace"),
                     "labels": {**labels_of(deployment), "pod-template-hash": pod_hash},
                     "ownerReferences": [owner_reference(deployment)]},
        "spec": {"replicas": replicas(deployment), "selector": selector, "template": template},
    }


def pod_manifest(workload: Mapping[str, Any], owner: Mapping[str, Any], *, name: str | None = None,
                 generate_name: str | None = None, node: str | None = None,
                 extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A new pod from the workload's template, owned by ``owner`` (its ReplicaSet, or itself).

    The template's ``lab.hecate.io/stuck`` annotation is not copied: a fresh pod is never stuck.
    """
    template = spec_of(owner).get("template") or spec_of(workload).get("template") or {}
    tmeta = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"namespace": meta_of(workload).get("namespace"),
                            "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})},
                            "ownerReferences": [owner_reference(owner)]}
    notes = {k: v for k, v in (tmeta.get("annotations") or {}).items() if k != STUCK}
    if notes:
        meta["annotations"] = notes
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name or f"{meta_of(owner).get('name')}-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Pending"}}


@dataclass(frozen=True)
class PodPlan:
    """What the workload controller does to a workload's pods in one step."""

    create: tuple[dict[str, Any], ...] = ()  # pod manifests (name or generateName)
    delete: tuple[str, ...] = ()  # pod names
    bind: tuple[tuple[str, str], ...] = ()  # (pending pod name, node) placed now


def _node_name(pod: Mapping[str, Any]) -> str | None:
    node = spec_of(pod).get("nodeName")
    return str(node) if node else None


def _ordinal(name: str, prefix: str) -> int | None:
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def place(count: int, candidates: Sequence[str], own: Mapping[str, int], load: Mapping[str, int]) -> list[str | None]:
    """Nodes for ``count`` new pods: round-robin spread over ``candidates``.

    Each pod goes to the candidate with the fewest pods of its workload (``own``), then
    the fewest pods at all (``load``), then the first in order. No candidate: None (the
    pod stays Pending until one is schedulable).
    """
    own_count, all_count = dict(own), dict(load)
    placed: list[str | None] = []
    for _ in range(count):
        if not candidates:
            placed.append(None)
            continue
        best = min(candidates, key=lambda n: (own_count.get(n, 0), all_count.get(n, 0), candidates.index(n)))
        own_count[best] = own_count.get(best, 0) + 1
        all_count[best] = all_count.get(best, 0) + 1
        placed.append(best)
    return placed


def plan_pods(workload: Mapping[str, Any], owner: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
              nodes: Sequence[Mapping[str, Any]], load: Mapping[str, int] | None = None) -> PodPlan:
    """Create, delete and place the pods of one workload.

    Pure. ``owner`` is the Deployment's ReplicaSet, else the workload itself; ``pods``
    the live pods it owns; ``nodes`` every Node, in order; ``load`` the pods per node.
    Deployments and StatefulSets get ``spec.replicas`` pods (StatefulSet pods are
    ``<name>-0..n-1``, Deployment pods ``<replicaset>-<5 random chars>``) on schedulable
    nodes whose labels match the template's ``nodeSelector`` (:func:`place`); surplus
    pods are deleted (unplaced ones first, then not Ready, then the newest; for a
    StatefulSet the highest ordinals). A DaemonSet gets one pod on every Node (cordoned
    or NotReady ones too, as DaemonSet pods tolerate both) and loses pods on nodes that
    are gone or doubled. Pending pods without a node are placed when a node fits.
    """
    load = dict(load or {})
    live = [p for p in pods if not terminating(p)]
    kind = workload.get("kind")
    name = str(meta_of(workload).get("name"))
    template_spec = (spec_of(owner).get("template") or spec_of(workload).get("template") or {}).get("spec") or {}
    candidates = [str(meta_of(n).get("name")) for n in nodes if schedulable(n) and node_fits(n, template_spec)]
    create: list[dict[str, Any]] = []
    delete: list[str] = []
    bind: list[tuple[str, str]] = []

    if kind == "DaemonSet":
        node_names = [str(meta_of(n).get("name")) for n in nodes if node_fits(n, template_spec)]
        by_node: dict[str, list[Mapping[str, Any]]] = {}
        for pod in sorted(live, key=lambda p: (meta_of(p).get("creationTimestamp") or "", meta_of(p).get("name"))):
            node = _node_name(pod)
            if node not in node_names:
                delete.append(str(meta_of(pod).get("name")))
            else:
                assert node is not None
                by_node.setdefault(node, []).append(pod)
        for node in node_names:
            mine = by_node.get(node, [])
            delete += [str(meta_of(p).get("name")) for p in mine[1:]]
            if not mine:
                create.append(pod_manifest(workload, owner, generate_name=f"{name}-", node=node,
                                           extra_labels={"controller-revision-hash": short_hash(name, 9)}))
        return PodPlan(tuple(create), tuple(delete), ())

    desired = replicas(workload)
    keep: list[Mapping[str, Any]]
    if kind == "StatefulSet":
        wanted = [f"{name}-{i}" for i in range(desired)]
        keep = [p for p in live if meta_of(p).get("name") in wanted]
        delete = sorted((str(meta_of(p).get("name")) for p in live if meta_of(p).get("name") not in wanted),
                        key=lambda n: (-(_ordinal(n, f"{name}-") or 0), n))
        present = {meta_of(p).get("name") for p in keep}
        new_names: list[str | None] = [n for n in wanted if n not in present]
    else:
        # Surplus pods go unplaced first, then not Ready, then the newest.
        newest_first = sorted(live, key=lambda p: (str(meta_of(p).get("creationTimestamp") or ""),
                                                   str(meta_of(p).get("name"))), reverse=True)
        doomed = sorted(newest_first, key=lambda p: (_node_name(p) is not None, condition_true(p)))
        delete = [str(meta_of(p).get("name")) for p in doomed[: max(0, len(live) - desired)]]
        keep = [p for p in live if str(meta_of(p).get("name")) not in delete]
        new_names = [None] * max(0, desired - len(keep))

    own: dict[str, int] = {}
    for pod in keep:
        node = _node_name(pod)
        if node:
            own[node] = own.get(node, 0) + 1
    for pod_name in delete:
        gone = next((p for p in live if meta_of(p).get("name") == pod_name), None)
        node = _node_name(gone) if gone else None
        if node and load.get(node):
            load[node] -= 1
    unplaced = [p for p in keep if _node_name(p) is None]
    slots = place(len(unplaced) + len(new_names), candidates, own, load)
    for pod, target in zip(unplaced, slots[: len(unplaced)], strict=True):
        if target is not None:
            bind.append((str(meta_of(pod).get("name")), target))
    for new_name, target in zip(new_names, slots[len(unplaced):], strict=True):
        if kind == "StatefulSet":
            create.append(pod_manifest(workload, owner, name=new_name, node=target,
                                       extra_labels={"statefulset.kubernetes.io/pod-name": str(new_name)}))
        else:
            create.append(pod_manifest(workload, owner, generate_name=f"{meta_of(owner).get('name')}-",
                                       node=target))
    return PodPlan(tuple(create), tuple(delete), tuple(bind))


def dependencies(workload: Mapping[str, Any]) -> list[ObjRef]:
    """The workloads named by ``lab.hecate.io/depends-on``; ValueError on a malformed entry."""
    text = annotations_of(workload).get(DEPENDS_ON) or ""
    deps: list[ObjRef] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        parts = item.split("/")
        if len(parts) != 3 or not all(parts) or parts[1].lower() not in KIND_BY_LOWER:
            raise ValueError(f"{DEPENDS_ON}: {item!r} is not namespace/kind/name "
                             f"(kind one of {', '.join(sorted(KIND_BY_LOWER))})")
        deps.append((KIND_BY_LOWER[parts[1].lower()], parts[0], parts[2]))
    return deps


def available(workload: Mapping[str, Any] | None) -> bool:
    """A workload exists and has enough Ready pods by its status.

    Deployments and StatefulSets: ``status.readyReplicas >= spec.replicas``; DaemonSets:
    ``status.numberReady >= status.desiredNumberScheduled``.
    """
    if workload is None:
        return False
    status = status_of(workload)
    if workload.get("kind") == "DaemonSet":
        return int(status.get("numberReady") or 0) >= int(status.get("desiredNumberScheduled") or 0)
    return int(status.get("readyReplicas") or 0) >= replicas(workload)


def blockers(workload: Mapping[str, Any], workloads: Mapping[ObjRef, Mapping[str, Any]]) -> list[str]:
    """The dependencies (``ns/kind/name``) of ``workload`` that are not :func:`available`."""
    try:
        deps = dependencies(workload)
    except ValueError as e:
        return [str(e)]
    return [f"{ns}/{kind.lower()}/{name}" for kind, ns, name in deps if not available(workloads.get((kind, ns, name)))]


@dataclass(frozen=True)
class PodVerdict:
    """A pod's computed status and since when its inputs have held (for the next step)."""

    status: dict[str, Any]
    since: float | None
    ready: bool
    due: float | None = None  # seconds until it turns Ready, if waiting for the delay


def pod_status(pod: Mapping[str, Any], *, node_ready: bool, waiting_for: Sequence[str], since: float | None,
               now: float, delay: float) -> PodVerdict:
    """A pod's status: Ready when its node is Ready, it is not stuck, its workload's
    dependencies are available (``waiting_for`` is empty), and all that has held for ``delay``.

    Pure. ``since`` is when those inputs were last seen becoming true (None: not yet).
    The phase is ``Pending`` until the pod first becomes Ready (or while it has no node),
    ``Running`` from then on (a pod on a NotReady node stays Running, not Ready). Only
    conditions that change get a new ``lastTransitionTime``. A Ready pod's containers are
    ``running`` since their inputs came true (``startedAt``, kept while they stay Ready).
    """
    previous = status_of(pod)
    node = _node_name(pod)
    stuck = is_true(annotations_of(pod).get(STUCK))
    inputs = node is not None and node_ready and not stuck and not waiting_for
    since = held_since(inputs, since, now)
    ready = elapsed(since, now, delay)
    if node is None:
        reason, message = "Unschedulable", "no schedulable node (Ready, not cordoned, matching nodeSelector)"
    elif not node_ready:
        reason, message = "NodeNotReady", f"node {node} is not ready"
    elif stuck:
        reason, message = "ContainersNotReady", f"containers with unready status (annotated {STUCK})"
    elif waiting_for:
        reason, message = "ContainersNotReady", "waiting for " + ", ".join(waiting_for)
    elif not ready:
        reason, message = "ContainersNotReady", "containers starting"
    else:
        reason, message = "", ""

    def cond(ctype: str, ok: bool, why: str = "", text: str = "") -> dict[str, Any]:
        return make_condition(ctype, ok, why, text, condition(pod, ctype), now)

    conditions = [cond("PodScheduled", node is not None, "" if node else "Unschedulable",
                       "" if node else message),
                  cond("ContainersReady", ready, reason, message),
                  cond("Ready", ready, reason, message)]
    for c in conditions:  # the API omits empty reasons and messages
        if not c["reason"]:
            del c["reason"], c["message"]
    phase = "Running" if node is not None and (ready or previous.get("phase") == "Running") else "Pending"
    status: dict[str, Any] = {**previous, "phase": phase, "conditions": conditions}
    # What a kubelet reports per container: a stuck pod crash-loops (the evidence Hecate's recovery looks for).
    containers = [(c.get("name", "main"), str(c.get("image", ""))) for c in (spec_of(pod).get("containers") or [{}])]
    if stuck and node is not None:
        state: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff",
                                             "message": "back-off 5m0s restarting failed container"}}
    elif ready:
        # The container started when its inputs came true (a restarted kubelet restarts it: a new time).
        was = next((c for c in previous.get("containerStatuses") or [] if isinstance(c, Mapping)), {})
        started = ((was.get("state") or {}).get("running") or {}).get("startedAt") if was.get("ready") else None
        state = {"running": {"startedAt": started or format_time(since if since is not None else now)}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status["containerStatuses"] = [
        {"name": name, "image": image, "ready": ready, "restartCount": 5 if stuck and node else 0, "state": state,
         "imageID": f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}" if "waiting" not in state
                    or stuck else ""}
        for name, image in containers]
    if node is not None and not previous.get("startTime"):
        status["startTime"] = format_time(now)
    return PodVerdict(status, since, ready, due_in(since, now, delay))


def workload_status(workload: Mapping[str, Any], pods: int, ready: int, now: float,
                    desired: int | None = None) -> dict[str, Any]:
    """The status a Deployment/StatefulSet/DaemonSet/ReplicaSet controller would write.

    ``pods`` live pods, ``ready`` of them Ready; ``desired`` is the DaemonSet's node count.
    Carries ``observedGeneration`` = ``metadata.generation`` and a condition ``Available``.
    """
    kind = workload.get("kind")
    previous = status_of(workload)
    generation = meta_of(workload).get("generation", 1)
    status: dict[str, Any]
    if kind == "DaemonSet":
        want = pods if desired is None else desired
        status = {"observedGeneration": generation, "desiredNumberScheduled": want, "currentNumberScheduled": pods,
                  "updatedNumberScheduled": pods, "numberMisscheduled": 0, "numberReady": ready,
                  "numberAvailable": ready, "numberUnavailable": max(0, want - ready)}
        ok = ready >= want
    else:
        status = {"observedGeneration": generation, "replicas": pods, "updatedReplicas": pods,
                  "readyReplicas": ready, "availableReplicas": ready}
        if kind == "StatefulSet":
            status["currentReplicas"] = pods
        if kind == "ReplicaSet":
            status["fullyLabeledReplicas"] = pods
        elif kind == "Deployment":
            status["unavailableReplicas"] = max(0, replicas(workload) - ready)
        ok = ready >= replicas(workload)
    if kind != "ReplicaSet":
        noun = str(kind)
        cond = make_condition(
            "Available", ok, "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
            f"{noun} has minimum availability." if ok else f"{noun} does not have minimum availability.",
            condition(workload, "Available"), now, update_time=kind == "Deployment")
        others = [c for c in previous.get("conditions") or []
                  if isinstance(c, Mapping) and c.get("type") != "Available"]
        status["conditions"] = [*others, cond]
    return status


@dataclass
class _Topo:
    order: list[ObjRef] = field(default_factory=list)
    state: dict[ObjRef, int] = field(default_factory=dict)


def dependency_order(workloads: Mapping[ObjRef, Mapping[str, Any]]) -> list[ObjRef]:
    """Workload refs with every dependency before its dependents (cycles broken arbitrarily)."""
    topo = _Topo()

    def visit(ref: ObjRef) -> None:
        if topo.state.get(ref):
            return
        topo.state[ref] = 1
        try:
            deps = dependencies(workloads[ref])
        except ValueError:
            deps = []
        for dep in deps:
            if dep in workloads:
                visit(dep)
        topo.order.append(ref)

    for ref in sorted(workloads, key=lambda r: (r[1] or "", r[2], r[0])):
        visit(ref)
    return topo.order
