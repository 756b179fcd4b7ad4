"""Kubernetes objects as data: the kinds Hecate knows, how it names an object, what it reads off one.

Why this module exists: the Kubernetes adapter, the configuration, the services and the lab
all name objects and read a few fields of them. Those decisions are pure, so they live here
once -- the adapter (``hecate.adapters.kube``) only moves them over the wire.

**One reference syntax**, everywhere (configuration, run records, drills, status, the lab):
``namespace/kind/name`` -- ``gitea/deployment/gitea``, ``flux-system/kustomization/apps``;
a cluster-scoped object has an empty namespace: ``/namespace/gitea``, ``/node/a1``. Hecate
writes the kind in lower case, as the configuration and ``kubectl`` do, and reads it in any
case (``kube-system/Deployment/coredns``). Pods in drain and restart results are
``namespace/name``: they are always pods.

**One list of kinds**: :data:`KINDS`; every narrower list (workloads, Flux, what the bootstrap
cache may hold) is a view of it.

**Ownership marks**: what Hecate changes it records on the object itself, in the same patch
(:data:`SUSPENDED_BY`, :data:`CORDONED_BY`, :data:`ORIGINAL_REPLICAS`), so that a repeated or
resumed shutdown -- or a run record lost with the disk -- cannot make startup forget what is ours.

**Fresh signals**: after a cold start etcd still holds the statuses from before the outage (Nodes
Ready, workloads with all replicas ready) until the node controller's grace period marks them
stale. A startup believes only what was written after its run began: :func:`node_signal` (a
Node's kubelet renewed its Lease or posted a heartbeat since) and :func:`workload_fresh` (the
status is of the current generation, and enough pods were confirmed Ready by live kubelets).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from hecate.domain import text, timestamps


@dataclass(frozen=True)
class Kind:
    """One kind of object Hecate reads or writes."""

    name: str
    """As the API spells it: ``Deployment``."""
    group: str
    """API group; empty for the core group."""
    versions: tuple[str, ...]
    """Newest first; for the Flux kinds the first one the API serves is used."""
    plural: str
    """The resource in URLs: ``deployments``."""
    namespaced: bool = True
    cacheable: bool = True
    """The bootstrap cache may hold it (and drills may get, create and delete it by reference). No
    Secrets: they survive an outage in etcd, and a copy on the coordinator's disk would be one more
    place to steal them from (manifests/rbac.yaml)."""

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` Hecate assumes when an object does not say: ``apps/v1``."""
        return f"{self.group}/{self.versions[0]}" if self.group else self.versions[0]


KINDS: Final[Mapping[str, Kind]] = MappingProxyType({k.name: k for k in (
    Kind("Deployment", "apps", ("v1",), "deployments"),
    Kind("StatefulSet", "apps", ("v1",), "statefulsets"),
    Kind("DaemonSet", "apps", ("v1",), "daemonsets"),
    Kind("Namespace", "", ("v1",), "namespaces", namespaced=False),
    Kind("ConfigMap", "", ("v1",), "configmaps"),
    Kind("Service", "", ("v1",), "services"),
    Kind("ServiceAccount", "", ("v1",), "serviceaccounts"),
    Kind("PersistentVolumeClaim", "", ("v1",), "persistentvolumeclaims"),
    Kind("GitRepository", "source.toolkit.fluxcd.io", ("v1", "v1beta2"), "gitrepositories"),
    Kind("HelmRepository", "source.toolkit.fluxcd.io", ("v1",), "helmrepositories"),
    Kind("Kustomization", "kustomize.toolkit.fluxcd.io", ("v1", "v1beta2"), "kustomizations"),
    Kind("HelmRelease", "helm.toolkit.fluxcd.io", ("v2", "v2beta2", "v2beta1"), "helmreleases"),
    Kind("Node", "", ("v1",), "nodes", namespaced=False, cacheable=False),
)})
"""Every kind Hecate reads or writes."""
CACHEABLE_KINDS: Final = tuple(k.name for k in KINDS.values() if k.cacheable)
"""Kinds the bootstrap cache can hold (exported from the cluster, created from the cache)."""
WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet", "DaemonSet")
"""Kinds whose availability Hecate waits for (``startup.foundation``, ``flux.gitea_workload``)."""
SCALABLE_KINDS: Final = ("Deployment", "StatefulSet")
"""Kinds a shutdown scales to zero and a startup scales back."""
FLUX_KINDS: Final = ("Kustomization", "HelmRelease")
"""What a shutdown suspends, in this order: Kustomizations first, so that they cannot re-apply a
HelmRelease while it is being suspended."""
GIT_REPOSITORY: Final = "GitRepository"
"""The Flux source a startup watches, re-points and asks to reconcile."""
_BY_LOWER: Final = {k.lower(): k for k in KINDS}

