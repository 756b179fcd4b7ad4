"""The lab's Kubernetes API: kmock's emulator over real HTTP, plus a cluster simulator.

No kube-apiserver can run on the development machines, so the lab serves
:class:`kmock.KubernetesEmulator` (the in-memory Kubernetes emulator kopf's own test
suite uses) on a loopback port, seeded with one ``v1`` ``Node`` per lab node, and runs a
simulator in the same process (see "The cluster simulator" below) that keeps each Node's
``Ready`` condition in step with the node's ``state.json`` (see
:mod:`hecate_lab.nodestate`) -- when the sshd forced command stops k3s or powers the node
off, the Node goes NotReady within a poll interval --, gates the API on the k3s servers,
and plays the controllers of a k3s + Flux cluster.

Run it as a process::

    python -m hecate_lab.kubeapi --manifest lab-nodes.json --port 0 --kubeconfig kubeconfig

The manifest is ``{"nodes": [{"name": "n1", "role": "server", "dir": "/lab/n1"}, ...]}``
(optional per node: ``"address"``, an InternalIP; optional top level: ``"k3sVersion"``,
``"flux": false`` for a cluster without the Flux CRDs, ``"delays"`` and ``"events"``, below).
Once the server listens, a kubeconfig with the real URL is written atomically, so
``--port 0`` (any free port) is safe: the parent learns the port from the kubeconfig.
From Python, :func:`start_kubeapi` does all that and waits until ``/version`` answers
(a ``503`` of a lab whose servers are down counts as answering).

What the emulator adds on top of kmock (see :class:`LabKubernetesEmulator`):
``metadata.resourceVersion`` bumped on every create/patch (plus ``uid``,
``creationTimestamp``, ``generation``, ``generateName``); list responses carry the
current resourceVersion; watches honour ``timeoutSeconds`` and ``resourceVersion``
and end cleanly at shutdown; label and field selectors on list and watch; CRDs
created through the API become discoverable resources; a k3s ``/version``; healthz;
the ``v1`` ``namespaces`` resource itself (kmock cannot route ``/api/v1/namespaces``:
:func:`parse_namespace_path`); 404s for missing objects in the API's words
(``deployments.apps "web" not found``, reason ``NotFound``); ``201 Created`` for creates.

What a k3s + Flux cluster has that kmock's bundled resources lack: the Flux CRDs
(``Kustomization`` kustomize.toolkit.fluxcd.io/v1, ``HelmRelease`` helm.toolkit.fluxcd.io/v2,
``GitRepository`` source.toolkit.fluxcd.io/v1; namespaced, status subresource) are
installed at start as CustomResourceDefinition objects, as ``flux install`` would
(:data:`FLUX_CRDS`). apps/v1 Deployments/StatefulSets/DaemonSets, v1 Pods, policy/v1
PodDisruptionBudgets and storage.k8s.io/v1 VolumeAttachments are kmock's bundled
resources and need nothing more.

The Eviction subresource (``POST /api/v1/namespaces/{ns}/pods/{name}/eviction``, what
``kubectl drain`` and Hecate use) is emulated: the pure rule :func:`eviction_verdict`
decides from the pod, its namespace's PodDisruptionBudgets and pods; a refusal is the
real API's ``429 TooManyRequests`` Status ("Cannot evict pod as it would violate the
pod's disruption budget."), an allowed eviction deletes the pod and answers ``201``.
:mod:`hecate_lab.cluster_seed` fills the lab with workloads, a PDB and Flux objects.

The cluster simulator
---------------------

A small simulator in the same process (:class:`ClusterSimulator`, run by
:func:`run_simulator` every ``--interval`` -- 0.2 s -- and at once after any write a
client makes) makes the emulated API behave like a k3s + Flux cluster, so that a cold
start after a full power-off reproduces the Flux/Gitea bootstrap deadlock. Its rules are
the pure functions of :mod:`hecate_lab.cluster_sim` (unit tested on their own); the
loop reads the objects from the emulator's store and writes back only what changed,
through the store with a new ``resourceVersion`` and a watch event, exactly as a client's
write would (no HTTP, so the simulator's writes pass while the API is down). This is the
contract other code relies on (``delays`` come from the manifest, see below):

====  ==============================  ==================================================
1     API availability                With ``>= 1`` server node, the API serves only while a
                                      majority (more than half) of the servers run k3s
                                      (:func:`~hecate_lab.nodestate.k3s_running`), and only
                                      ``delays.api`` s after that became true. While not,
                                      **every** HTTP request (``/version`` and discovery too)
                                      answers ``503`` with a Status, reason
                                      ``ServiceUnavailable``, message e.g. "lab API down: 0 of
                                      3 k3s servers running (quorum needs 2)", and open
                                      watches end. No servers: always serving. A lab whose
                                      servers run when the process starts serves at once.
                                      While the API is down the controllers (rules 4, 5)
                                      stand still; Nodes keep following their nodes.
2     Cold start                      When the API serves again after having been down, it
                                      first deletes every object annotated
                                      ``lab.hecate.io/lost-on-cold-start: "true"``, what it
                                      owns (ReplicaSets, pods) and the pods it selects. This
                                      is the lab's chosen, explicit cause for what a real
                                      outage loses -- e.g. a component helm-controller's
                                      remediation uninstalled after its install timed out
                                      against a half-started cluster. Then the controllers
                                      run once, then the API serves.
3     Nodes                           Ready iff the node's k3s runs, but ``True`` only
                                      ``delays.node`` s after it started (until then
                                      ``False``, reason ``KubeletNotReady``).
4     Workloads                       apps/v1 Deployments and StatefulSets get
                                      ``spec.replicas`` pods, DaemonSets one per Node.
                                      Deployment pods ``<name>-<hash>-<5 chars>`` are owned by
                                      the Deployment's one ReplicaSet ``<name>-<hash>``,
                                      StatefulSet pods are ``<name>-<i>``. New pods go to a
                                      schedulable node (Ready, not cordoned, matching the
                                      template's ``nodeSelector``), spread round-robin; none:
                                      the pod is Pending without ``nodeName`` and placed
                                      later. Surplus pods are deleted (scale down); a deleted
                                      or evicted pod is replaced by a fresh one. A pod is
                                      Ready (phase ``Running``, condition Ready ``True``) iff
                                      its node is Ready, it is not annotated
                                      ``lab.hecate.io/stuck: "true"``, every workload in its
                                      workload's ``lab.hecate.io/depends-on:
                                      "ns/kind/name,..."`` (kind deployment, statefulset or
                                      daemonset) is available, and all that has held for
                                      ``delays.pod`` s. Pods on NotReady nodes stay (no
                                      eviction), not Ready. Workload status is kept true:
                                      ``replicas``, ``readyReplicas``, ``availableReplicas``,
                                      ``updatedReplicas``, ``observedGeneration`` and condition
                                      ``Available`` (DaemonSets: ``desiredNumberScheduled``,
                                      ``numberReady``, ``numberAvailable``). *Available* means
                                      the workload exists and ``readyReplicas >=
                                      spec.replicas``. Pods (and ReplicaSets) whose owner is
                                      gone are deleted. Pods no workload owns are left alone;
                                      template changes are not rolled out.
5     Flux                            GitRepository Ready iff not suspended, the workload its
                                      ``lab.hecate.io/served-by`` names is available (no
                                      annotation: an outside server, always reachable) and
                                      ``spec.ref.branch`` is in ``lab.hecate.io/branches`` (no
                                      annotation: any); Ready sets ``status.artifact.revision``
                                      ``<branch>@sha1:<hash>``; otherwise Ready ``False``,
                                      reason ``GitOperationFailed`` with Flux's message
                                      ("failed to checkout and determine revision: unable to
                                      clone '<url>': dial tcp <host>:<port>: connect:
                                      connection refused", or "... couldn't find remote ref
                                      \"refs/heads/<branch>\"") -- a suspended one: reason
                                      ``Suspended``. Kustomizations and HelmReleases keep
                                      their status as it was while ``spec.suspend`` is true;
                                      otherwise Ready follows their source
                                      (``spec.sourceRef`` / ``spec.chart.spec.sourceRef``,
                                      namespace defaulting to their own; a HelmRepository is
                                      outside the cluster, always Ready), else Ready
                                      ``False``, reason ``ArtifactFailed``, "Source artifact
                                      not found, retrying in 30s". A handled
                                      ``reconcile.fluxcd.io/requestedAt`` is echoed in
                                      ``status.lastHandledReconcileAt``. A not suspended,
                                      Ready Kustomization/HelmRelease (re)creates the objects
                                      of its ``lab.hecate.io/renders`` (a JSON list of
                                      manifests) that are missing -- creation only.
6     Timeline                        API up/down (with the reason), cold-start deletions,
                                      workloads becoming available/unavailable, Flux Ready
                                      transitions and re-created renders are appended as JSON
                                      lines ``{"t", "source", "object", "message"}`` (``t``:
                                      wall-clock seconds) to the events file, which
                                      ``hecate lab timeline`` merges.
====  ==============================  ==================================================

The manifest is ``{"nodes": [...], "delays": {"api": 1.0, "node": 0.5, "pod": 0.5},
"events": "/lab/kube/events.jsonl"}`` (both optional: those are the default delays, and
the events file defaults to ``events.jsonl`` next to the kubeconfig).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import http.client
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import attrs
import kmock
import yaml

from hecate_lab import cluster_sim as sim
from hecate_lab.cluster_sim import Delays, match_selector_object
from hecate_lab.nodestate import k3s_running, read_state
from hecate_lab.procs import LabError

log = logging.getLogger("hecate_lab.kubeapi")

DEFAULT_K3S_VERSION = "v1.31.4+k3s1"
NODES = kmock.resource("", "v1", "nodes")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
PODS = kmock.resource("", "v1", "pods")
PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
DAEMONSETS = kmock.resource("apps", "v1", "daemonsets")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
GITREPOSITORIES = kmock.resource("source.toolkit.fluxcd.io", "v1", "gitrepositories")
KUSTOMIZATIONS = kmock.resource("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELMRELEASES = kmock.resource("helm.toolkit.fluxcd.io", "v2", "helmreleases")
WORKLOAD_RESOURCES = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS, "DaemonSet": DAEMONSETS}
POLL_INTERVAL = 0.2  # seconds between two reads of every node's state.json
HEARTBEAT_PERIOD = dt.timedelta(seconds=10)  # how often a running "kubelet" refreshes Ready
HISTORY_LIMIT = 100  # object versions kmock keeps per object (it would keep all otherwise)
CRUD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

READY_REASON = "KubeletReady"
READY_MESSAGE = "kubelet is posting ready status"
NOT_READY_REASON = "NodeStatusUnknown"
NOT_READY_MESSAGE = "Kubelet stopped posting node status."
STARTING_REASON = "KubeletNotReady"
STARTING_MESSAGE = "container runtime status check may not have completed yet"
EVENTS_FILE = "events.jsonl"


class LabKubeApiError(LabError):
    """The lab's Kubernetes API could not be started or configured; the message says why."""


