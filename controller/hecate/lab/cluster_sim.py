"""The lab cluster's rules: what a k3s + Flux cluster would do, as pure functions.

:mod:`hecate.lab.kubeapi` applies these rules in a loop to the objects in its emulated
API (it reads the objects, calls these functions, and writes only what changed); this
module does no I/O and keeps no state, so every rule is unit tested on its own. Time is
a float (seconds since the epoch); a rule that waits ("Ready only ``delay`` seconds after
its inputs became true") takes the moment its inputs became true (``since``, tracked by
the caller with :func:`held_since`) and the current time.

The rules, in the order the simulator applies them (the contract is in
:mod:`hecate.lab.kubeapi`'s docstring):

- **API availability** (:func:`api_state`): with server nodes, the API serves only while
  a majority of them run k3s, and only ``delays.api`` seconds after that became true.
- **Cold start** (:func:`cold_start_victims`): what an outage loses -- objects annotated
  ``lab.hecate.io/lost-on-cold-start: "true"`` and what they own or select.
- **Nodes** (:func:`node_ready`): Ready ``delays.node`` seconds after k3s started.
- **Workloads** (:func:`plan_pods`, :func:`pod_status`, :func:`workload_status`,
  :func:`available`, :func:`blockers`): pods created, placed, deleted, Ready; the
  workload's status counts them.
- **Flux** (:func:`gitrepository_status`, :func:`flux_status`, :func:`renders_to_create`):
  a GitRepository is Ready when the workload serving it is available and it has the
  branch; Kustomizations and HelmReleases follow their source, unless suspended; a
  reconciling object re-creates what it renders.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hecate.domain.kubeobjects import WORKLOAD_KINDS, format_ref

# -- annotations the rules read ---------------------------------------------------------------

LOST_ON_COLD_START = "lab.hecate.io/lost-on-cold-start"
"""``"true"``: the object (and what it owns or selects) is deleted when the API comes back."""
STUCK = "lab.hecate.io/stuck"
"""``"true"`` on a pod: it never becomes Ready (a crash-looping container); delete it to fix."""
DEPENDS_ON = "lab.hecate.io/depends-on"
"""On a workload: ``"ns/kind/name,..."`` (kind lower-case) that must be available for its pods to be Ready."""
SERVED_BY = "lab.hecate.io/served-by"
"""On a GitRepository: ``"ns/kind/name"`` of the workload serving the Git repository (e.g. Gitea)."""
BRANCHES = "lab.hecate.io/branches"
"""On a GitRepository: the comma-separated branches the repository has."""
RENDERS = "lab.hecate.io/renders"
"""On a Kustomization or HelmRelease: a JSON list of the manifests it applies."""
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""Flux's "reconcile now" annotation; a handled request is echoed in ``status.lastHandledReconcileAt``."""

_KIND_BY_LOWER = {k.lower(): k for k in WORKLOAD_KINDS}

ObjRef = tuple[str, str | None, str]
"""(kind, namespace, name) -- how the rules name an object."""


