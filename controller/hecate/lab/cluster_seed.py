"""Fill the lab's emulated API with what a homelab k3s + Flux cluster runs.

The shutdown tests and the demo call :func:`seed_workloads` after ``Lab.up`` so that
Hecate has something to suspend, scale, cordon and drain. It talks plain HTTP/JSON to
the lab API (the URL from the kubeconfig), independent of the client Hecate uses, and
is idempotent: objects that already exist are left as they are.

What it creates (``A`` = the agents in node order, or every node when there is none;
the workload pods are placed round-robin over ``A``, ``postgres-0`` always on ``A[0]``):

================================  =====================================================
namespaces                        ``apps``, ``data``, ``gitea``, ``flux-system``, ``kube-system``
Deployment ``apps/web``           2 replicas, ``hecate.io/tier=apps``, ``app=web``
Deployment ``apps/api``           1 replica, ``hecate.io/tier=apps``, ``app=api``
Deployment ``data/redis``         1 replica, ``hecate.io/tier=data``, ``app=redis``
StatefulSet ``data/postgres``     1 replica, ``hecate.io/tier=data``, ``app=postgres``
Deployment ``gitea/gitea``        1 replica, ``hecate.io/tier=foundation``, ``app=gitea``
ReplicaSets                       one per Deployment (``<name>-<hash>``), owning its pods
Pods                              one per replica, ``spec.nodeName`` set, ``Running`` and
                                  Ready, owned by their ReplicaSet/StatefulSet, carrying
                                  the workload's labels (tier included)
DaemonSet ``kube-system/svclb-traefik``  and one pod of it on *every* node (servers too),
                                  ``ownerReferences`` kind ``DaemonSet``
PDB ``data/postgres``             ``minAvailable: 1`` over ``app=postgres``: evicting
                                  ``postgres-0`` is refused (429) -- the blocked drain
GitRepository ``flux-system/flux-system``  Gitea's ``ops/fleet`` repo, branch ``main``
Kustomization ``flux-system/flux-system``  not suspended (no ``suspend`` field)
Kustomization ``flux-system/experiments``  ``suspend: true`` -- suspended by a user
HelmRelease ``gitea/gitea``       ``suspend: false``
================================  =====================================================

The returned :class:`Seeded` names them in the refs Hecate's kube adapter uses
(``Kind/namespace/name`` for workloads and Flux objects, ``namespace/name`` for pods).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hecate.lab.kubeapi import LabKubeApiError, api_url

TIER_LABEL = "hecate.io/tier"


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    kind: str  # "Deployment" | "StatefulSet"
    tier: str
    replicas: int
    image: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.name, "app.kubernetes.io/name": self.name, TIER_LABEL: self.tier}


WORKLOADS: tuple[Workload, ...] = (
    Workload("apps", "web", "Deployment", "apps", 2, "nginx:1.27"),
    Workload("apps", "api", "Deployment", "apps", 1, "ghcr.io/titan/api:1.4.2"),
    Workload("data", "redis", "Deployment", "data", 1, "redis:7.4"),
    Workload("data", "postgres", "StatefulSet", "data", 1, "postgres:16"),
    Workload("gitea", "gitea", "Deployment", "foundation", 1, "gitea/gitea:1.22"),
)
NAMESPACES = ("apps", "data", "gitea", "flux-system", "kube-system")
DAEMONSET = ("kube-system", "svclb-traefik")
BLOCKING_PDB = ("data", "postgres")
BLOCKED_POD = "data/postgres-0"


@dataclass
class Seeded:
    """What :func:`seed_workloads` put in the cluster, by ref."""

    workloads: dict[str, int] = field(default_factory=dict)  # "Deployment/apps/web" -> replicas
    pods_by_node: dict[str, list[str]] = field(default_factory=dict)  # node -> ["apps/web-...", ...]
    daemonset_pods: dict[str, str] = field(default_factory=dict)  # node -> "kube-system/svclb-traefik-..."
    blocked_pod: str = BLOCKED_POD  # the pod the PDB protects
    blocked_node: str = ""  # where it runs
    flux_active: list[str] = field(default_factory=list)  # not suspended
    flux_user_suspended: list[str] = field(default_factory=list)  # suspended by a user

    def workloads_with_tier(self, tier: str) -> dict[str, int]:
        return {ref: n for ref, n in self.workloads.items()
                if any(w.ref == ref and w.tier == tier for w in WORKLOADS)}


# -- a small JSON-over-HTTP client -----------------------------------------------------------


class _Api:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http":
            raise LabKubeApiError(f"the seed helper speaks plain HTTP to the lab API, not {url}")
        self.host, self.port, self.timeout = parsed.hostname or "127.0.0.1", parsed.port or 80, timeout

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            rsp = conn.getresponse()
            data = rsp.read()
            return rsp.status, json.loads(data) if data else None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise LabKubeApiError(f"{method} {path}: {e}") from e
        finally:
            conn.close()

    def create(self, collection: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST the object; on 409 (it exists) return the stored one."""
        status, data = self.request("POST", collection, obj)
        if status == 409:
            status, data = self.request("GET", f"{collection}/{obj['metadata']['name']}")
        if status >= 300 or not isinstance(data, dict):
            raise LabKubeApiError(f"POST {collection} ({obj['metadata']['name']}) -> {status}: {data}")
        return data