# -- time ----------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 with whole seconds, as the Kubernetes API writes timestamps."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


# -- the rule: a node's Ready condition from its state.json ---------------------------------


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
    with the node controller's reason (a real cluster would say ``"Unknown"`` after a
    40 s grace period; the lab flips at once). ``ready=False`` holds a running node
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


# -- the manifest and the Node objects ------------------------------------------------------


@dataclass(frozen=True)
class LabNode:
    name: str
    role: str  # "server" | "agent"
    dir: Path
    address: str | None = None


@dataclass(frozen=True)
class LabManifest:
    nodes: tuple[LabNode, ...]
    k3s_version: str = DEFAULT_K3S_VERSION
    flux: bool = True  # install the Flux CRDs at start
    delays: Delays = field(default_factory=Delays)
    events: Path | None = None  # the simulator's events file; None: next to the kubeconfig


def parse_manifest(data: Mapping[str, Any]) -> LabManifest:
    nodes_data = data.get("nodes")
    if not isinstance(nodes_data, list):
        raise LabKubeApiError('the manifest needs a "nodes" list')
    nodes: list[LabNode] = []
    for item in nodes_data:
        if not isinstance(item, Mapping) or not all(isinstance(item.get(k), str) for k in ("name", "dir")):
            raise LabKubeApiError(f"a manifest node needs a name and a dir: {item!r}")
        if item.get("role") not in ("server", "agent"):
            raise LabKubeApiError(
                f"node {item['name']!r}: role must be server or agent, not {item.get('role')!r}")
        nodes.append(LabNode(name=item["name"], role=item["role"], dir=Path(item["dir"]),
                             address=item.get("address")))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise LabKubeApiError(f"duplicate node names in the manifest: {names}")
    flux = data.get("flux", True)
    if not isinstance(flux, bool):
        raise LabKubeApiError(f'"flux" must be true or false, not {flux!r}')
    try:
        delays = Delays.parse(data.get("delays"))
    except ValueError as e:
        raise LabKubeApiError(f"the manifest's delays: {e}") from e
    events = data.get("events")
    if events is not None and not isinstance(events, str):
        raise LabKubeApiError(f'"events" must be a file path, not {events!r}')
    return LabManifest(nodes=tuple(nodes), k3s_version=str(data.get("k3sVersion") or DEFAULT_K3S_VERSION),
                       flux=flux, delays=delays, events=Path(events) if events else None)


def load_manifest(path: str | os.PathLike[str]) -> LabManifest:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise LabKubeApiError(f"cannot read the manifest {path}: {e}") from e
    if not isinstance(data, Mapping):
        raise LabKubeApiError(f"the manifest {path} is not a JSON object")
    return parse_manifest(data)


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


# -- label and field selectors --------------------------------------------------------------


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    terms: list[str] = []
    depth, current = 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    terms.append(current.strip())
    return [t for t in terms if t]


_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_EQ_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)$")
_KEY_TERM = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def match_label_selector(labels: Mapping[str, str] | None, selector: str | None) -> bool:
    """Whether the labels satisfy a Kubernetes label selector string; ValueError if malformed."""
    labels = labels or {}
    for term in _split_selector(selector or ""):
        if m := _SET_TERM.match(term):
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            inside = labels.get(m["key"]) in values
            if inside != (m["op"] == "in"):
                return False
        elif m := _EQ_TERM.match(term):
            equal = m["key"] in labels and labels[m["key"]] == m["value"]
            if equal != (m["op"] != "!="):
                return False
        elif m := _KEY_TERM.match(term):
            if (m["key"] in labels) == bool(m["neg"]):
                return False
        else:
            raise ValueError(f"invalid label selector term: {term!r}")
    return True


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def match_field_selector(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Whether the object satisfies a field selector (``a.b=v``, ``a.b==v``, ``a.b!=v``)."""
    for term in _split_selector(selector or ""):
        m = _EQ_TERM.match(term)
        if not m:
            raise ValueError(f"invalid field selector term: {term!r}")
        equal = _field_value(obj, m["key"]) == m["value"]
        if equal != (m["op"] != "!="):
            return False
    return True


# -- CRDs -----------------------------------------------------------------------------------


def register_crd(emulator: kmock.KubernetesScaffold, crd: Mapping[str, Any]) -> list[kmock.resource]:
    """Make a CustomResourceDefinition's served versions known to kmock's discovery.

    Returns the resources registered. :class:`LabKubernetesEmulator` calls this when a
    CRD is created through the API; in-process users (e.g. a ``kmock`` fixture) can call
    it directly with a parsed CRD manifest.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        raise ValueError("a CRD needs spec.group, spec.names.plural and spec.names.kind")
    registered = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        res = kmock.resource(group, version["name"], plural)
        emulator.resources[res] = kmock.ResourceInfo(
            kind=kind,
            singular=names.get("singular") or kind.lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            shortnames=names.get("shortNames") or [],
            categories=names.get("categories") or [],
            verbs=CRUD_VERBS,
            subresources=list((version.get("subresources") or {}).keys()),
        )
        registered.append(res)
    return registered


def _established_crd_status(crd: Mapping[str, Any], now: str) -> dict[str, Any]:
    spec = crd.get("spec") or {}
    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    return {
        "acceptedNames": spec.get("names") or {},
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    }


def _flux_crd(group: str, version: str, kind: str, plural: str, short_names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}",
                     "labels": {"app.kubernetes.io/part-of": "flux", "app.kubernetes.io/instance": "flux-system"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List",
                      "shortNames": short_names},
            "versions": [{
                "name": version, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }],
        },
    }