# -- delays -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delays:
    """How long the lab's cluster takes to come up, in seconds.

    ``api``: from a quorum of servers running k3s to the API serving; ``node``: from a
    node's k3s starting to its Node being Ready; ``pod``: from a pod's inputs (node
    Ready, not stuck, dependencies available) becoming true to the pod being Ready.
    """

    api: float = 1.0
    node: float = 0.5
    pod: float = 0.5

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Delays:
        """From the manifest's ``"delays"`` object (missing keys keep their default)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f'"delays" must be an object, not {data!r}')
        unknown = sorted(set(data) - {"api", "node", "pod"})
        if unknown:
            raise ValueError(f'unknown delays: {", ".join(unknown)} (known: api, node, pod)')
        values: dict[str, float] = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f'delays.{key} must be a number of seconds >= 0, not {value!r}')
            values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {"api": self.api, "node": self.node, "pod": self.pod}


# -- small helpers ----------------------------------------------------------------------------


def held_since(condition: bool, since: float | None, now: float) -> float | None:
    """Since when ``condition`` has held: ``since`` if it held already, ``now`` if it just became true."""
    if not condition:
        return None
    return now if since is None else since


def elapsed(since: float | None, now: float, delay: float) -> bool:
    """Whether something true since ``since`` has been true for ``delay`` seconds."""
    return since is not None and now - since >= delay


def due_in(since: float | None, now: float, delay: float) -> float | None:
    """Seconds until :func:`elapsed` turns true; None when nothing is pending."""
    if since is None or now - since >= delay:
        return None
    return since + delay - now


def format_time(now: float) -> str:
    """RFC 3339 with whole seconds, as the Kubernetes API writes timestamps."""
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = _meta(obj).get("annotations")
    return value if isinstance(value, Mapping) else {}


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = _meta(obj).get("labels")
    return value if isinstance(value, Mapping) else {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("spec")
    return value if isinstance(value, Mapping) else {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("status")
    return value if isinstance(value, Mapping) else {}


def ref_of(obj: Mapping[str, Any]) -> ObjRef:
    meta = _meta(obj)
    return str(obj.get("kind")), meta.get("namespace"), str(meta.get("name"))


def ref_text(ref: ObjRef) -> str:
    """``namespace/kind/name`` (``/kind/name`` for cluster objects), as Hecate's refs read."""
    kind, namespace, name = ref
    return format_ref(namespace, kind, name)


def is_true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in _status(obj).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return None


def condition_true(obj: Mapping[str, Any], ctype: str = "Ready") -> bool:
    cond = condition(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def make_condition(ctype: str, ok: bool, reason: str, message: str, previous: Mapping[str, Any] | None,
                   now: float, *, update_time: bool = False) -> dict[str, Any]:
    """A status condition whose ``lastTransitionTime`` moves only when its status changes."""
    status = "True" if ok else "False"
    prev = previous or {}
    transition = prev.get("lastTransitionTime") if prev.get("status") == status else None
    cond: dict[str, Any] = {"type": ctype, "status": status, "reason": reason, "message": message}
    if update_time:  # Deployments also carry lastUpdateTime: moved on any change of the condition
        unchanged = (prev.get("status"), prev.get("reason"), prev.get("message")) == (status, reason, message)
        cond["lastUpdateTime"] = prev.get("lastUpdateTime") if unchanged and prev.get("lastUpdateTime") \
            else format_time(now)
    cond["lastTransitionTime"] = transition or format_time(now)
    return cond


def match_selector_object(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether labels satisfy a ``LabelSelector`` object (``matchLabels`` + ``matchExpressions``).

    A missing (null) selector selects nothing, an empty one (``{}``) everything, as for a
    policy/v1 PodDisruptionBudget. Unknown operators select nothing.
    """
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


# -- rule 1: API availability follows the servers ----------------------------------------------


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


# -- rule 2: a cold start loses what is annotated so ---------------------------------------------


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
        uid = _meta(obj).get("uid")
        if uid:
            uids.add(str(uid))

    roots = [o for o in objects if is_true(annotations_of(o).get(LOST_ON_COLD_START))]
    for obj in roots:
        add(obj)
    for root in roots:
        selector = _spec(root).get("selector")
        if root.get("kind") in WORKLOAD_KINDS and isinstance(selector, Mapping):
            for pod in objects:
                if pod.get("kind") == "Pod" and _meta(pod).get("namespace") == _meta(root).get("namespace") \
                        and match_selector_object(selector, labels_of(pod)):
                    add(pod)
    grew = True
    while grew:
        grew = False
        for obj in objects:
            owners = _meta(obj).get("ownerReferences") or []
            if ref_of(obj) not in seen and any(str(o.get("uid")) in uids for o in owners if isinstance(o, Mapping)):
                add(obj)
                grew = True
    return victims


# -- rule 3: nodes ----------------------------------------------------------------------------------


def node_ready(running: bool, running_since: float | None, now: float, delay: float) -> bool:
    """A Node is Ready once its k3s has run for ``delay`` seconds."""
    return running and elapsed(running_since, now, delay)


def schedulable(node: Mapping[str, Any]) -> bool:
    """Ready and not cordoned (``spec.unschedulable``)."""
    return condition_true(node, "Ready") and not is_true(_spec(node).get("unschedulable"))


def node_fits(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> bool:
    """The pod's ``nodeSelector`` matches the node's labels."""
    wanted = pod_spec.get("nodeSelector") or {}
    have = labels_of(node)
    return all(have.get(k) == v for k, v in wanted.items())


# -- rule 4: workloads ------------------------------------------------------------------------------


def replicas(workload: Mapping[str, Any]) -> int:
    value = _spec(workload).get("replicas", 1)
    return value if isinstance(value, int) and value >= 0 else 1


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """``obj`` has a controller ownerReference to ``owner`` (by uid when both have one)."""
    uid = _meta(owner).get("uid")
    for ref in _meta(obj).get("ownerReferences") or []:
        if not isinstance(ref, Mapping) or ref.get("kind") != owner.get("kind") \
                or ref.get("name") != _meta(owner).get("name"):
            continue
        if uid and ref.get("uid") and ref.get("uid") != uid:
            continue
        return True
    return False


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(owner)
    ref = {"apiVersion": owner.get("apiVersion", "apps/v1"), "kind": owner.get("kind"), "name": meta.get("name"),
           "controller": True, "blockOwnerDeletion": True}
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    return ref


def short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def replicaset_name(deployment: Mapping[str, Any]) -> tuple[str, str]:
    """The (name, pod-template-hash) of the one ReplicaSet the lab keeps per Deployment."""
    meta = _meta(deployment)
    pod_hash = short_hash(f"{meta.get('namespace')}/{meta.get('name')}", 9)
    return f"{meta.get('name')}-{pod_hash}", pod_hash


def replicaset_for(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The ReplicaSet manifest for a Deployment (its pods' owner)."""
    meta = _meta(deployment)
    name, pod_hash = replicaset_name(deployment)
    template = dict(_spec(deployment).get("template") or {})
    tmeta = dict(template.get("metadata") or {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), "pod-template-hash": pod_hash}
    template["metadata"] = tmeta
    selector = dict(_spec(deployment).get("selector") or {})
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
    template = _spec(owner).get("template") or _spec(workload).get("template") or {}
    tmeta = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"namespace": _meta(workload).get("namespace"),
                            "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})},
                            "ownerReferences": [owner_reference(owner)]}
    notes = {k: v for k, v in (tmeta.get("annotations") or {}).items() if k != STUCK}
    if notes:
        meta["annotations"] = notes
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name or f"{_meta(owner).get('name')}-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Pending"}}