def _collection(api_version: str, plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _pod(namespace: str, name: str, labels: Mapping[str, str], node: str, image: str,
         owner: Mapping[str, Any], index: int) -> dict[str, Any]:
    container = name.rsplit("-", 2)[0] if owner["kind"] == "ReplicaSet" else owner["name"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                     "ownerReferences": [dict(owner)]},
        "spec": {"nodeName": node, "containers": [{"name": container, "image": image}],
                 "restartPolicy": "Always", "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": f"10.42.{index % 250}.{10 + index % 240}",
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "ContainersReady", "status": "True"},
                                  {"type": "PodScheduled", "status": "True"}]},
    }


def _workload_object(w: Workload) -> dict[str, Any]:
    template = {"metadata": {"labels": w.labels},
                "spec": {"containers": [{"name": w.name, "image": w.image}]}}
    spec: dict[str, Any] = {"replicas": w.replicas, "selector": {"matchLabels": {"app": w.name}},
                            "template": template}
    if w.kind == "StatefulSet":
        spec["serviceName"] = w.name
    ready = {"replicas": w.replicas, "readyReplicas": w.replicas, "availableReplicas": w.replicas,
             "updatedReplicas": w.replicas, "observedGeneration": 1}
    return {"apiVersion": "apps/v1", "kind": w.kind,
            "metadata": {"name": w.name, "namespace": w.namespace, "labels": w.labels},
            "spec": spec, "status": ready}


def _flux_objects() -> list[tuple[str, str, dict[str, Any]]]:
    """(apiVersion, plural, object) of the Flux objects."""
    ready = {"conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                             "message": "Applied revision: main@sha1:4b1c0de"}]}
    return [
        ("source.toolkit.fluxcd.io/v1", "gitrepositories", {
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "flux-system", "namespace": "flux-system"},
            "spec": {"url": "http://gitea-http.gitea.svc.cluster.local:3000/ops/fleet.git",
                     "ref": {"branch": "main"}, "interval": "1m0s", "secretRef": {"name": "flux-system"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                       "message": "stored artifact for revision 'main@sha1:4b1c0de'"}]},
        }),
        ("kustomize.toolkit.fluxcd.io/v1", "kustomizations", {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "flux-system", "namespace": "flux-system"},
            "spec": {"interval": "10m0s", "path": "./clusters/titan", "prune": True,
                     "sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
            "status": ready,
        }),
        ("kustomize.toolkit.fluxcd.io/v1", "kustomizations", {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "experiments", "namespace": "flux-system",
                         "annotations": {"titan.io/suspended-by": "alice: debugging the new ingress"}},
            "spec": {"interval": "10m0s", "path": "./experiments", "prune": True, "suspend": True,
                     "sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
            "status": ready,
        }),
        ("helm.toolkit.fluxcd.io/v2", "helmreleases", {
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "gitea", "namespace": "gitea"},
            "spec": {"interval": "30m", "suspend": False, "releaseName": "gitea",
                     "chart": {"spec": {"chart": "gitea", "version": "10.4.1",
                                        "sourceRef": {"kind": "HelmRepository", "name": "gitea-charts",
                                                      "namespace": "flux-system"}}}},
            "status": ready,
        }),
    ]


def _nodes(api: _Api) -> tuple[list[str], list[str]]:
    status, data = api.request("GET", "/api/v1/nodes")
    if status != 200 or not isinstance(data, dict):
        raise LabKubeApiError(f"GET /api/v1/nodes -> {status}: {data}")
    servers: list[str] = []
    agents: list[str] = []
    for node in data.get("items", []):
        labels = node.get("metadata", {}).get("labels") or {}
        is_server = labels.get("node-role.kubernetes.io/control-plane") == "true"
        (servers if is_server else agents).append(node["metadata"]["name"])
    return servers, agents