# Annotations Hecate reads or writes.
OWNER: Final = "hecate"
SUSPENDED_BY: Final = "hecate.io/suspended-by"
CORDONED_BY: Final = "hecate.io/cordoned-by"
ORIGINAL_REPLICAS: Final = "hecate.io/original-replicas"
RECONCILE_ANNOTATION: Final = "reconcile.fluxcd.io/requestedAt"
MIRROR_ANNOTATION: Final = "kubernetes.io/config.mirror"


# -- references -------------------------------------------------------------------------------


def format_ref(namespace: str | None, kind: str, name: str) -> str:
    """``namespace/kind/name``, the kind in lower case (``/kind/name`` when cluster-scoped)."""
    return f"{namespace or ''}/{kind.lower()}/{name}"


def split_ref(ref: str) -> tuple[str, str, str]:
    """``(namespace, kind, name)`` of ``namespace/kind/name``, the kind as written; the syntax alone.

    ValueError unless there are three parts and the kind and name are not empty. The form
    earlier versions wrote into journals and run records, ``Kind/namespace/name`` (``Kind//name``
    when cluster-scoped), is read too, so a run journaled before an upgrade still resumes: its
    first part is a kind as the API spells it, which a namespace (lower case) never is.
    """
    parts = ref.split("/")
    if len(parts) == 3 and parts[0] in KINDS:
        parts = [parts[1], parts[0], parts[2]]
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f"{ref!r} is not namespace/kind/name")
    return parts[0], parts[1], parts[2]


def parse_ref(ref: str, kinds: tuple[str, ...] | None = None) -> tuple[str, str, str]:
    """``(namespace, Kind, name)`` of ``namespace/kind/name``, the kind spelt as the API spells it.

    ValueError when the syntax is wrong, the kind is not one of ``kinds`` (default: any of
    :data:`KINDS`), or the namespace is missing (present) for a namespaced (cluster-scoped) kind.
    """
    namespace, written, name = split_ref(ref)
    allowed = tuple(KINDS) if kinds is None else kinds
    kind = _BY_LOWER.get(written.lower())
    if kind is None or kind not in allowed:
        raise ValueError(f"{ref!r}: kind {written!r} is not allowed here; the kind must be one of "
                         f"{', '.join(k.lower() for k in allowed)}")
    if KINDS[kind].namespaced and not namespace:
        raise ValueError(f"{ref!r}: needs its namespace (namespace/kind/name)")
    if not KINDS[kind].namespaced and namespace:
        raise ValueError(f"{ref!r}: a {kind} is written /{kind.lower()}/NAME")
    return namespace, kind, name


def canonical_ref(ref: str, kinds: tuple[str, ...] | None = None) -> str:
    """The reference as Hecate writes it (``kube-system/Deployment/coredns`` -> ``kube-system/deployment/coredns``)."""
    return format_ref(*parse_ref(ref, kinds))


def object_ref(obj: Mapping[str, Any], kind: str | None = None) -> str:
    """The reference of an object (``kind`` for list items, which do not carry their own)."""
    meta = obj.get("metadata") or {}
    return format_ref(meta.get("namespace"), str(kind or obj.get("kind")), str(meta.get("name")))


def pod_ref(pod: Mapping[str, Any]) -> str:
    """``namespace/name`` of a pod."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


# -- reading an object ------------------------------------------------------------------------


def annotations_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def marked_by_hecate(obj: Mapping[str, Any] | None, mark: str) -> bool:
    """Whether the ownership annotation ``mark`` says Hecate made the change."""
    return annotations_of(obj).get(mark) == OWNER


def condition(obj: Mapping[str, Any] | None, kind: str = "Ready") -> dict[str, Any]:
    """The status condition of that type (empty when there is none)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def node_ready(node: Mapping[str, Any]) -> bool:
    return condition(node).get("status") == "True"


# -- fresh signals after a cold start -------------------------------------------------------------

NODE_LEASE_NAMESPACE: Final = "kube-node-lease"
"""Where every kubelet renews a coordination.k8s.io/v1 Lease named after its node (every 10 s by default)."""
KUBELET_SETTLE: Final = timedelta(seconds=40)
"""How long after its node came back a pod's old status is still doubted: the node controller's default
grace period, well past the time a kubelet takes to re-sync every pod it runs."""