FLUX_CRDS: tuple[dict[str, Any], ...] = (
    _flux_crd("source.toolkit.fluxcd.io", "v1", "GitRepository", "gitrepositories", ["gitrepo"]),
    _flux_crd("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations", ["ks"]),
    _flux_crd("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases", ["hr"]),
)
"""The Flux CRDs the lab installs at start (one served version each: the GA one)."""


# -- the rule: may a pod be evicted (PodDisruptionBudgets) -----------------------------------

EVICTION_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."
MULTIPLE_BUDGETS = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class EvictionVerdict:
    """What the API answers to an eviction: ``code`` 201 (allowed), 429 (budget) or 500."""

    allowed: bool
    code: int
    message: str = ""
    budget: str | None = None  # the PodDisruptionBudget that decided, if any
    cause: str | None = None  # the DisruptionBudget cause, as the real API words it


def scaled_value(value: int | str, total: int) -> int:
    """An int-or-percent (``2``, ``"50%"``) against ``total``, percentages rounded up (as k8s)."""
    if isinstance(value, str) and value.endswith("%"):
        percent = int(value[:-1])
        return -(-percent * total // 100)
    return int(value)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) \
        or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def eviction_verdict(pod: Mapping[str, Any], budgets: Iterable[Mapping[str, Any]],
                     pods: Iterable[Mapping[str, Any]]) -> EvictionVerdict:
    """May ``pod`` be evicted, given its namespace's PodDisruptionBudgets and pods?

    Pure; a simplified version of the API server's rule. A pod that is already being
    deleted or has finished (``Succeeded``/``Failed``) may always go. Otherwise the
    budgets whose selector matches the pod's labels apply: none -- allowed; more than
    one -- refused with 500, as the real API does. With one, its *healthy* pods are the
    pods it selects that are neither being deleted nor finished, and the eviction is
    allowed when ``healthy - 1 >= desired``, where ``desired`` is ``minAvailable``, or
    ``selected - maxUnavailable`` (percentages of the selected pods, rounded up), or 0
    when the budget sets neither. Refusals answer 429 with the real API's message.
    """
    if _terminating(pod):
        return EvictionVerdict(allowed=True, code=201)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    matching = [b for b in budgets if not (b.get("metadata") or {}).get("deletionTimestamp")
                and match_selector_object((b.get("spec") or {}).get("selector"), labels)]
    if not matching:
        return EvictionVerdict(allowed=True, code=201)
    if len(matching) > 1:
        return EvictionVerdict(allowed=False, code=500, message=MULTIPLE_BUDGETS)
    budget = matching[0]
    name = str((budget.get("metadata") or {}).get("name"))
    spec = budget.get("spec") or {}
    selected = [p for p in pods if match_selector_object(spec.get("selector"),
                                                         (p.get("metadata") or {}).get("labels"))]
    healthy = sum(1 for p in selected if not _terminating(p))
    if spec.get("minAvailable") is not None:
        desired = scaled_value(spec["minAvailable"], len(selected))
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, len(selected) - scaled_value(spec["maxUnavailable"], len(selected)))
    else:
        desired = 0
    if healthy - 1 >= desired:
        return EvictionVerdict(allowed=True, code=201, budget=name)
    return EvictionVerdict(
        allowed=False, code=429, message=EVICTION_REFUSED, budget=name,
        cause=f"The disruption budget {name} needs {desired} healthy pods and has {healthy} currently")