@dataclass(frozen=True)
class PodPlan:
    """What the workload controller does to a workload's pods in one step."""

    create: tuple[dict[str, Any], ...] = ()  # pod manifests (name or generateName)
    delete: tuple[str, ...] = ()  # pod names
    bind: tuple[tuple[str, str], ...] = ()  # (pending pod name, node) placed now


def _node_name(pod: Mapping[str, Any]) -> str | None:
    node = _spec(pod).get("nodeName")
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
    name = str(_meta(workload).get("name"))
    template_spec = (_spec(owner).get("template") or _spec(workload).get("template") or {}).get("spec") or {}
    candidates = [str(_meta(n).get("name")) for n in nodes if schedulable(n) and node_fits(n, template_spec)]
    create: list[dict[str, Any]] = []
    delete: list[str] = []
    bind: list[tuple[str, str]] = []

    if kind == "DaemonSet":
        node_names = [str(_meta(n).get("name")) for n in nodes if node_fits(n, template_spec)]
        by_node: dict[str, list[Mapping[str, Any]]] = {}
        for pod in sorted(live, key=lambda p: (_meta(p).get("creationTimestamp") or "", _meta(p).get("name"))):
            node = _node_name(pod)
            if node not in node_names:
                delete.append(str(_meta(pod).get("name")))
            else:
                assert node is not None
                by_node.setdefault(node, []).append(pod)
        for node in node_names:
            mine = by_node.get(node, [])
            delete += [str(_meta(p).get("name")) for p in mine[1:]]
            if not mine:
                create.append(pod_manifest(workload, owner, generate_name=f"{name}-", node=node,
                                           extra_labels={"controller-revision-hash": short_hash(name, 9)}))
        return PodPlan(tuple(create), tuple(delete), ())

    desired = replicas(workload)
    keep: list[Mapping[str, Any]]
    if kind == "StatefulSet":
        wanted = [f"{name}-{i}" for i in range(desired)]
        keep = [p for p in live if _meta(p).get("name") in wanted]
        delete = sorted((str(_meta(p).get("name")) for p in live if _meta(p).get("name") not in wanted),
                        key=lambda n: (-(_ordinal(n, f"{name}-") or 0), n))
        present = {_meta(p).get("name") for p in keep}
        new_names: list[str | None] = [n for n in wanted if n not in present]
    else:
        # Surplus pods go unplaced first, then not Ready, then the newest.
        newest_first = sorted(live, key=lambda p: (str(_meta(p).get("creationTimestamp") or ""),
                                                   str(_meta(p).get("name"))), reverse=True)
        doomed = sorted(newest_first, key=lambda p: (_node_name(p) is not None, condition_true(p)))
        delete = [str(_meta(p).get("name")) for p in doomed[: max(0, len(live) - desired)]]
        keep = [p for p in live if str(_meta(p).get("name")) not in delete]
        new_names = [None] * max(0, desired - len(keep))

    own: dict[str, int] = {}
    for pod in keep:
        node = _node_name(pod)
        if node:
            own[node] = own.get(node, 0) + 1
    for pod_name in delete:
        gone = next((p for p in live if _meta(p).get("name") == pod_name), None)
        node = _node_name(gone) if gone else None
        if node and load.get(node):
            load[node] -= 1
    unplaced = [p for p in keep if _node_name(p) is None]
    slots = place(len(unplaced) + len(new_names), candidates, own, load)
    for pod, target in zip(unplaced, slots[: len(unplaced)], strict=True):
        if target is not None:
            bind.append((str(_meta(pod).get("name")), target))
    for new_name, target in zip(new_names, slots[len(unplaced):], strict=True):
        if kind == "StatefulSet":
            create.append(pod_manifest(workload, owner, name=new_name, node=target,
                                       extra_labels={"statefulset.kubernetes.io/pod-name": str(new_name)}))
        else:
            create.append(pod_manifest(workload, owner, generate_name=f"{_meta(owner).get('name')}-",
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
        if len(parts) != 3 or not all(parts) or parts[1].lower() not in _KIND_BY_LOWER:
            raise ValueError(f"{DEPENDS_ON}: {item!r} is not namespace/kind/name "
                             f"(kind one of {', '.join(sorted(_KIND_BY_LOWER))})")
        deps.append((_KIND_BY_LOWER[parts[1].lower()], parts[0], parts[2]))
    return deps


def available(workload: Mapping[str, Any] | None) -> bool:
    """A workload exists and has enough Ready pods by its status.

    Deployments and StatefulSets: ``status.readyReplicas >= spec.replicas``; DaemonSets:
    ``status.numberReady >= status.desiredNumberScheduled``.
    """
    if workload is None:
        return False
    status = _status(workload)
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
    conditions that change get a new ``lastTransitionTime``.
    """
    previous = _status(pod)
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
    containers = [(c.get("name", "main"), str(c.get("image", ""))) for c in (_spec(pod).get("containers") or [{}])]
    if stuck and node is not None:
        state: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff",
                                             "message": "back-off 5m0s restarting failed container"}}
    elif ready:
        state = {"running": {}}
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
    previous = _status(workload)
    generation = _meta(workload).get("generation", 1)
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


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) applied: objects merge, ``None`` removes, the rest replaces."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = merge_patch({}, value)
        else:
            result[key] = value
    return result


def status_changed(obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether merge-patching ``status`` into the object's status would change anything."""
    current = dict(_status(obj))
    return merge_patch(current, status) != current


# -- rule 5: Flux ---------------------------------------------------------------------------------


def revision_of(branch: str, url: str) -> str:
    """A GitRepository artifact revision, ``<branch>@sha1:<40 hex>`` (stable per URL and branch)."""
    return f"{branch}@sha1:{hashlib.sha1(f'{url}#{branch}'.encode()).hexdigest()}"  # noqa: S324 - not security


def served_by(repo: Mapping[str, Any]) -> ObjRef | None:
    """The workload ``lab.hecate.io/served-by`` names (None: an external, always reachable server)."""
    text = annotations_of(repo).get(SERVED_BY)
    if not text:
        return None
    parts = str(text).split("/")
    if len(parts) != 3 or parts[1].lower() not in _KIND_BY_LOWER:
        raise ValueError(f"{SERVED_BY}: {text!r} is not namespace/kind/name")
    return _KIND_BY_LOWER[parts[1].lower()], parts[0], parts[2]


def _dial_target(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 22 if parsed.scheme == "ssh" else 80)
    return f"{parsed.hostname or url}:{port}"


def _handled(obj: Mapping[str, Any], status: dict[str, Any]) -> None:
    requested = annotations_of(obj).get(REQUESTED_AT)
    if requested:
        status["lastHandledReconcileAt"] = requested


def gitrepository_status(repo: Mapping[str, Any], server_available: bool, now: float) -> dict[str, Any]:
    """A GitRepository's status, as source-controller would write it.

    Pure. Ready when the repository is not suspended, the workload serving it is
    available (``server_available``; a repository without ``lab.hecate.io/served-by`` is
    served from outside the cluster: always), and ``spec.ref.branch`` (default ``main``)
    is one of ``lab.hecate.io/branches`` (absent: any branch exists). Ready sets
    ``status.artifact.revision``; a failure keeps the last artifact and says why in
    Flux's words (reason ``GitOperationFailed``; a suspended repository: ``Suspended``).
    A reconcile request is handled (``lastHandledReconcileAt``) unless suspended.
    """
    spec = _spec(repo)
    previous = _status(repo)
    url = str(spec.get("url") or "")
    branch = str((spec.get("ref") or {}).get("branch") or "main")
    listed = annotations_of(repo).get(BRANCHES)
    branches = None if listed is None else [b.strip() for b in str(listed).split(",") if b.strip()]
    suspended = is_true(spec.get("suspend"))
    status: dict[str, Any] = {k: v for k, v in previous.items() if k != "conditions"}
    if suspended:
        ok, reason, message = False, "Suspended", "reconciliation is suspended"
    elif not server_available:
        ok, reason = False, "GitOperationFailed"
        message = (f"failed to checkout and determine revision: unable to clone '{url}': "
                   f"dial tcp {_dial_target(url)}: connect: connection refused")
    elif branches is not None and branch not in branches:
        ok, reason = False, "GitOperationFailed"
        message = (f"failed to checkout and determine revision: unable to clone '{url}': "
                   f"couldn't find remote ref \"refs/heads/{branch}\"")
    else:
        ok, reason = True, "Succeeded"
        revision = revision_of(branch, url)
        message = f"stored artifact for revision '{revision}'"
        artifact = dict(previous.get("artifact") or {})
        if artifact.get("revision") != revision:
            artifact = {"revision": revision, "lastUpdateTime": format_time(now),
                        "path": f"gitrepository/{_meta(repo).get('namespace')}/{_meta(repo).get('name')}/"
                                f"{revision.rsplit(':', 1)[-1]}.tar.gz"}
        status["artifact"] = artifact
    if not suspended:
        status["observedGeneration"] = _meta(repo).get("generation", 1)
        _handled(repo, status)
    status["conditions"] = [make_condition("Ready", ok, reason, message, condition(repo, "Ready"), now)]
    return status


def source_ref(obj: Mapping[str, Any]) -> ObjRef | None:
    """A Kustomization's ``spec.sourceRef`` or a HelmRelease's ``spec.chart.spec.sourceRef``.

    The namespace defaults to the object's own.
    """
    spec = _spec(obj)
    ref = spec.get("sourceRef") if obj.get("kind") == "Kustomization" else \
        ((spec.get("chart") or {}).get("spec") or {}).get("sourceRef")
    if not isinstance(ref, Mapping) or not ref.get("kind") or not ref.get("name"):
        return None
    return str(ref["kind"]), str(ref.get("namespace") or _meta(obj).get("namespace")), str(ref["name"])


@dataclass(frozen=True)
class Source:
    """What a Kustomization or HelmRelease sees of its source."""

    ready: bool
    revision: str = ""
    missing: bool = False


def source_view(ref: ObjRef | None, objects: Mapping[ObjRef, Mapping[str, Any]],
                chart_version: str = "") -> Source:
    """A source's readiness: GitRepositories by their Ready condition, HelmRepositories
    (and other kinds) are external and always Ready."""
    if ref is None:
        return Source(ready=False, missing=True)
    if ref[0] != "GitRepository":
        return Source(ready=True, revision=chart_version or "latest")
    repo = objects.get(ref)
    if repo is None:
        return Source(ready=False, missing=True)
    return Source(ready=condition_true(repo), revision=str((_status(repo).get("artifact") or {}).get("revision") or ""))


def flux_status(obj: Mapping[str, Any], source: Source, now: float) -> dict[str, Any] | None:
    """A Kustomization's or HelmRelease's status; None when suspended (the status stays as it was).

    Pure. Ready follows the source: Ready when the source is; otherwise Ready False with
    reason ``ArtifactFailed`` (Flux's "Source artifact not found, retrying in 30s"). A
    reconcile request is handled (``lastHandledReconcileAt``).
    """
    spec = _spec(obj)
    if is_true(spec.get("suspend")):
        return None
    previous = _status(obj)
    meta = _meta(obj)
    status: dict[str, Any] = {k: v for k, v in previous.items() if k != "conditions"}
    status["observedGeneration"] = meta.get("generation", 1)
    _handled(obj, status)
    kind = obj.get("kind")
    ref = source_ref(obj)
    if source.ready:
        if kind == "HelmRelease":
            chart = (spec.get("chart") or {}).get("spec") or {}
            release = spec.get("releaseName") or meta.get("name")
            reason = "InstallSucceeded"
            message = (f"Helm install succeeded for release {meta.get('namespace')}/{release}.v1 with chart "
                       f"{chart.get('chart') or meta.get('name')}@{chart.get('version') or source.revision}")
            status["lastAttemptedRevision"] = chart.get("version") or source.revision
        else:
            reason, message = "ReconciliationSucceeded", f"Applied revision: {source.revision}"
            status["lastAppliedRevision"] = source.revision
            status["lastAttemptedRevision"] = source.revision
        ok = True
    elif source.missing:
        ok, reason = False, "ArtifactFailed"
        message = f"{ref_text(ref)} not found" if ref else "no sourceRef"
    else:
        ok, reason, message = False, "ArtifactFailed", "Source artifact not found, retrying in 30s"
    status["conditions"] = [make_condition("Ready", ok, reason, message, condition(obj, "Ready"), now)]
    return status


def rendered(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifests of ``lab.hecate.io/renders``; ValueError when it is not a JSON list of objects."""
    text = annotations_of(obj).get(RENDERS)
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{RENDERS} is not JSON: {e}") from e
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and m.get("apiVersion") and m.get("kind") and (m.get("metadata") or {}).get("name")
            for m in data):
        raise ValueError(f"{RENDERS} must be a JSON list of manifests with apiVersion, kind and metadata.name")
    return data


def renders_to_create(obj: Mapping[str, Any], existing: set[ObjRef] | frozenset[ObjRef]) -> list[dict[str, Any]]:
    """What a reconciling Kustomization/HelmRelease re-creates: rendered manifests that are missing.

    Pure. Nothing when the object is suspended or not Ready (a reconcile needs its source).
    Creation only: present objects are never overwritten. A manifest without a namespace
    lands in the object's ``spec.targetNamespace`` or, failing that, its own namespace.
    """
    if is_true(_spec(obj).get("suspend")) or not condition_true(obj):
        return []
    default_ns = _spec(obj).get("targetNamespace") or _meta(obj).get("namespace")
    missing = []
    for manifest in rendered(obj):
        manifest = json.loads(json.dumps(manifest))
        meta = manifest.setdefault("metadata", {})
        meta.setdefault("namespace", default_ns)
        if (manifest["kind"], meta["namespace"], meta["name"]) not in existing:
            missing.append(manifest)
    return missing


# -- ordering ---------------------------------------------------------------------------------------


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
