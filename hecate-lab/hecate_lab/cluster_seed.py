"""Fill the lab's emulated API with what a homelab k3s + Flux cluster runs.

The shutdown tests and the demo call :func:`seed_workloads` after ``Lab.up`` so that
Hecate has something to suspend, scale, cordon and drain, and the startup tests find the
Flux/Gitea bootstrap chain. It talks plain HTTP/JSON to the lab API (the URL from the
kubeconfig), independent of the client Hecate uses, and is idempotent: objects that
already exist are left as they are (a missing one is created again).

It creates workload *objects* only: the lab's simulator (see docs/lab-kubeapi.md)
creates their ReplicaSets and pods, places the pods (round-robin over schedulable nodes,
servers included, as k3s does), and writes every status. :func:`seed_workloads` then
waits until the cluster is healthy -- every workload available, the Flux objects Ready --
and reports where the pods landed. What it creates (``A[0]`` = the first agent, or the
first node when there is none):

=========================================  ===========================================
namespaces                                 ``apps``, ``data``, ``gitea``, ``flux-system``,
                                           ``kube-system``
Deployment ``apps/web``                    2 replicas, ``hecate.io/tier=apps``, ``app=web``
Deployment ``apps/api``                    1 replica, ``hecate.io/tier=apps``, ``app=api``
Deployment ``data/redis``                  1 replica, ``hecate.io/tier=data``, ``app=redis``
StatefulSet ``data/postgres``              1 replica, ``hecate.io/tier=data``, ``app=postgres``
Deployment ``kube-system/coredns``         1 replica, ``hecate.io/tier=foundation``
StatefulSet ``gitea/gitea-postgresql``     1 replica, tier ``foundation``, pinned to ``A[0]``
                                           (``nodeSelector`` ``kubernetes.io/hostname``)
Deployment ``gitea/gitea-valkey``          1 replica, tier ``foundation``, annotated
                                           ``lab.hecate.io/lost-on-cold-start: "true"``;
                                           rendered by HelmRelease ``gitea/gitea-valkey``
Deployment ``gitea/gitea``                 1 replica, tier ``foundation``,
                                           ``lab.hecate.io/depends-on:
                                           gitea/deployment/gitea-valkey``
Service ``gitea/gitea-http``               ClusterIP, port 3000, ``app=gitea``
DaemonSet ``kube-system/svclb-traefik``    one pod on *every* node (servers too)
PDB ``gitea/gitea-postgresql``             ``minAvailable: 1`` over
                                           ``app=gitea-postgresql``: evicting
                                           ``gitea-postgresql-0`` is refused (429) -- the
                                           blocked drain of ``A[0]``; the lab's shutdown
                                           tiers (``apps``, ``data``) never scale it away
GitRepository ``flux-system/flux-system``  Gitea's ``ops/fleet`` repo, branch ``main``,
                                           ``lab.hecate.io/served-by:
                                           gitea/deployment/gitea``, branches ``main``
Kustomization ``flux-system/flux-system``  not suspended (no ``suspend`` field)
Kustomization ``flux-system/experiments``  ``suspend: true`` -- suspended by a user
                                           (after it was applied: its status is stale)
HelmRelease ``gitea/gitea``                ``suspend: false``, chart from a
                                           HelmRepository (outside the cluster)
HelmRelease ``gitea/gitea-valkey``         ``suspend: false``, chart from the
                                           GitRepository; ``lab.hecate.io/renders``: the
                                           ``gitea-valkey`` Deployment
=========================================  ===========================================

After a full power-off the cold start deletes ``gitea-valkey`` (rule 2 of
docs/lab-kubeapi.md): Gitea waits for it, the GitRepository cannot clone from
Gitea, and the HelmRelease that would re-create valkey needs that GitRepository -- the
Flux/Gitea bootstrap deadlock.

The returned :class:`Seeded` names them in the refs Hecate's kube adapter uses
(``namespace/kind/name`` for workloads and Flux objects, ``namespace/name`` for pods).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hecate.domain.kubeobjects import FLUX_KINDS, KINDS, SCALABLE_KINDS, format_ref
from hecate_lab.cluster_sim import BRANCHES, DEPENDS_ON, LOST_ON_COLD_START, RENDERS, SERVED_BY
from hecate_lab.kubeapi import LabKubeApiError, api_url

TIER_LABEL = "hecate.io/tier"
HOSTNAME_LABEL = "kubernetes.io/hostname"


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    kind: str  # "Deployment" | "StatefulSet"
    tier: str
    replicas: int
    image: str
    depends_on: str = ""  # lab.hecate.io/depends-on
    lost_on_cold_start: bool = False
    pinned: bool = False  # pods only on A[0] (the PDB-protected one)

    @property
    def ref(self) -> str:
        return format_ref(self.namespace, self.kind, self.name)

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.name, "app.kubernetes.io/name": self.name, TIER_LABEL: self.tier}


VALKEY = Workload("gitea", "gitea-valkey", "Deployment", "foundation", 1, "valkey/valkey:8.0",
                  lost_on_cold_start=True)
GITEA = Workload("gitea", "gitea", "Deployment", "foundation", 1, "gitea/gitea:1.22",
                 depends_on="gitea/deployment/gitea-valkey")
WORKLOADS: tuple[Workload, ...] = (
    Workload("apps", "web", "Deployment", "apps", 2, "nginx:1.27"),
    Workload("apps", "api", "Deployment", "apps", 1, "ghcr.io/titan/api:1.4.2"),
    Workload("data", "redis", "Deployment", "data", 1, "redis:7.4"),
    Workload("data", "postgres", "StatefulSet", "data", 1, "postgres:16"),
    Workload("kube-system", "coredns", "Deployment", "foundation", 1, "rancher/mirrored-coredns-coredns:1.11.3"),
    Workload("gitea", "gitea-postgresql", "StatefulSet", "foundation", 1, "bitnami/postgresql:16.4.0",
             pinned=True),
    VALKEY,
    GITEA,
)
NAMESPACES = ("apps", "data", "gitea", "flux-system", "kube-system")
DAEMONSET = ("kube-system", "svclb-traefik")
BLOCKING_PDB = ("gitea", "gitea-postgresql")
BLOCKED_POD = "gitea/gitea-postgresql-0"
GIT_REPOSITORY = format_ref("flux-system", "GitRepository", "flux-system")
VALKEY_RELEASE = format_ref("gitea", "HelmRelease", "gitea-valkey")
GITEA_URL = "http://gitea-http.gitea.svc.cluster.local:3000/ops/fleet.git"
WAIT_S = 30.0
"""How long :func:`seed_workloads` waits for the cluster to become healthy."""


@dataclass
class Seeded:
    """What :func:`seed_workloads` put in the cluster, by ref."""

    workloads: dict[str, int] = field(default_factory=dict)  # "apps/deployment/web" -> replicas
    pods_by_node: dict[str, list[str]] = field(default_factory=dict)  # node -> ["apps/web-...", ...], sorted
    daemonset_pods: dict[str, str] = field(default_factory=dict)  # node -> "kube-system/svclb-traefik-..."
    blocked_pod: str = BLOCKED_POD  # the pod the PDB protects
    blocked_node: str = ""  # where it runs
    flux_active: list[str] = field(default_factory=list)  # not suspended (Kustomizations, then HelmReleases)
    flux_user_suspended: list[str] = field(default_factory=list)  # suspended by a user
    foundation: list[str] = field(default_factory=list)  # the foundation tier's workloads (never scaled down)
    git_repository: str = GIT_REPOSITORY  # what Flux clones from Gitea
    gitea: str = GITEA.ref  # the workload serving it
    helm_rendered: dict[str, str] = field(default_factory=dict)  # "gitea/deployment/gitea-valkey" -> its HelmRelease
    lost_on_cold_start: list[str] = field(default_factory=list)  # what a cold start deletes


# -- a small JSON-over-HTTP client -----------------------------------------------------------


class LabApi:
    """Plain JSON over HTTP to the lab API (the seed's and the lab tests' client, independent of Hecate's).

    ``request`` returns (status, decoded JSON -- or the raw body when it is not JSON)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http":
            raise LabKubeApiError(f"the seed helper speaks plain HTTP to the lab API, not {url}")
        self.host, self.port, self.timeout = parsed.hostname or "127.0.0.1", parsed.port or 80, timeout

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": content_type})
            rsp = conn.getresponse()
            data = rsp.read()
            return rsp.status, json.loads(data) if data.startswith((b"{", b"[")) else (data or None)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise LabKubeApiError(f"{method} {path}: {e}") from e
        finally:
            conn.close()

    def create(self, collection: str, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """POST the object; on 409 (it exists) the stored one. Returns (object, created now)."""
        status, data = self.request("POST", collection, obj)
        created = status < 300
        if status == 409:
            status, data = self.request("GET", f"{collection}/{obj['metadata']['name']}")
        if status >= 300 or not isinstance(data, dict):
            raise LabKubeApiError(f"POST {collection} ({obj['metadata']['name']}) -> {status}: {data}")
        return data, created

    def items(self, path: str) -> list[dict[str, Any]]:
        status, data = self.request("GET", path)
        if status != 200 or not isinstance(data, dict):
            raise LabKubeApiError(f"GET {path} -> {status}: {data}")
        return list(data.get("items") or [])


def _collection(api_version: str, plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def workload_object(w: Workload, pin_to: str | None = None) -> dict[str, Any]:
    """The manifest of a seeded workload (no status: the simulator writes it)."""
    pod_spec: dict[str, Any] = {"containers": [{"name": w.name, "image": w.image}]}
    if w.pinned and pin_to:
        pod_spec["nodeSelector"] = {HOSTNAME_LABEL: pin_to}
    template = {"metadata": {"labels": w.labels}, "spec": pod_spec}
    spec: dict[str, Any] = {"replicas": w.replicas, "selector": {"matchLabels": {"app": w.name}},
                            "template": template}
    if w.kind == "StatefulSet":
        spec["serviceName"] = w.name
    meta: dict[str, Any] = {"name": w.name, "namespace": w.namespace, "labels": w.labels}
    notes = {}
    if w.depends_on:
        notes[DEPENDS_ON] = w.depends_on
    if w.lost_on_cold_start:
        notes[LOST_ON_COLD_START] = "true"
    if notes:
        meta["annotations"] = notes
    return {"apiVersion": "apps/v1", "kind": w.kind, "metadata": meta, "spec": spec}


def _flux_objects() -> list[tuple[str, str, dict[str, Any]]]:
    """(apiVersion, plural, object) of the Flux objects, without status (the simulator writes it)."""
    return [
        ("source.toolkit.fluxcd.io/v1", "gitrepositories", {
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "flux-system", "namespace": "flux-system",
                         "annotations": {SERVED_BY: "gitea/deployment/gitea", BRANCHES: "main"}},
            "spec": {"url": GITEA_URL, "ref": {"branch": "main"}, "interval": "1m0s",
                     "secretRef": {"name": "flux-system"}},
        }),
        ("kustomize.toolkit.fluxcd.io/v1", "kustomizations", {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "flux-system", "namespace": "flux-system"},
            "spec": {"interval": "10m0s", "path": "./clusters/titan", "prune": True,
                     "sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
        }),
        ("kustomize.toolkit.fluxcd.io/v1", "kustomizations", {  # suspended once it is Ready (seed_workloads)
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "experiments", "namespace": "flux-system",
                         "annotations": {"titan.io/suspended-by": "alice: debugging the new ingress"}},
            "spec": {"interval": "10m0s", "path": "./experiments", "prune": True,
                     "sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
        }),
        ("helm.toolkit.fluxcd.io/v2", "helmreleases", {
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "gitea", "namespace": "gitea"},
            "spec": {"interval": "30m", "suspend": False, "releaseName": "gitea",
                     "chart": {"spec": {"chart": "gitea", "version": "10.4.1",
                                        "sourceRef": {"kind": "HelmRepository", "name": "gitea-charts",
                                                      "namespace": "flux-system"}}}},
        }),
        ("helm.toolkit.fluxcd.io/v2", "helmreleases", {
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "gitea-valkey", "namespace": "gitea",
                         "annotations": {RENDERS: json.dumps([workload_object(VALKEY)])}},
            "spec": {"interval": "30m", "suspend": False, "releaseName": "gitea-valkey",
                     "chart": {"spec": {"chart": "./charts/valkey", "version": "2.1.0",
                                        "sourceRef": {"kind": "GitRepository", "name": "flux-system",
                                                      "namespace": "flux-system"}}}},
        }),
    ]