def status_body(code: int, message: str, reason: str, *, details: Mapping[str, Any] | None = None,
                success: bool = False) -> dict[str, Any]:
    """A v1 ``Status`` as the API server writes it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success" if success else "Failure", "code": code}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = dict(details)
    return body


# -- the emulator ---------------------------------------------------------------------------

_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def parse_namespace_path(path: str) -> Any:
    """kmock's URL parser, fixed for the ``v1`` ``namespaces`` resource itself.

    kmock 0.8 reads ``/api/v1/namespaces/X/...`` as "inside namespace X" only, so
    ``/api/v1/namespaces`` fails (a 500) and ``/api/v1/namespaces/X`` is no object URL.
    Those two, and ``/api/v1/namespaces/X/status|finalize``, are the Namespace objects.
    """
    from kmock._internal import parsing  # kmock's private parser, wrapped below

    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) in (3, 4) or (len(parts) == 5 and parts[4] in _NAMESPACE_SUBRESOURCES)):
        return parsing.ParsedPath(group="", version="v1", plural="namespaces",
                                  name=parts[3] if len(parts) > 3 else None,
                                  subresource=parts[4] if len(parts) > 4 else None)
    return _kmock_parse_path(path)


def _install_namespace_parser() -> None:
    global _kmock_parse_path
    from kmock._internal import parsing

    if parsing.parse_path is not parse_namespace_path:
        _kmock_parse_path = parsing.parse_path
        parsing.parse_path = parse_namespace_path


_kmock_parse_path: Any = None
_install_namespace_parser()



def _resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


@attrs.define(kw_only=True)
class LabKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the bits the kubernetes client and kopf rely on.

    kmock 0.8 stores objects as plain JSON and merges patches; it does not bump
    ``resourceVersion``, ignores ``timeoutSeconds``/``resourceVersion``/selectors on
    watches and lists, and reports k3s 1.26. This subclass fills those gaps while keeping
    kmock's own request path, so kmock's object store, history and watch bus stay the
    single source of truth (``emulator.objects[...]`` still works for assertions).
    """

    server_version: str = DEFAULT_K3S_VERSION
    history_limit: int = HISTORY_LIMIT
    _last_rv: int = attrs.field(default=0, init=False)
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    # The API gate (rule 1): while not available, every request answers 503 with this message.
    available: bool = attrs.field(default=True, init=False)
    unavailable_message: str = attrs.field(default="", init=False)
    _outage: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)  # set while down: watches end
    changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    """Set on every write a client makes (the simulator wakes up at once)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for path in ("/healthz", "/livez", "/readyz"):
            self.fallback[f"get {path}"] << b"ok"
        # The kubernetes client asks for discovery with a trailing slash (/version/, /api/v1/);
        # kmock answers only the bare paths. Slightly above the fallbacks, or LIST would win.
        self.fallback["get /version/"] << self._serve_server_version
        discovery = self.fallback ** 1
        discovery["get", re.compile(r"/apis/[^/]+/[^/]+/")] << self._serve_version
        discovery["get", re.compile(r"/apis/[^/]+/")] << self._serve_group
        discovery["get", re.compile(r"/api/[^/]+/")] << self._serve_version
        discovery["get /apis/"] << self._serve_apis
        discovery["get /api/"] << self._serve_api

    # -- resource versions and server-set metadata --

    def next_resource_version(self) -> str:
        self._last_rv += 1
        return str(self._last_rv)

    @property
    def resource_version(self) -> str:
        return str(self._last_rv)

    def seed(self, res: kmock.resource, obj: Mapping[str, Any]) -> None:
        """Store an object directly (no watch event), with the metadata the API would set."""
        body = self._prepare_create(res, None, obj)
        meta = body["metadata"]
        self.objects[res, meta.get("namespace"), meta["name"]] = body

    def stored(
        self, res: kmock.resource | None, namespace: str | None, name: str | None,
    ) -> kmock.Object | None:
        """The stored object (kmock's versioned view), or None if absent or deleted."""
        if res is None or name is None or (res, namespace, name) not in self.objects:
            return None
        obj = self.objects[res, namespace, name]
        return None if obj.deleted else obj

    def _prepare_create(self, res: kmock.resource, namespace: str | None,
                        data: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(data))
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if namespace and not meta.get("namespace"):
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", format_time(utcnow()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self.next_resource_version()
        body.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else res.version)
        if res in self.resources and self.resources[res].kind:
            body.setdefault("kind", self.resources[res].kind)
        if res == CRDS and "status" not in body:
            body["status"] = _established_crd_status(body, meta["creationTimestamp"])
        return body

    def _prepare_update(self, request: kmock.Request) -> Any:
        return self._prepare_patch(request.resource, request.namespace, request.name, request.data,
                                   subresource=request.subresource)

    def _prepare_patch(self, res: kmock.resource | None, namespace: str | None, name: str | None, data: Any,
                       *, subresource: str | None = None) -> Any:
        rv = self.next_resource_version()
        if isinstance(data, list):  # a JSON patch
            return [*data, {"op": "add", "path": "/metadata/resourceVersion", "value": rv}]
        if not isinstance(data, Mapping):
            return data
        body = copy.deepcopy(dict(data))
        meta = dict(body.get("metadata") or {})
        meta["resourceVersion"] = rv
        current = self.stored(res, namespace, name)
        if "spec" in body and not subresource and current is not None:
            generation = current.get("metadata", {}).get("generation")
            if isinstance(generation, int):
                meta["generation"] = generation + 1
        body["metadata"] = meta
        return body

    def _trim_history(self, obj: kmock.Object) -> None:
        if len(obj.history) > self.history_limit:
            del obj.history[: -self.history_limit]

    # -- the API gate (rule 1) and the simulator's own writes --

    def set_available(self, available: bool, message: str = "") -> None:
        """Open or close the gate; closing it ends every open watch (the server "went away")."""
        self.unavailable_message = message
        if available == self.available:
            return
        self.available = available
        if available:
            self._outage = asyncio.Event()
        else:
            self._outage.set()

    def live(self, res: kmock.resource) -> list[dict[str, Any]]:
        """A snapshot of the live objects of one resource (raw dicts, not to be mutated)."""
        return [obj.raw for (r, _, _), obj in list(self.objects.items()) if r == res and not obj.deleted]

    def live_all(self) -> list[tuple[kmock.resource, dict[str, Any]]]:
        return [(r, obj.raw) for (r, _, _), obj in list(self.objects.items()) if not obj.deleted]

    def resource_for(self, api_version: str, kind: str) -> kmock.resource | None:
        """The served resource of an ``apiVersion`` + ``kind`` (e.g. ``apps/v1`` Deployment)."""
        group, _, version = api_version.rpartition("/")
        for res in list(self.resources):
            if isinstance(res, kmock.resource) and res.group == group and res.version == version \
                    and self.resources[res].kind == kind:
                return res
        return None

    async def internal_create(self, res: kmock.resource, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create an object as a client's POST would (server metadata, ADDED event); None if it exists."""
        async with self._lock:
            body = self._prepare_create(res, None, data)
            meta = body["metadata"]
            key = (res, meta.get("namespace"), meta["name"])
            if key in self.objects:
                if not self.objects[key].deleted:
                    return None
                self.objects[key].create(body)
            else:
                self.objects[key] = body
            obj = self.objects[key]
            self._trim_history(obj)
            await self._buses[res].put({"type": "ADDED", "object": obj.raw})
            return obj.raw

    async def internal_patch(self, res: kmock.resource, namespace: str | None, name: str,
                             patch: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any] | None:
        """Merge-patch an object as a client's PATCH would (new resourceVersion, MODIFIED event)."""
        async with self._lock:
            obj = self.stored(res, namespace, name)
            if obj is None:
                return None
            obj.patch(self._prepare_patch(res, namespace, name, patch, subresource=subresource))
            self._trim_history(obj)
            await self._buses[res].put({"type": "MODIFIED", "object": obj.raw})
            return obj.raw

    async def internal_delete(self, res: kmock.resource, namespace: str | None, name: str) -> bool:
        """Delete an object as a client's DELETE would; False if it was not there."""
        async with self._lock:
            if self.stored(res, namespace, name) is None:
                return False
            await self._delete_locked(res, namespace, name)
            return True

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if not self.available:
            body = status_body(503, self.unavailable_message or "lab API down", "ServiceUnavailable")
            # No Retry-After: urllib3 (the kubernetes client) would silently retry 503s that carry one.
            return aiohttp.web.json_response(body, status=503)
        if request.resource == PODS and request.subresource == "eviction" and request.name is not None:
            return await self._serve_eviction(request)
        # kmock matches reactions to requests by identity, so the (frozen) request is amended in
        # place rather than evolved; the amended body is what kmock stores and broadcasts.
        res = request.resource
        if res is not None and request.action == kmock.action.CREATE and isinstance(request.data, Mapping):
            object.__setattr__(request, "data", self._prepare_create(res, request.namespace, request.data))
        elif res is not None and request.action == kmock.action.UPDATE and request.name is not None:
            object.__setattr__(request, "data", self._prepare_update(request))

        try:
            response = await super()._handle(request)
        except kmock.KubernetesObjectNotFoundError as e:  # kmock's wording names kmock, not the object
            raise self._not_found(request) from e

        if res is not None and request.action == kmock.action.CREATE and response.status == 200 \
                and not response.prepared:
            response.set_status(201)  # "201 Created", as the API server answers a create
        if res is not None and response.status < 400:
            if request.action == kmock.action.CREATE and res == CRDS:
                try:
                    registered = register_crd(self, request.data)
                    log.info("CRD %s registered: %s", request.data["metadata"]["name"], registered)
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("CRD not registered: %s", e)
            current = self.stored(res, request.namespace, request.name)
            if request.action == kmock.action.UPDATE and current is not None:
                self._trim_history(current)
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
                self.changed.set()
        return response

    @staticmethod
    def _not_found(request: kmock.Request) -> kmock.KubernetesError:
        """The real API's 404 for a missing object: ``deployments.apps "web" not found``."""
        res = request.resource
        plural = (res.plural if res is not None else None) or "objects"
        group = (res.group if res is not None else None) or ""
        what = f"{plural}.{group}" if group else plural
        return kmock.KubernetesError(status=404, reason="NotFound", message=f'{what} "{request.name}" not found',
                                     details={"name": request.name, "group": group, "kind": plural})

    # -- the Eviction subresource --

    async def _serve_eviction(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """``POST .../pods/{name}/eviction``: :func:`eviction_verdict`, then delete the pod."""
        namespace, name = request.namespace, cast(str, request.name)
        if request.method != kmock.method.POST:
            body = status_body(405, f"the server does not allow this method on pods/eviction: {request.method}",
                               "MethodNotAllowed")
            return aiohttp.web.json_response(body, status=405)
        async with self._lock:
            pod = self.stored(PODS, namespace, name)
            if pod is None:
                body = status_body(404, f'pods "{name}" not found', "NotFound",
                                   details={"name": name, "kind": "pods"})
                return aiohttp.web.json_response(body, status=404)
            live = [(r, ns, obj) for (r, ns, _), obj in self.objects.items() if ns == namespace and not obj.deleted]
            verdict = eviction_verdict(pod.raw, [obj.raw for r, _, obj in live if r == PDBS],
                                       [obj.raw for r, _, obj in live if r == PODS])
            if not verdict.allowed:
                log.info("eviction of pod %s/%s refused (%d): %s", namespace, name, verdict.code,
                         verdict.cause or verdict.message)
                details: dict[str, Any] = {}
                if verdict.cause:
                    details = {"causes": [{"reason": "DisruptionBudget", "message": verdict.cause}]}
                reason = "TooManyRequests" if verdict.code == 429 else "InternalError"
                return aiohttp.web.json_response(
                    status_body(verdict.code, verdict.message, reason, details=details), status=verdict.code)
            if request.params.get("dryRun") != "All":
                await self._delete_locked(PODS, namespace, name)
                self.changed.set()
                log.info("pod %s/%s evicted", namespace, name)
        return aiohttp.web.json_response(status_body(201, "", "", success=True), status=201)

    async def _delete_locked(self, res: kmock.resource, namespace: str | None, name: str) -> None:
        """Delete a stored object as kmock's DELETE does (finalizers honoured); hold ``_lock``."""
        obj = self.objects[res, namespace, name]
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return
        if obj.get("metadata", {}).get("finalizers"):
            obj.patch({"metadata": {"deletionTimestamp": format_time(utcnow()),
                                    "resourceVersion": self.next_resource_version()}})
            await self._buses[res].put({"type": "MODIFIED", "object": obj.raw})
            return
        obj.patch({"metadata": {"resourceVersion": self.next_resource_version()}})
        obj.delete()
        await self._buses[res].put({"type": "DELETED", "object": obj.last.raw})

    # -- serving --

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and result.get("groupVersion") == "/v1":
            result["groupVersion"] = "v1"  # kmock writes "/v1" for the core group
        return result

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        m = re.match(r"v(\d+)\.(\d+)", self.server_version)
        major, minor = (m.group(1), m.group(2)) if m else ("1", "31")
        return {
            "major": major, "minor": minor, "gitVersion": self.server_version,
            "gitCommit": "hecate-lab", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.22.9", "compiler": "gc", "platform": "linux/amd64",
        }

    @staticmethod
    def _selected(request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        try:
            return match_label_selector(obj.get("metadata", {}).get("labels"),
                                        request.params.get("labelSelector")) \
                and match_field_selector(obj, request.params.get("fieldSelector"))
        except ValueError as e:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(e)) from e

    def _known(self, res: kmock.resource | None) -> bool:
        return res is not None and any(r == res for r in self._get_resources())

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        result = cast(dict[str, Any], await super()._serve_list(request))
        res = cast(kmock.resource, request.resource)
        items = [obj for obj in result.get("items", []) if self._selected(request, obj)]
        kind = self.resources[res].kind if res in self.resources else None
        return {
            "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
            "kind": f"{kind}List" if kind else "List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        res = request.resource
        if res is None or not self._known(res):
            raise kmock.KubernetesResourceNotFoundError()
        self._selected(request, {})  # reject a malformed selector before streaming
        loop = asyncio.get_running_loop()
        try:
            timeout = float(request.params.get("timeoutSeconds") or 0)
        except ValueError:
            timeout = 0
        deadline = loop.time() + timeout if timeout > 0 else None
        rv_param = request.params.get("resourceVersion") or "0"
        since = int(rv_param) if rv_param.isdigit() else 0  # "0"/absent: replay everything as ADDED

        def wanted(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (request.namespace is None or meta.get("namespace") == request.namespace) \
                and (request.name is None or meta.get("name") == request.name) \
                and self._selected(request, obj)

        bus = self._buses[res]
        mark = await bus.mark()  # before the snapshot: nothing falls between the two
        events = cast(AsyncGenerator[Any, None], bus.stream(since=mark))
        outage = self._outage
        closing = asyncio.ensure_future(self._watch_over(outage))
        pending: asyncio.Task[Any] | None = None
        try:
            yield b""  # send the headers now: the client sees the watch established
            async with self._lock:
                snapshot = [obj.raw for (r, _, _), obj in self.objects.items()
                            if r == res and not obj.deleted]
            for raw in snapshot:
                if wanted(raw) and (since == 0 or _resource_version(raw) > since):
                    yield {"type": "ADDED", "object": raw}
            while not self._closing.is_set() and not outage.is_set():
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                pending = asyncio.ensure_future(_anext(events))
                done, _ = await asyncio.wait({pending, closing}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if pending not in done:
                    break
                event = pending.result()
                pending = None
                obj = event.get("object", {}) if isinstance(event, Mapping) else {}
                if wanted(obj):  # live events are all newer than the watch: no resourceVersion filter
                    yield event
        finally:
            closing.cancel()
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await events.aclose()
            await bus.unmark(mark)

    async def _watch_over(self, outage: asyncio.Event) -> None:
        """Until the server stops or the API goes down."""
        waits = {asyncio.ensure_future(self._closing.wait()), asyncio.ensure_future(outage.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def close_watches(self) -> None:
        """End every open watch stream cleanly (as if its timeout had passed)."""
        self._closing.set()


async def _anext(iterator: AsyncIterator[Any]) -> Any:
    return await iterator.__anext__()


# -- the simulator --------------------------------------------------------------------------


def build_emulator(manifest: LabManifest, now: dt.datetime | None = None) -> LabKubernetesEmulator:
    """The emulator with k3s's builtin resources and one Node per lab node."""
    now = now or utcnow()
    emulator = LabKubernetesEmulator(server_version=manifest.k3s_version)
    emulator.resources.load_bundled()
    if manifest.flux:
        for crd in FLUX_CRDS:
            emulator.seed(CRDS, crd)
            register_crd(emulator, crd)
    for index, node in enumerate(manifest.nodes):
        ready = node_ready_condition(read_node_state(node) or {}, None, now)
        emulator.seed(NODES, node_object(node, ready, k3s_version=manifest.k3s_version, index=index))
    return emulator


async def sync_node(emulator: LabKubernetesEmulator, node: LabNode, now: dt.datetime,
                    heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD, *, ready: bool | None = None,
                    state: Mapping[str, Any] | None = None) -> bool:
    """One simulator step for one node; True when the Node was written.

    ``ready=False`` holds a running node NotReady (rule 3's delay); ``state`` is the
    node's state.json when the caller has read it already. The write goes to the
    emulator's store as a client's merge patch of the ``status`` subresource would (a
    kubelet's post): new resourceVersion, history, a MODIFIED watch event.
    """
    state = dict(state) if state is not None else read_node_state(node)
    stored = emulator.stored(NODES, None, node.name)
    if state is None or stored is None:  # the Node was deleted: k3s would re-register, the lab does not
        return False
    current = stored.raw
    conditions = list(current.get("status", {}).get("conditions") or [])
    previous = next((c for c in conditions if c.get("type") == "Ready"), None)
    condition = node_ready_condition(state, previous, now, heartbeat_period=heartbeat_period, ready=ready)
    if condition == previous:
        return False
    if previous is None:
        conditions.append(condition)
    else:
        conditions = [condition if c.get("type") == "Ready" else c for c in conditions]
    if previous is None or previous.get("status") != condition["status"]:
        log.info("node %s: Ready=%s (%s)", node.name, condition["status"], condition["reason"])
    await emulator.internal_patch(NODES, None, node.name, {"status": {"conditions": conditions}},
                                  subresource="status")
    return True


class EventLog:
    """The simulator's timeline: JSON lines ``{"t", "source", "object", "message"}`` in a file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failed = False

    def emit(self, source: str, message: str, obj: str | None = None) -> None:
        log.info("%s: %s%s", source, f"{obj}: " if obj else "", message)
        if self.path is None:
            return
        record: dict[str, Any] = {"t": round(time.time(), 6), "source": source}
        if obj:
            record["object"] = obj
        record["message"] = message
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:
            if not self._failed:
                log.warning("cannot append to the events file %s: %s", self.path, e)
            self._failed = True


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events the simulator appended (an absent file: none; a torn last line is skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("t"), int | float):
                events.append(event)
    return events


def _pod_key(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))


class ClusterSimulator:
    """Applies the rules of :mod:`hecate_lab.cluster_sim` to the emulator, one :meth:`step` at a time.

    It keeps in memory only what the objects cannot say: since when each node's k3s has
    run, since when each pod's inputs have held, the API's state, and the last reported
    availability of each workload and Flux object (for the timeline).
    """

    CONTROLLER_ROUNDS = 3  # passes per step while the previous one wrote something

    def __init__(self, emulator: LabKubernetesEmulator, manifest: LabManifest, events: EventLog, *,
                 heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD) -> None:
        self.emulator = emulator
        self.nodes = manifest.nodes
        self.delays = manifest.delays
        self.events = events
        self.heartbeat_period = heartbeat_period
        self.servers = [n for n in manifest.nodes if n.role == "server"]
        self.running_since: dict[str, float | None] = {}
        self.api: sim.ApiState | None = None
        self.pod_since: dict[tuple[str, str, str], float] = {}
        self.workload_up: dict[sim.ObjRef, bool] = {}
        self.flux_ready: dict[sim.ObjRef, tuple[str, str]] = {}
        self.unreadable: set[str] = set()
        self.warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning("%s", message)

    async def step(self) -> float | None:
        """Nodes, then the API gate (and a cold start), then the controllers; the seconds
        until a delay runs out (when the next step is due at the latest), or None."""
        now = time.time()
        due: list[float] = []
        states: dict[str, dict[str, Any] | None] = {}
        first = self.api is None
        for node in self.nodes:
            state = states[node.name] = read_node_state(node)
            if state is None:
                if node.name not in self.unreadable:
                    log.warning("node %s: %s/state.json is missing or unreadable", node.name, node.dir)
                    self.unreadable.add(node.name)
                continue
            self.unreadable.discard(node.name)
            running = k3s_running(state)
            if first or node.name not in self.running_since:
                since = -math.inf if running else None  # running when the simulator starts: long since
            else:
                since = sim.held_since(running, self.running_since[node.name], now)
            self.running_since[node.name] = since
            ready = sim.node_ready(running, since, now, self.delays.node)
            if (wait := sim.due_in(since, now, self.delays.node)) is not None:
                due.append(wait)
            try:
                await sync_node(self.emulator, node, dt.datetime.fromtimestamp(now, tz=dt.UTC),
                                self.heartbeat_period, ready=ready, state=state)
            except (LabKubeApiError, OSError) as e:
                log.warning("node %s: cannot update the Node: %s", node.name, e)

        running_servers = sum(1 for n in self.servers if (st := states.get(n.name)) and k3s_running(st))
        api = sim.api_state(self.api, running_servers, len(self.servers), now, self.delays.api)
        was = self.api
        self.api = api
        if not api.available:
            if was is None or was.available:
                self.events.emit("api", api.message)
                self.pod_since.clear()  # nobody watches the pods while the API is down
            self.emulator.set_available(False, api.message)
            if api.quorum_since is not None:
                due.append(api.quorum_since + self.delays.api - now)
            return min(due) if due else None
        if was is not None and not was.available:
            await self.cold_start()
        await self.controllers(now, due)
        if was is None or not was.available:
            self.events.emit("api", f"lab API serving: {running_servers} of {len(self.servers)} "
                                    f"k3s servers running")
        self.emulator.set_available(True)
        return min(due) if due else None

    async def cold_start(self) -> None:
        """Rule 2: delete what the outage lost, before the API serves again."""
        objects = self.emulator.live_all()
        resource = {sim.ref_of(raw): res for res, raw in objects}
        annotated = {sim.ref_of(raw) for _, raw in objects
                     if sim.is_true(sim.annotations_of(raw).get(sim.LOST_ON_COLD_START))}
        victims = sim.cold_start_victims([raw for _, raw in objects])
        dependents: list[str] = []
        for ref in victims:
            _, namespace, name = ref
            if not await self.emulator.internal_delete(resource[ref], namespace, name):
                continue
            if ref in annotated:
                self.events.emit("cold-start", f"lost in the outage (annotated {sim.LOST_ON_COLD_START}): deleted",
                                 sim.ref_text(ref))
            else:
                dependents.append(sim.ref_text(ref))
        if dependents:
            self.events.emit("cold-start", "deleted with what it belongs to: " + ", ".join(dependents))
        if not victims:
            self.events.emit("cold-start", f"cold start: nothing annotated {sim.LOST_ON_COLD_START}")

    async def controllers(self, now: float, due: list[float]) -> None:
        for _ in range(self.CONTROLLER_ROUNDS):
            if not await self._reconcile(now, due):
                break

    async def _reconcile(self, now: float, due: list[float]) -> bool:
        """One pass of every controller; True when it wrote something."""
        em = self.emulator
        wrote = await self._collect_garbage()
        if wrote:
            return True
        nodes = sorted(em.live(NODES), key=lambda n: self._node_order(n))
        node_ready = {str(n["metadata"]["name"]): sim.condition_true(n) for n in nodes}
        pods = em.live(PODS)
        load: dict[str, int] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and not sim.terminating(pod):
                load[node] = load.get(node, 0) + 1
        workloads: dict[sim.ObjRef, dict[str, Any]] = {}
        for res in WORKLOAD_RESOURCES.values():
            for obj in em.live(res):
                workloads[sim.ref_of(obj)] = obj
        replicasets = {sim.ref_of(rs): rs for rs in em.live(REPLICASETS)}
        computed: dict[sim.ObjRef, dict[str, Any]] = dict(workloads)

        for ref in sim.dependency_order(workloads):
            workload = workloads[ref]
            owner: dict[str, Any] = workload
            if ref[0] == "Deployment":
                rs = await self._replicaset(workload, replicasets)
                if rs is None:
                    continue
                if rs is not replicasets.get(sim.ref_of(rs)):
                    wrote = True
                owner = rs
            owned = [p for p in pods if sim.owned_by(p, owner) and not sim.terminating(p)]
            plan = sim.plan_pods(workload, owner, owned, nodes, load)

            def count(pod: Mapping[str, Any], delta: int) -> None:  # the next workload's placement sees it
                node = (pod.get("spec") or {}).get("nodeName")
                if node:
                    load[node] = load.get(node, 0) + delta

            for name in plan.delete:
                if await em.internal_delete(PODS, ref[1], name):
                    wrote = True
            for pod in owned:
                if pod["metadata"]["name"] in plan.delete:
                    count(pod, -1)
            owned = [p for p in owned if p["metadata"]["name"] not in plan.delete]
            for name, node in plan.bind:
                bound = await em.internal_patch(PODS, ref[1], name, {"spec": {"nodeName": node}},
                                                subresource="binding")
                if bound is not None:
                    wrote = True
                    count(bound, +1)
                    owned = [bound if p["metadata"]["name"] == name else p for p in owned]
            for manifest in plan.create:
                created = await em.internal_create(PODS, manifest)
                if created is not None:
                    wrote = True
                    count(created, +1)
                    owned.append(created)
                    pods.append(created)
            for name in plan.delete:
                pods = [p for p in pods if not (p["metadata"].get("namespace") == ref[1]
                                                and p["metadata"]["name"] == name)]

            waiting = sim.blockers(workload, computed)
            ready_count = 0
            for pod in owned:
                key = _pod_key(pod)
                node = (pod.get("spec") or {}).get("nodeName")
                verdict = sim.pod_status(pod, node_ready=bool(node and node_ready.get(node)), waiting_for=waiting,
                                         since=self.pod_since.get(key), now=now, delay=self.delays.pod)
                if verdict.since is None:
                    self.pod_since.pop(key, None)
                else:
                    self.pod_since[key] = verdict.since
                if verdict.due is not None:
                    due.append(verdict.due)
                ready_count += verdict.ready
                if sim.status_changed(pod, verdict.status):
                    await em.internal_patch(PODS, ref[1], pod["metadata"]["name"], {"status": verdict.status},
                                            subresource="status")
                    wrote = True
            desired = None
            if ref[0] == "DaemonSet":
                template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
                desired = sum(1 for n in nodes if sim.node_fits(n, template))
            status = sim.workload_status(workload, len(owned), ready_count, now, desired)
            if sim.status_changed(workload, status):
                await em.internal_patch(WORKLOAD_RESOURCES[ref[0]], ref[1], ref[2], {"status": status},
                                        subresource="status")
                wrote = True
            if owner is not workload:
                rs_status = sim.workload_status(owner, len(owned), ready_count, now)
                if sim.status_changed(owner, rs_status):
                    await em.internal_patch(REPLICASETS, ref[1], owner["metadata"]["name"], {"status": rs_status},
                                            subresource="status")
                    wrote = True
            computed[ref] = {**workload, "status": sim.merge_patch(workload.get("status") or {}, status)}
            self._report_workload(ref, computed[ref], waiting)

        self._forget_pods(pods)
        return await self._flux(now, computed) or wrote

    @staticmethod
    def _node_order(node: Mapping[str, Any]) -> tuple[int, str]:
        spec = node.get("spec") or {}
        cidr = str(spec.get("podCIDR") or "")
        index = cidr.split(".")[2] if cidr.count(".") == 3 else ""
        return (int(index) if index.isdigit() else 1 << 30, str(node["metadata"]["name"]))

    def _forget_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        alive = {_pod_key(p) for p in pods}
        for key in [k for k in self.pod_since if k not in alive]:
            del self.pod_since[key]

    async def _replicaset(self, deployment: dict[str, Any],
                          replicasets: Mapping[sim.ObjRef, dict[str, Any]]) -> dict[str, Any] | None:
        """The Deployment's ReplicaSet, created or its ``spec.replicas`` followed."""
        wanted = sim.replicaset_for(deployment)
        ref = sim.ref_of(wanted)
        rs = replicasets.get(ref)
        if rs is None or not sim.owned_by(rs, deployment):
            if rs is not None:  # a stranger with the name: leave it, the Deployment gets no pods
                self._warn_once(f"rs:{ref}", f"{sim.ref_text(ref)} exists but is not owned by its Deployment")
                return None
            return await self.emulator.internal_create(REPLICASETS, wanted)
        if (rs.get("spec") or {}).get("replicas") != sim.replicas(deployment):
            return await self.emulator.internal_patch(REPLICASETS, ref[1], ref[2],
                                                      {"spec": {"replicas": sim.replicas(deployment)}})
        return rs

    async def _collect_garbage(self) -> bool:
        """Delete ReplicaSets and pods whose controlling owner is gone (as Kubernetes' GC does)."""
        em = self.emulator
        owners: set[tuple[str, str | None, str]] = set()
        uids: set[str] = set()
        for res in (*WORKLOAD_RESOURCES.values(), REPLICASETS):
            for obj in em.live(res):
                owners.add(sim.ref_of(obj))
                if obj["metadata"].get("uid"):
                    uids.add(str(obj["metadata"]["uid"]))
        wrote = False
        for res in (REPLICASETS, PODS):
            for obj in em.live(res):
                meta = obj.get("metadata") or {}
                for owner in meta.get("ownerReferences") or []:
                    if not isinstance(owner, Mapping) or owner.get("kind") not in (*WORKLOAD_RESOURCES, "ReplicaSet"):
                        continue
                    gone = str(owner.get("uid")) not in uids if owner.get("uid") else \
                        (owner.get("kind"), meta.get("namespace"), owner.get("name")) not in owners
                    if gone and await em.internal_delete(res, meta.get("namespace"), meta["name"]):
                        log.info("%s: its owner %s/%s is gone: deleted", sim.ref_text(sim.ref_of(obj)),
                                 owner.get("kind"), owner.get("name"))
                        wrote = True
                        break
        return wrote

    def _report_workload(self, ref: sim.ObjRef, workload: Mapping[str, Any], waiting: list[str]) -> None:
        up = sim.available(workload)
        before = self.workload_up.get(ref)
        self.workload_up[ref] = up
        if up == before or (before is None and not up):
            return
        status = workload.get("status") or {}
        if ref[0] == "DaemonSet":
            counts = f"{status.get('numberReady', 0)}/{status.get('desiredNumberScheduled', 0)} ready"
        else:
            counts = f"{status.get('readyReplicas', 0)}/{sim.replicas(workload)} ready"
        why = f"; waiting for {', '.join(waiting)}" if waiting and not up else ""
        self.events.emit("workload", f"{'available' if up else 'unavailable'} ({counts}{why})", sim.ref_text(ref))

    async def _flux(self, now: float, workloads: Mapping[sim.ObjRef, Mapping[str, Any]]) -> bool:
        """Rule 5: GitRepositories, then Kustomizations and HelmReleases, then their renders."""
        em = self.emulator
        wrote = False
        sources: dict[sim.ObjRef, dict[str, Any]] = {}
        for repo in em.live(GITREPOSITORIES):
            ref = sim.ref_of(repo)
            try:
                server = sim.served_by(repo)
            except ValueError as e:
                self._warn_once(f"served:{ref}", f"{sim.ref_text(ref)}: {e}")
                server, reachable = None, False
            else:
                reachable = server is None or sim.available(workloads.get(server))
            status = sim.gitrepository_status(repo, reachable, now)
            if sim.status_changed(repo, status):
                await em.internal_patch(GITREPOSITORIES, ref[1], ref[2], {"status": status}, subresource="status")
                wrote = True
            sources[ref] = {**repo, "status": sim.merge_patch(repo.get("status") or {}, status)}
            self._report_flux(ref, sources[ref])

        existing = {sim.ref_of(raw) for _, raw in em.live_all()}
        for res in (KUSTOMIZATIONS, HELMRELEASES):
            for obj in em.live(res):
                ref = sim.ref_of(obj)
                chart = (((obj.get("spec") or {}).get("chart") or {}).get("spec") or {}).get("version") or ""
                fstatus = sim.flux_status(obj, sim.source_view(sim.source_ref(obj), sources, str(chart)), now)
                current: dict[str, Any] = obj
                if fstatus is not None:
                    if sim.status_changed(obj, fstatus):
                        await em.internal_patch(res, ref[1], ref[2], {"status": fstatus}, subresource="status")
                        wrote = True
                    current = {**obj, "status": sim.merge_patch(obj.get("status") or {}, fstatus)}
                self._report_flux(ref, current)
                try:
                    missing = sim.renders_to_create(current, existing)
                except ValueError as e:
                    self._warn_once(f"renders:{ref}", f"{sim.ref_text(ref)}: {e}")
                    continue
                for manifest in missing:
                    wrote = await self._render(ref, manifest, existing) or wrote
        return wrote

    async def _render(self, by: sim.ObjRef, manifest: dict[str, Any], existing: set[sim.ObjRef]) -> bool:
        target = sim.ref_of(manifest)
        res = self.emulator.resource_for(str(manifest["apiVersion"]), str(manifest["kind"]))
        if res is None:
            self._warn_once(f"render:{by}:{target}", f"{sim.ref_text(by)} renders {manifest['apiVersion']} "
                                                     f"{manifest['kind']}, which the lab API does not serve")
            return False
        if self.emulator.resources[res].namespaced is False:
            manifest["metadata"].pop("namespace", None)
            target = sim.ref_of(manifest)
        created = await self.emulator.internal_create(res, manifest)
        existing.add(target)
        if created is None:
            return False
        self.events.emit("flux", f"re-created {sim.ref_text(target)} (it renders it)", sim.ref_text(by))
        return True

    def _report_flux(self, ref: sim.ObjRef, obj: Mapping[str, Any]) -> None:
        cond = sim.condition(obj, "Ready")
        if cond is None:
            return
        now = (str(cond.get("status")), str(cond.get("reason")))
        before = self.flux_ready.get(ref)
        self.flux_ready[ref] = now
        if now == before:
            return
        text = f"Ready={now[0]} ({now[1]})"
        if now[0] != "True":
            text += f": {cond.get('message')}"
        self.events.emit("flux", text, sim.ref_text(ref))


async def run_simulator(simulator: ClusterSimulator, *, interval: float = POLL_INTERVAL) -> None:
    """Step the simulator forever: every ``interval`` seconds, sooner when a delay runs out or
    a client wrote something."""
    emulator = simulator.emulator
    while True:
        emulator.changed.clear()
        try:
            due = await simulator.step()
        except Exception:  # the lab API must outlive a bug in one rule; it is logged with its traceback
            log.exception("simulator step failed")
            due = None
        timeout = interval if due is None else min(interval, max(0.01, due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(emulator.changed.wait(), timeout)


# -- the process ----------------------------------------------------------------------------


def write_kubeconfig(path: str | os.PathLike[str], server_url: str) -> None:
    """Write a kubeconfig for the lab API atomically (temp file + rename), mode 0600."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hecate-lab", "cluster": {"server": server_url}}],
        "users": [{"name": "hecate-lab", "user": {"token": "hecate-lab-dummy-token"}}],
        "contexts": [{"name": "hecate-lab", "context": {"cluster": "hecate-lab", "user": "hecate-lab"}}],
        "current-context": "hecate-lab",
        "preferences": {},
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".kubeconfig-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def api_url(kubeconfig_path: str | os.PathLike[str]) -> str:
    """The API server URL of the kubeconfig's current context."""
    with open(kubeconfig_path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    return str(cluster["server"])


async def _exit_with_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(0.5)
    log.warning("the parent process %d is gone; stopping", parent_pid)
    stop.set()


async def serve(manifest: LabManifest, *, kubeconfig: Path, host: str = "127.0.0.1", port: int = 0,
                interval: float = POLL_INTERVAL, heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD,
                parent_pid: int | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve the lab API until ``stop`` is set or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emulator = build_emulator(manifest)
    events = EventLog(manifest.events or kubeconfig.parent / EVENTS_FILE)
    simulator = ClusterSimulator(emulator, manifest, events, heartbeat_period=heartbeat_period)
    async with emulator, kmock.Server(emulator, host=host, port=port or None) as server:
        url = f"http://{host}:{server.port}"
        try:
            await simulator.step()  # Nodes current and the API gate set before announcing
        except Exception:  # as in run_simulator: a bug in one rule must not keep the lab API from serving
            log.exception("simulator step failed")
        tasks = [asyncio.create_task(run_simulator(simulator, interval=interval))]
        if parent_pid:
            tasks.append(asyncio.create_task(_exit_with_parent(parent_pid, stop)))
        try:
            write_kubeconfig(kubeconfig, url)
            log.info("serving the lab Kubernetes API on %s (%d nodes); kubeconfig %s",
                     url, len(manifest.nodes), kubeconfig)
            await stop.wait()
            log.info("stopping")
        finally:
            emulator.close_watches()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
                if api_url(kubeconfig) == url:
                    kubeconfig.unlink()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hecate_lab.kubeapi",
                                     description="The lab's emulated Kubernetes API and cluster simulator.")
    parser.add_argument("--manifest", required=True, type=Path, help="JSON: {nodes: [{name, role, dir}]}")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--kubeconfig", required=True, type=Path, help="written once the server listens")
    parser.add_argument("--interval", type=float, default=POLL_INTERVAL, help="state.json poll interval, s")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_PERIOD.total_seconds(),
                        help="seconds between Ready heartbeats of a running node")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process is gone")
    parser.add_argument("--verbose", "-v", action="store_true", help="also log every HTTP request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        manifest = load_manifest(args.manifest)
        asyncio.run(serve(manifest, kubeconfig=args.kubeconfig, host=args.host, port=args.port,
                          interval=args.interval, heartbeat_period=dt.timedelta(seconds=args.heartbeat),
                          parent_pid=args.parent_pid))
    except LabKubeApiError as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot serve: %s", e)
        return 1
    return 0


# -- the Python API for the orchestrator and the tests ---------------------------------------


def _version_answers(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=1.0)
    try:
        conn.request("GET", "/version")
        rsp = conn.getresponse()
        body = json.loads(rsp.read() or b"{}")
        if rsp.status == 503:  # serving, but the lab's k3s servers are down (rule 1)
            return bool(body.get("reason") == "ServiceUnavailable")
        return rsp.status == 200 and "gitVersion" in body
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def start_kubeapi(manifest_path: str | os.PathLike[str], kubeconfig_path: str | os.PathLike[str],
                  log_path: str | os.PathLike[str], *, port: int = 0, timeout: float = 15.0,
                  exit_with_parent: bool = True, extra_args: Iterable[str] = ()) -> subprocess.Popen[bytes]:
    """Spawn ``python -m hecate_lab.kubeapi`` and wait until it serves ``/version``.

    The kubeconfig is removed first and re-appears only once the server listens, so its
    presence is the readiness signal; its server URL carries the real port. The child's
    output goes to ``log_path`` (appended). On failure the child is killed and
    :class:`LabKubeApiError` carries the log's tail. With ``exit_with_parent`` the child
    stops by itself when this process dies, so a crashed test leaves nothing behind.
    """
    kubeconfig = Path(kubeconfig_path)
    log_file = Path(log_path)
    kubeconfig.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "hecate_lab.kubeapi", "--manifest", str(manifest_path),
            "--port", str(port), "--kubeconfig", str(kubeconfig), *extra_args]
    if exit_with_parent:
        argv += ["--parent-pid", str(os.getpid())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])  # .../hecate-lab, holding hecate_lab/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            rc = proc.poll()
            if rc is not None:
                raise LabKubeApiError(f"the lab API exited with status {rc} before serving")
            if kubeconfig.exists():
                with contextlib.suppress(OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
                    if _version_answers(api_url(kubeconfig)):
                        return proc
            if time.monotonic() > deadline:
                raise LabKubeApiError(f"the lab API did not serve /version within {timeout:g}s")
            time.sleep(0.05)
    except BaseException as e:
        _kill(proc)
        if isinstance(e, LabKubeApiError):
            raise LabKubeApiError(f"{e}; {log_file} ends with:\n{_log_tail(log_file)}") from None
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it, or it stays a zombie
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child (or already reaped): probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_kubeapi(pid: int | subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop the lab API: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

    Accepts a pid (of a child or of any process we may signal) or the Popen from
    :func:`start_kubeapi`. Returns once the process is gone; a gone pid is fine.
    """
    if isinstance(pid, subprocess.Popen):
        proc = pid
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _alive(pid)  # reap it if it is our zombie
        return
    for sig_deadline, sig in ((timeout, None), (5.0, signal.SIGKILL)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + sig_deadline
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise LabKubeApiError(f"the lab API process {pid} does not die")