def _time(value: object) -> datetime | None:
    """A time the API wrote (RFC 3339), or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return timestamps.parse(value)
    except ValueError:
        return None


def _since(when: datetime | None, since: datetime) -> bool:
    """Written at or after ``since``. A ``metav1.Time`` has whole seconds and stands for any instant of
    its second, so one from the second ``since`` falls in counts only if ``since`` is a whole second:
    never a stale signal taken for a fresh one."""
    return when is not None and when >= since


@dataclass(frozen=True)
class NodeSignal:
    """What a Node says about its kubelet, read against the moment power returned (``since``)."""

    ready: bool
    """The Ready condition is ``True`` -- possibly a status from before the outage."""
    fresh: bool
    """The kubelet has written since: its Lease renewed, or a Ready heartbeat posted."""
    back_at: datetime | None = None
    """When the node turned Ready, if that was after ``since`` and less than :data:`KUBELET_SETTLE` ago:
    pods on it count only once confirmed since (:func:`pod_confirmed`)."""
    detail: str = ""

    @property
    def up(self) -> bool:
        """Ready, and the kubelet is alive to say so."""
        return self.ready and self.fresh


def node_signal(node: Mapping[str, Any], lease: Mapping[str, Any] | None, since: datetime,
                now: datetime) -> NodeSignal:
    """Whether a Node's Ready is fresh: its Lease's ``spec.renewTime`` (microseconds) or its Ready
    condition's ``lastHeartbeatTime`` is not older than ``since``.

    Purely computational. The kubelet's clock writes both, so coordinator and nodes must agree on
    the time (NTP): a node behind by more than the outage is believed only once it has caught up.
    """
    cond = condition(node)
    ready = cond.get("status") == "True"
    renewed = _time(((lease or {}).get("spec") or {}).get("renewTime"))
    heartbeat = _time(cond.get("lastHeartbeatTime"))
    fresh = _since(renewed, since) or _since(heartbeat, since)
    turned = _time(cond.get("lastTransitionTime"))
    back_at = turned if ready and fresh and _since(turned, since) and turned is not None \
        and now - turned < KUBELET_SETTLE else None
    if ready and fresh:
        detail = "Ready"
    elif ready:
        last = max((t for t in (renewed, heartbeat) if t is not None), default=None)
        detail = (f"Ready only by a status from before {timestamps.rfc3339(since)}: its kubelet has not "
                  f"posted since (last {timestamps.rfc3339(last) if last else 'never'})")
    else:
        detail = f"not Ready ({cond.get('reason') or 'no Ready condition'})"
    return NodeSignal(ready, fresh, back_at, detail)


def node_signals(nodes: Iterable[Mapping[str, Any]], leases: Iterable[Mapping[str, Any]], since: datetime,
                 now: datetime) -> dict[str, NodeSignal]:
    """:func:`node_signal` of every Node, each with the Lease of its name (``kube-node-lease``)."""
    by_name = {str((lease.get("metadata") or {}).get("name")): lease for lease in leases}
    signals: dict[str, NodeSignal] = {}
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name"))
        signals[name] = node_signal(node, by_name.get(name), since, now)
    return signals


def pod_confirmed(pod: Mapping[str, Any], node: NodeSignal | None) -> bool:
    """A pod that is Ready now, not only by a status from before the outage.

    Ready, not terminating, on a node that is :attr:`~NodeSignal.up`; and if that node came back
    during the run (``back_at``), the pod started (``status.startTime``, a container's
    ``state.running.startedAt``) or turned Ready since: its kubelet confirmed it after coming back.
    A node Ready since before the run kept its pods' statuses current. Purely computational.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or condition(pod).get("status") != "True":
        return False
    if node is None or not node.up:
        return False
    if node.back_at is None:
        return True
    status = pod.get("status") or {}
    times = [status.get("startTime"), condition(pod).get("lastTransitionTime")]
    times += [((c.get("state") or {}).get("running") or {}).get("startedAt")
              for c in status.get("containerStatuses") or [] if isinstance(c, Mapping)]
    return any(_since(_time(t), node.back_at) for t in times)