def seed_workloads(kubeconfig: str | os.PathLike[str] | None = None, *, url: str | None = None,
                   nodes: Sequence[str] | None = None, timeout: float = 5.0) -> Seeded:
    """Create the objects listed in this module's docstring; returns what is where.

    Give the lab's ``kubeconfig`` (its server URL is used) or the API ``url``. ``nodes``
    overrides where workload pods go (default: the agents, else every node);
    DaemonSet pods go to every Node the API lists.
    """
    if url is None:
        if kubeconfig is None:
            raise LabKubeApiError("seed_workloads needs a kubeconfig or a url")
        try:
            url = api_url(kubeconfig)
        except (OSError, KeyError, StopIteration, TypeError, ValueError) as e:
            raise LabKubeApiError(f"cannot read the API URL from {kubeconfig}: {e}") from e
    api = _Api(url, timeout)
    servers, agents = _nodes(api)
    all_nodes = servers + agents
    targets = list(nodes) if nodes else (agents or all_nodes)
    if not targets:
        raise LabKubeApiError("the lab API lists no Nodes to place pods on")
    seeded = Seeded(pods_by_node={n: [] for n in [*all_nodes, *targets]})

    for ns in NAMESPACES:
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    slot = 0
    for w in WORKLOADS:
        plural = "deployments" if w.kind == "Deployment" else "statefulsets"
        owner_obj = api.create(_collection("apps/v1", plural, w.namespace), _workload_object(w))
        seeded.workloads[w.ref] = w.replicas
        if w.kind == "Deployment":
            pod_hash = _hash(f"{w.namespace}/{w.name}", 9)
            rs = api.create(_collection("apps/v1", "replicasets", w.namespace), {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{w.name}-{pod_hash}", "namespace": w.namespace,
                             "labels": {**w.labels, "pod-template-hash": pod_hash},
                             "ownerReferences": [_owner(owner_obj)]},
                "spec": {"replicas": w.replicas,
                         "selector": {"matchLabels": {"app": w.name, "pod-template-hash": pod_hash}},
                         "template": {"metadata": {"labels": {**w.labels, "pod-template-hash": pod_hash}},
                                      "spec": {"containers": [{"name": w.name, "image": w.image}]}}},
                "status": {"replicas": w.replicas, "readyReplicas": w.replicas},
            })
            owner, labels = _owner(rs), {**w.labels, "pod-template-hash": pod_hash}
            names = [f"{w.name}-{pod_hash}-{_hash(f'{w.namespace}/{w.name}/{i}', 5)}" for i in range(w.replicas)]
        else:
            owner, labels = _owner(owner_obj), dict(w.labels)
            names = [f"{w.name}-{i}" for i in range(w.replicas)]
        for name in names:
            pod_ref = f"{w.namespace}/{name}"
            if pod_ref == BLOCKED_POD:
                node = targets[0]
                seeded.blocked_node = node
            else:
                node = targets[slot % len(targets)]
                slot += 1
            api.create(_collection("v1", "pods", w.namespace),
                       _pod(w.namespace, name, {**labels, "statefulset.kubernetes.io/pod-name": name}
                            if w.kind == "StatefulSet" else labels, node, w.image, owner, slot))
            seeded.pods_by_node[node].append(pod_ref)

    ds_ns, ds_name = DAEMONSET
    ds_labels = {"app": ds_name, "svccontroller.k3s.cattle.io/svcname": "traefik"}
    ds = api.create(_collection("apps/v1", "daemonsets", ds_ns), {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": ds_name, "namespace": ds_ns, "labels": ds_labels},
        "spec": {"selector": {"matchLabels": {"app": ds_name}},
                 "template": {"metadata": {"labels": ds_labels},
                              "spec": {"containers": [{"name": "lb-tcp-80", "image": "rancher/klipper-lb:v0.4.9"}]}}},
        "status": {"desiredNumberScheduled": len(all_nodes), "numberReady": len(all_nodes)},
    })
    for index, node in enumerate(all_nodes):
        name = f"{ds_name}-{_hash(node, 5)}"
        api.create(_collection("v1", "pods", ds_ns),
                   _pod(ds_ns, name, {**ds_labels, "controller-revision-hash": "6f8c9d7b5"}, node,
                        "rancher/klipper-lb:v0.4.9", _owner(ds), 200 + index))
        seeded.daemonset_pods[node] = f"{ds_ns}/{name}"
        seeded.pods_by_node[node].append(f"{ds_ns}/{name}")

    pdb_ns, pdb_name = BLOCKING_PDB
    api.create(_collection("policy/v1", "poddisruptionbudgets", pdb_ns), {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": pdb_name, "namespace": pdb_ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "postgres"}}},
        "status": {"currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0, "expectedPods": 1},
    })

    for api_version, plural, obj in _flux_objects():
        meta = obj["metadata"]
        api.create(_collection(api_version, plural, meta["namespace"]), obj)
        if obj["kind"] == "GitRepository":
            continue
        ref = f"{obj['kind']}/{meta['namespace']}/{meta['name']}"
        (seeded.flux_user_suspended if obj["spec"].get("suspend") else seeded.flux_active).append(ref)
    return seeded