USER_SUSPENDED = ("flux-system", "experiments")


def _nodes(api: LabApi) -> tuple[list[str], list[str]]:
    servers: list[str] = []
    agents: list[str] = []
    for node in api.items("/api/v1/nodes"):
        labels = node.get("metadata", {}).get("labels") or {}
        is_server = labels.get("node-role.kubernetes.io/control-plane") == "true"
        (servers if is_server else agents).append(node["metadata"]["name"])
    return servers, agents


def _ready(obj: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _available(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    gen = (obj.get("metadata") or {}).get("generation")
    return status.get("observedGeneration") == gen and \
        int(status.get("readyReplicas") or 0) >= int((obj.get("spec") or {}).get("replicas", 1))


def _unhealthy(api: LabApi, nodes: list[str], flux: list[str]) -> list[str]:
    """What is not healthy yet: seeded workloads not available, Flux objects not Ready, DaemonSet pods missing."""
    waiting: list[str] = []
    found: dict[str, dict[str, Any]] = {}
    for kind in SCALABLE_KINDS:
        for obj in api.items(f"/apis/{KINDS[kind].api_version}/{KINDS[kind].plural}"):
            found[format_ref(obj["metadata"]["namespace"], kind, obj["metadata"]["name"])] = obj
    waiting += [w.ref for w in WORKLOADS if w.ref not in found or not _available(found[w.ref])]
    for kind in ("GitRepository", *FLUX_KINDS):
        for obj in api.items(f"/apis/{KINDS[kind].api_version}/{KINDS[kind].plural}"):
            ref = format_ref(obj["metadata"]["namespace"], kind, obj["metadata"]["name"])
            if ref in flux and not _ready(obj):
                waiting.append(ref)
    ds_ns, ds_name = DAEMONSET
    placed = {p.get("spec", {}).get("nodeName") for p in api.items(f"/api/v1/namespaces/{ds_ns}/pods")
              if p["metadata"]["name"].startswith(f"{ds_name}-")}
    waiting += [f"{format_ref(ds_ns, 'DaemonSet', ds_name)} on {n}" for n in nodes if n not in placed]
    return waiting


def wait_healthy(api: LabApi, nodes: list[str], flux: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while waiting := _unhealthy(api, nodes, flux):
        if time.monotonic() > deadline:
            raise LabKubeApiError(f"the seeded cluster is not healthy after {timeout:g}s: still waiting for "
                                  + ", ".join(waiting))
        time.sleep(0.1)


def seed_workloads(kubeconfig: str | os.PathLike[str] | None = None, *, url: str | None = None,
                   timeout: float = 5.0, wait: float | None = WAIT_S) -> Seeded:
    """Create the objects listed in this module's docstring; returns what is where.

    Give the lab's ``kubeconfig`` (its server URL is used) or the API ``url``. Waits up to
    ``wait`` seconds until the simulator has made the cluster healthy (every workload
    available, the Flux objects Ready, a DaemonSet pod on every node) and
    :class:`~hecate_lab.kubeapi.LabKubeApiError` names what is not; ``wait=None`` returns
    at once (pods may not exist yet, and the user's Kustomization is created suspended).
    ``timeout`` bounds each HTTP request.
    """
    if url is None:
        if kubeconfig is None:
            raise LabKubeApiError("seed_workloads needs a kubeconfig or a url")
        try:
            url = api_url(kubeconfig)
        except (OSError, KeyError, StopIteration, TypeError, ValueError) as e:
            raise LabKubeApiError(f"cannot read the API URL from {kubeconfig}: {e}") from e
    api = LabApi(url, timeout)
    servers, agents = _nodes(api)
    all_nodes = servers + agents
    if not all_nodes:
        raise LabKubeApiError("the lab API lists no Nodes to place pods on")
    pin_to = (agents or all_nodes)[0]
    seeded = Seeded()

    for ns in NAMESPACES:
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    for w in WORKLOADS:
        kind = KINDS[w.kind]
        api.create(_collection(kind.api_version, kind.plural, w.namespace), workload_object(w, pin_to))
        seeded.workloads[w.ref] = w.replicas
        if w.tier == "foundation":
            seeded.foundation.append(w.ref)
        if w.lost_on_cold_start:
            seeded.lost_on_cold_start.append(w.ref)
    seeded.helm_rendered[VALKEY.ref] = VALKEY_RELEASE

    api.create(_collection("v1", "services", "gitea"), {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "gitea-http", "namespace": "gitea", "labels": GITEA.labels},
        "spec": {"type": "ClusterIP", "selector": {"app": "gitea"},
                 "ports": [{"name": "http", "port": 3000, "targetPort": 3000, "protocol": "TCP"}]},
    })

    ds_ns, ds_name = DAEMONSET
    ds_labels = {"app": ds_name, "svccontroller.k3s.cattle.io/svcname": "traefik"}
    api.create(_collection("apps/v1", "daemonsets", ds_ns), {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": ds_name, "namespace": ds_ns, "labels": ds_labels},
        "spec": {"selector": {"matchLabels": {"app": ds_name}},
                 "template": {"metadata": {"labels": ds_labels},
                              "spec": {"containers": [{"name": "lb-tcp-80", "image": "rancher/klipper-lb:v0.4.9"}]}}},
    })

    pdb_ns, pdb_name = BLOCKING_PDB
    api.create(_collection("policy/v1", "poddisruptionbudgets", pdb_ns), {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": pdb_name, "namespace": pdb_ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": pdb_name}}},
        "status": {"currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0, "expectedPods": 1},
    })

    suspend_later = False
    healthy_flux: list[str] = []
    for api_version, plural, obj in _flux_objects():
        meta = obj["metadata"]
        ref = format_ref(meta["namespace"], obj["kind"], meta["name"])
        user_suspended = (meta["namespace"], meta["name"]) == USER_SUSPENDED
        if user_suspended and wait is None:
            obj = {**obj, "spec": {**obj["spec"], "suspend": True}}
        _, created = api.create(_collection(api_version, plural, meta["namespace"]), obj)
        if obj["kind"] == "GitRepository":
            healthy_flux.append(ref)
            continue
        if user_suspended:
            seeded.flux_user_suspended.append(ref)
            suspend_later = created and wait is not None
            if suspend_later:
                healthy_flux.append(ref)
        else:
            seeded.flux_active.append(ref)
            healthy_flux.append(ref)

    if wait is not None:
        wait_healthy(api, all_nodes, healthy_flux, wait)
    if suspend_later:  # the user suspended it after Flux had applied it: its Ready status stays as it was
        ns, name = USER_SUSPENDED
        path = f"{_collection('kustomize.toolkit.fluxcd.io/v1', 'kustomizations', ns)}/{name}"
        status, data = api.request("PATCH", path, {"spec": {"suspend": True}}, "application/merge-patch+json")
        if status >= 300:
            raise LabKubeApiError(f"PATCH {path} -> {status}: {data}")

    seeded.pods_by_node = {n: [] for n in all_nodes}
    for pod in api.items("/api/v1/pods"):
        meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
        ref = f"{meta['namespace']}/{meta['name']}"
        if node is None:
            continue
        seeded.pods_by_node.setdefault(node, []).append(ref)
        owners = meta.get("ownerReferences") or []
        if any(o.get("kind") == "DaemonSet" and o.get("name") == ds_name for o in owners):
            seeded.daemonset_pods[node] = ref
        if ref == BLOCKED_POD:
            seeded.blocked_node = node
    for refs in seeded.pods_by_node.values():
        refs.sort()
    return seeded