def label_selector(selector: Mapping[str, Any] | None) -> str | None:
    """A ``LabelSelector`` object as the API's ``labelSelector`` query (None: it selects nothing)."""
    if not selector:
        return None
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), ",".join(expr.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": f"{key}", "DoesNotExist": f"!{key}"}.get(str(op), f"{key} unknown-operator"))
    return ",".join(parts) or None


def workload_fresh(kind: str, obj: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                   nodes: Mapping[str, NodeSignal]) -> tuple[bool, str]:
    """:func:`workload_available`, believing only a fresh status: ``status.observedGeneration`` equals
    ``metadata.generation`` (the controller has seen the current spec) and as many of its ``pods``
    as it wants are :func:`pod_confirmed` on their node (``nodes``: :func:`node_signals`).

    After a cold start ``readyReplicas`` from before the outage stays until the node controller's grace
    period has passed; this tells "available" from "was available". Purely computational.
    """
    available, detail = workload_available(kind, obj)
    if not available:
        return False, detail
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if isinstance(generation, int) and observed != generation:
        return False, f"{detail} by a status of generation {observed}, not {generation} yet"
    status = obj.get("status") or {}
    if kind == "DaemonSet":
        want = int(status.get("desiredNumberScheduled") or 0)
    else:
        spec_replicas = (obj.get("spec") or {}).get("replicas", 1)
        want = int(spec_replicas) if isinstance(spec_replicas, int) else 1
    confirmed = sum(pod_confirmed(p, nodes.get(str((p.get("spec") or {}).get("nodeName")))) for p in pods)
    if confirmed < want:
        return False, f"{detail} by its status, {confirmed}/{want} confirmed by a live kubelet since power returned"
    return True, detail


STUCK_REASONS: Final = frozenset({"CrashLoopBackOff", "RunContainerError", "CreateContainerError", "Error"})
STUCK_RESTARTS: Final = 3


def crash_looping(pod: Mapping[str, Any]) -> bool:
    """Evidence that restarting the pod may help: a container waiting in a failure state
    (:data:`STUCK_REASONS`) or restarted :data:`STUCK_RESTARTS` times or more."""
    for status in ((pod.get("status") or {}).get("containerStatuses") or []):
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS or int(status.get("restartCount") or 0) >= STUCK_RESTARTS:
            return True
    return False


def workload_available(kind: str, obj: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment/StatefulSet/DaemonSet serves all its replicas, and a summary ("1/2 ready")."""
    status = obj.get("status") or {}
    if kind == "DaemonSet":
        want, ready = int(status.get("desiredNumberScheduled") or 0), int(status.get("numberReady") or 0)
    else:
        spec_replicas = (obj.get("spec") or {}).get("replicas", 1)
        want = int(spec_replicas) if isinstance(spec_replicas, int) else 1
        ready = int(status.get("readyReplicas") or 0)
    return ready >= want, f"{ready}/{want} ready"


def drain_skip_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a drain leaves this pod alone (as ``kubectl drain --ignore-daemonsets``), or None.

    DaemonSet pods would be re-created on the node at once (and tolerate the cordon);
    mirror pods are the kubelet's static pods, which the API cannot evict.
    """
    meta = pod.get("metadata") or {}
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "mirror pod"
    if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
        return "DaemonSet pod"
    return None


def flux_summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``{"ready", "suspended", "ours", "message", "fresh"}`` of a Kustomization or HelmRelease."""
    cond = condition(obj)
    requested = annotations_of(obj).get(RECONCILE_ANNOTATION)
    return {
        "ready": cond.get("status") == "True",
        "suspended": (obj.get("spec") or {}).get("suspend") is True,
        "ours": marked_by_hecate(obj, SUSPENDED_BY),
        "message": text.clean(cond.get("message") or ""),
        # the last reconcile request was handled: the status is not older than that request
        "fresh": requested is None or (obj.get("status") or {}).get("lastHandledReconcileAt") == requested,
    }


def git_repository_summary(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"ready", "reason", "message", "branch", "pinned", "suspended", "requested_at", "handled_at"}``
    of a GitRepository (``pinned``: a tag, semver, name or commit overrides the branch)."""
    cond = condition(obj)
    spec = (obj or {}).get("spec") or {}
    ref = spec.get("ref") or {}
    status = (obj or {}).get("status") or {}
    return {"ready": cond.get("status") == "True", "reason": text.clean(cond.get("reason") or ""),
            "message": text.clean(cond.get("message") or ""), "branch": ref.get("branch"),
            "pinned": any(ref.get(k) for k in ("tag", "semver", "name", "commit")),
            "suspended": spec.get("suspend") is True,
            "requested_at": annotations_of(obj).get(RECONCILE_ANNOTATION),
            "handled_at": status.get("lastHandledReconcileAt")}


# Fields of a live object that a cached copy must not carry (the API server owns them).
_SERVER_METADATA: Final = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                           "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds")
_DROPPED_ANNOTATIONS: Final = (SUSPENDED_BY, CORDONED_BY, ORIGINAL_REPLICAS, RECONCILE_ANNOTATION,
                               "kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision")


def clean_manifest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A live object as a manifest to re-create it: no status, no server-owned metadata.

    Hecate's own ownership annotations and kubectl's last-applied copy are dropped too,
    and a scaled-down workload keeps the replicas it had before Hecate scaled it.
    """
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = out.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    kept = annotations_of(obj)
    original = kept.get(ORIGINAL_REPLICAS)
    for key in _DROPPED_ANNOTATIONS:
        kept.pop(key, None)
    if kept:
        meta["annotations"] = kept
    else:
        meta.pop("annotations", None)
    if original is not None and original.isdigit() and isinstance(out.get("spec"), dict):
        out["spec"]["replicas"] = int(original)
    if out.get("kind") == "Service" and isinstance(out.get("spec"), dict):
        for key in ("clusterIP", "clusterIPs"):  # allocated by the API server
            out["spec"].pop(key, None)
    return out
