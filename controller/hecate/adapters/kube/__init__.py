"""Kubernetes: the executor's capability to quiesce (and later restore) the cluster.

Why this module exists: the plan's Kubernetes steps -- suspend Flux, scale workloads to
zero, wait for volume detachment, cordon and drain nodes, and for startup resume,
restore and check readiness -- must never hang a shutdown and must tell "the API is
gone" apart from "the API said no". Shutdown never depends on the cluster being
healthy: when the API cannot be reached the executor *skips* Kubernetes steps and goes
on stopping the nodes over SSH.

How it talks: the official ``kubernetes`` client is blocking, so every call runs in a
thread (:func:`asyncio.to_thread`) with ``_request_timeout`` = ``cluster.api_timeout_s``
(one bound for connect + response) and no urllib3 retries, so one call costs at most one
timeout. Responses are read as plain JSON (``_preload_content=False``): Hecate needs a
few fields, and a generated model that lags behind the server must not fail a
shutdown. A cancelled call's thread finishes by itself within that timeout. Patches are
JSON merge patches (``application/merge-patch+json``), which built-in and custom
resources both accept. The kubeconfig is read on first use, so it may be absent when
:class:`Kube` is built, and again after the API was unreachable (the lab and some
clusters come back on a new address).

Errors -- every one is a :class:`KubeError` (``status`` is the HTTP status when there
was one), chained ``from`` the original:

- :class:`ApiUnavailable`: connection refused or reset, timeout, a 5xx answer, a
  kubeconfig that is missing or unreadable. The executor skips Kubernetes steps on it.
  After one, the client **short-circuits** later calls for ``cooldown`` seconds (5 s by
  default): they raise :class:`ApiUnavailable` at once, without touching the network,
  so a dead API costs one timeout per cool-down rather than one per step; the first
  call after the cool-down tries again (and reloads the kubeconfig).
- :class:`KubeNotFound`: 404 for an object the call needed (e.g. :meth:`Kube.scale` of
  a workload that no longer exists).
- :class:`KubeError` itself: any other refusal (401, 403, 409, 422, ...), with a readable
  message: the verb, ``Kind/namespace/name``, the status and the API's reason/message.

The operations over many objects (:meth:`Kube.flux_suspend`, :meth:`Kube.scale_down`,
:meth:`Kube.drain`) are best effort: one object's refusal does not stop the others;
:meth:`~Kube.flux_suspend` and :meth:`~Kube.scale_down` raise a :class:`KubeError` at the
end if any object failed, and whenever they raise part-way (:class:`ApiUnavailable`
included) ``err.partial`` holds the same-shaped result of what was already changed, so
the caller can record it and startup can undo exactly that.

``Kube.writes`` counts the mutating requests sent (patches, evictions): a dry-run must
leave it at zero.

Object refs are ``Kind/namespace/name`` (``Deployment/apps/web``,
``Kustomization/flux-system/apps``); pods in drain results are ``namespace/name``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.config.config_exception import ConfigException

log = logging.getLogger(__name__)

__all__ = [
    "COOLDOWN_S",
    "ApiUnavailable",
    "Kube",
    "KubeError",
    "KubeNotFound",
    "drain_skip_reason",
    "parse_ref",
]

COOLDOWN_S = 5.0
"""After an :class:`ApiUnavailable`, calls fail fast for this long."""
EVICTION_RETRY_S = 1.0
"""How often a drain retries an eviction a PodDisruptionBudget refused."""
EVICTION_CONCURRENCY = 8
MERGE_PATCH = "application/merge-patch+json"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
RECONCILE_ANNOTATION = "reconcile.fluxcd.io/requestedAt"
# What Hecate changes it records on the object itself, in the same patch: a repeated or
# resumed shutdown (or a run record lost with the disk) cannot make startup forget what is ours.
OWNER = "hecate"
SUSPENDED_BY = "hecate.io/suspended-by"
CORDONED_BY = "hecate.io/cordoned-by"
ORIGINAL_REPLICAS = "hecate.io/original-replicas"


class KubeError(Exception):
    """A Kubernetes call failed; ``status`` is the HTTP status, ``partial`` what was done."""

    def __init__(self, message: str, *, status: int | None = None, partial: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.partial = partial


class ApiUnavailable(KubeError):
    """The API cannot be reached (refused, reset, timeout, 5xx, no usable kubeconfig)."""


class KubeNotFound(KubeError):
    """The object (or its resource type) does not exist: HTTP 404."""


@dataclass(frozen=True)
class _Flux:
    kind: str
    group: str
    versions: tuple[str, ...]  # newest first; the first one the API serves is used
    plural: str


FLUX_KINDS: tuple[_Flux, ...] = (
    _Flux("Kustomization", "kustomize.toolkit.fluxcd.io", ("v1", "v1beta2"), "kustomizations"),
    _Flux("HelmRelease", "helm.toolkit.fluxcd.io", ("v2", "v2beta2", "v2beta1"), "helmreleases"),
)
GIT_REPOSITORY = _Flux("GitRepository", "source.toolkit.fluxcd.io", ("v1", "v1beta2"), "gitrepositories")
_FLUX_BY_KIND = {f.kind: f for f in (*FLUX_KINDS, GIT_REPOSITORY)}
_WORKLOADS = {"Deployment": "deployment", "StatefulSet": "stateful_set"}
_READABLE_WORKLOADS = {**_WORKLOADS, "DaemonSet": "daemon_set"}
# Kinds Hecate can export to and create from the bootstrap cache: kind -> (plural, namespaced).
# The apiVersion comes from the object itself. No Secrets: they survive an outage in etcd, and a
# copy on the coordinator's disk would be one more place to steal them from (manifests/rbac.yaml).
OBJECT_KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False), "ConfigMap": ("configmaps", True),
    "Service": ("services", True), "ServiceAccount": ("serviceaccounts", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Deployment": ("deployments", True), "StatefulSet": ("statefulsets", True), "DaemonSet": ("daemonsets", True),
    "GitRepository": ("gitrepositories", True), "HelmRepository": ("helmrepositories", True),
    "Kustomization": ("kustomizations", True), "HelmRelease": ("helmreleases", True),
}
DEFAULT_API_VERSION = {
    "Namespace": "v1", "ConfigMap": "v1", "Service": "v1", "ServiceAccount": "v1",
    "PersistentVolumeClaim": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
    "GitRepository": "source.toolkit.fluxcd.io/v1", "HelmRepository": "source.toolkit.fluxcd.io/v1",
    "Kustomization": "kustomize.toolkit.fluxcd.io/v1", "HelmRelease": "helm.toolkit.fluxcd.io/v2",
}
_KIND_BY_LOWER = {k.lower(): k for k in OBJECT_KINDS}
# Fields of a live object that a cached copy must not carry (the API server owns them).
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                    "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds")


def config_ref(ref: str) -> str:
    """The config's ``namespace/kind/name`` (``gitea/deployment/gitea``) as ``Kind/namespace/name``."""
    namespace, kind, name = ref.split("/")
    known = _KIND_BY_LOWER.get(kind.lower())
    if known is None:
        raise ValueError(f"{ref}: kind {kind!r} is not one of {', '.join(sorted(OBJECT_KINDS))}")
    return f"{known}/{namespace}/{name}"


def object_ref(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` of a manifest (``Kind//name`` for cluster-scoped ones)."""
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace') or ''}/{meta.get('name')}"


def clean_manifest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A live object as a manifest to re-create it: no status, no server-owned metadata.

    Hecate's own ownership annotations and kubectl's last-applied copy are dropped too,
    and a scaled-down workload keeps the replicas it had before Hecate scaled it.
    """
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = out.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    annotations = dict(meta.get("annotations") or {})
    original = annotations.get(ORIGINAL_REPLICAS)
    for key in (SUSPENDED_BY, CORDONED_BY, ORIGINAL_REPLICAS, RECONCILE_ANNOTATION,
                "kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision"):
        annotations.pop(key, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    if original is not None and original.isdigit() and isinstance(out.get("spec"), dict):
        out["spec"]["replicas"] = int(original)
    if out.get("kind") == "Service" and isinstance(out.get("spec"), dict):
        for key in ("clusterIP", "clusterIPs"):  # allocated by the API server
            out["spec"].pop(key, None)
    return out


def _condition(obj: Mapping[str, Any] | None, kind: str = "Ready") -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


STUCK_REASONS = frozenset({"CrashLoopBackOff", "RunContainerError", "CreateContainerError", "Error"})
STUCK_RESTARTS = 3


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


class _Raw:
    """A REST call by path, for kinds without (or beyond) the generated client's typed methods."""

    def __init__(self, api: kclient.ApiClient) -> None:
        self.api = api

    def request(self, method: str, path: str, body: Any = None, *, _request_timeout: float,
                _preload_content: bool, _content_type: str = "application/json") -> Any:
        serialized = self.api.param_serialize(
            method, path, header_params={"Accept": "application/json", "Content-Type": _content_type},
            body=body, auth_settings=["BearerToken"])
        return self.api._call_with_legacy_options(serialized, {}, None, _preload_content, _request_timeout, True)


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural, namespaced = OBJECT_KINDS[kind]
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{plural}" if namespaced else f"{root}/{plural}"
    return f"{path}/{name}" if name else path


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``"Kind/namespace/name"`` -> ``(kind, namespace, name)``; ValueError if malformed."""
    parts = ref.split("/")
    cluster_scoped = len(parts) == 3 and parts[0] in ("Namespace", "Node")  # their namespace is empty
    if len(parts) != 3 or not parts[0] or not parts[2] or bool(parts[1]) == cluster_scoped:
        raise ValueError(f"not a Kind/namespace/name reference: {ref!r}")
    return parts[0], parts[1], parts[2]


def _annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _ref(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind}/{meta.get('namespace')}/{meta.get('name')}"


def _pod_ref(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def drain_skip_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a drain leaves this pod alone (as ``kubectl drain --ignore-daemonsets``), or None.

    Pure. DaemonSet pods would be re-created on the node at once (and tolerate the
    cordon); mirror pods are the kubelet's static pods, which the API cannot evict.
    """
    meta = pod.get("metadata") or {}
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "mirror pod"
    if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
        return "DaemonSet pod"
    return None


def _status_message(err: kclient.ApiException) -> str:
    """The API's own words from an error response (a v1 Status), else the HTTP reason."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or "")
        reason = str(body.get("reason") or err.reason or "")
        return f"{reason}: {message}" if message else reason
    return str(err.reason or "no reason given")


class Kube:
    """The Kubernetes API as the executor uses it (see the module docstring)."""

    def __init__(self, kubeconfig: Path, timeout: float, *, cooldown: float = COOLDOWN_S,
                 retry_interval: float = EVICTION_RETRY_S, context: str | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.timeout = float(timeout)
        self.cooldown = float(cooldown)
        self.retry_interval = float(retry_interval)
        self.context = context
        self.writes = 0
        """Mutating requests sent (patches and evictions), successful or not."""
        self._client: kclient.ApiClient | None = None
        self._client_lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._flux_versions: dict[str, str] = {}

    # -- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the HTTP connections (the client is rebuilt on the next call)."""
        with self._client_lock:
            api, self._client = self._client, None
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _api(self) -> kclient.ApiClient:
        with self._client_lock:
            if self._client is None:
                if not self.kubeconfig.is_file():
                    raise ApiUnavailable(f"kubeconfig {self.kubeconfig} does not exist")
                cfg = kclient.Configuration()
                try:
                    kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=str(self.kubeconfig), context=self.context,
                        client_configuration=cfg, persist_config=False)
                except (ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as err:
                    raise ApiUnavailable(f"cannot use kubeconfig {self.kubeconfig}: {err}") from err
                cfg.retries = 0  # one call, one timeout: no silent urllib3 retries
                self._client = kclient.ApiClient(cfg)
            return self._client

    def _request(self, api_class: type, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """In a worker thread: one API call, its JSON body decoded (None when empty)."""
        fn: Callable[..., Any] = getattr(api_class(self._api()), method)
        rsp = fn(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        try:
            data = rsp.data
        finally:
            rsp.release_conn()
        return json.loads(data) if data else None

    async def _call(self, what: str, api_class: type, method: str, *args: Any, write: bool = False,
                    server_error_is_unavailable: bool = True, **kwargs: Any) -> Any:
        """Run one API call in a thread, translating every failure into a KubeError.

        A 5xx answer is :class:`ApiUnavailable` (and starts the cool-down) unless
        ``server_error_is_unavailable`` is false: the Eviction API answers 500 for a
        request it will never accept (a pod under two PodDisruptionBudgets).
        """
        now = time.monotonic()
        if now < self._down_until:
            raise ApiUnavailable(f"{what}: API unavailable ({self._down_reason}); not retried for another "
                                 f"{self._down_until - now:.1f}s")
        if write:
            self.writes += 1
        try:
            return await asyncio.to_thread(self._request, api_class, method, args, kwargs)
        except ApiUnavailable as err:
            raise self._unavailable(f"{what}: {err}", None) from err
        except kclient.ApiException as err:
            status = int(err.status) if err.status else None
            message = f"{what}: {status} {_status_message(err)}"
            if status is not None and status >= 500 and server_error_is_unavailable:
                raise self._unavailable(message, status) from err
            if status == 404:
                raise KubeNotFound(message, status=status) from err
            raise KubeError(message, status=status) from err
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
            raise self._unavailable(f"{what}: cannot reach the API: {_cause(err)}", None) from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a body that is not JSON
            raise KubeError(f"{what}: unreadable answer from the API: {err}") from err

    def _unavailable(self, message: str, status: int | None) -> ApiUnavailable:
        self._down_until = time.monotonic() + self.cooldown
        self._down_reason = message
        with self._client_lock:  # reload the kubeconfig next time: the API may come back elsewhere
            api, self._client = self._client, None
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]
        log.warning("Kubernetes API unavailable: %s (cool-down %.0fs)", message, self.cooldown)
        return ApiUnavailable(message, status=status)

    async def _patch(self, what: str, api_class: type, method: str, *args: Any, body: Mapping[str, Any]) -> Any:
        return await self._call(what, api_class, method, *args, body, write=True, _content_type=MERGE_PATCH)

    # -- reachability and readiness ----------------------------------------------------------

    async def server_version(self) -> str:
        """The API server's ``gitVersion``: a cheap reachability probe."""
        data = await self._call("get version", kclient.VersionApi, "get_code")
        return str((data or {}).get("gitVersion") or "")

    async def nodes_ready(self) -> dict[str, bool]:
        """Every Node and whether its ``Ready`` condition is ``"True"``."""
        data = await self._call("list nodes", kclient.CoreV1Api, "list_node")
        ready: dict[str, bool] = {}
        for node in (data or {}).get("items", []):
            conditions = (node.get("status") or {}).get("conditions") or []
            ready[node["metadata"]["name"]] = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return ready

    async def volume_attachments(self) -> list[str]:
        """Names of the storage.k8s.io/v1 VolumeAttachments (empty when there are none)."""
        data = await self._call("list VolumeAttachments", kclient.StorageV1Api, "list_volume_attachment")
        return [item["metadata"]["name"] for item in (data or {}).get("items", [])]

    # -- Flux --------------------------------------------------------------------------------

    async def _flux_version(self, flux: _Flux) -> str | None:
        """The served version of a Flux kind, or None when its CRD is not installed (not cached)."""
        if flux.kind not in self._flux_versions:
            for version in flux.versions:
                try:
                    await self._call(f"list {flux.kind} ({flux.group}/{version})", kclient.CustomObjectsApi,
                                     "list_cluster_custom_object", flux.group, version, flux.plural, limit=1)
                except KubeNotFound:
                    continue
                self._flux_versions[flux.kind] = version
                break
        return self._flux_versions.get(flux.kind)

    async def _flux_objects(self, flux: _Flux) -> tuple[str | None, list[dict[str, Any]]]:
        version = await self._flux_version(flux)
        if version is None:
            return None, []
        try:
            data = await self._call(f"list {flux.kind}", kclient.CustomObjectsApi, "list_cluster_custom_object",
                                    flux.group, version, flux.plural)
        except KubeNotFound:  # the CRD went away between the two calls
            self._flux_versions.pop(flux.kind, None)
            return None, []
        return version, list((data or {}).get("items", []))

    async def flux_suspend(self) -> dict[str, list[str]]:
        """Set ``spec.suspend: true`` on every Flux Kustomization and HelmRelease not yet suspended.

        Returns ``{"suspended": [refs Hecate suspended], "already_suspended": [refs that
        were suspended before]}`` -- startup must resume only the first list. Kinds whose
        CRD is not installed (404) contribute nothing. Kustomizations go first, so they
        cannot re-apply a HelmRelease while it is being suspended.
        """
        result: dict[str, list[str]] = {"suspended": [], "already_suspended": []}
        failed: list[str] = []
        for flux in FLUX_KINDS:
            try:
                version, items = await self._flux_objects(flux)
            except KubeError as err:
                err.partial = result
                raise
            for obj in items:
                ref = _ref(flux.kind, obj)
                if (obj.get("spec") or {}).get("suspend") is True:
                    # Suspended by us earlier (a resumed or repeated run): still ours to resume.
                    ours = _annotations(obj).get(SUSPENDED_BY) == OWNER
                    result["suspended" if ours else "already_suspended"].append(ref)
                    continue
                _, namespace, name = parse_ref(ref)
                try:
                    await self._patch(f"suspend {ref}", kclient.CustomObjectsApi, "patch_namespaced_custom_object",
                                      flux.group, version, namespace, flux.plural, name,
                                      body={"spec": {"suspend": True},
                                            "metadata": {"annotations": {SUSPENDED_BY: OWNER}}})
                except KubeNotFound:
                    continue  # deleted meanwhile: nothing to suspend, nothing to resume
                except ApiUnavailable as err:
                    err.partial = result
                    raise
                except KubeError as err:
                    failed.append(str(err))
                    continue
                result["suspended"].append(ref)
        if failed:
            raise KubeError("; ".join(failed), partial=result)
        return result

    async def flux_resume(self, refs: Iterable[str], *, reconcile: bool = False) -> list[str]:
        """Set ``spec.suspend: false`` on exactly these refs; returns the ones resumed.

        Objects (or Flux kinds) that no longer exist are ignored. With ``reconcile`` the
        same patch sets ``reconcile.fluxcd.io/requestedAt`` so Flux reconciles at once.
        """
        resumed: list[str] = []
        for ref in refs:
            kind, namespace, name = parse_ref(ref)
            flux = _FLUX_BY_KIND.get(kind)
            if flux is None:
                raise ValueError(f"{ref}: not a Flux Kustomization or HelmRelease")
            version = await self._flux_version(flux)
            if version is None:
                continue
            body: dict[str, Any] = {"spec": {"suspend": False}, "metadata": {"annotations": {SUSPENDED_BY: None}}}
            if reconcile:
                now = dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")
                body["metadata"]["annotations"][RECONCILE_ANNOTATION] = now
            try:
                await self._patch(f"resume {ref}", kclient.CustomObjectsApi, "patch_namespaced_custom_object",
                                  flux.group, version, namespace, flux.plural, name, body=body)
            except KubeNotFound:
                continue
            except KubeError as err:
                err.partial = resumed
                raise
            resumed.append(ref)
        return resumed

    # -- workloads ---------------------------------------------------------------------------

    async def _list_workloads(self, kind: str, selector: str, namespace: str | None) -> list[dict[str, Any]]:
        snake = _WORKLOADS[kind]
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
        exactly those, for startup's restore.
        """
        scaled: dict[str, int] = {}
        failed: list[str] = []
        for kind in _WORKLOADS:
            try:
                items = await self._list_workloads(kind, selector, namespace)
            except KubeError as err:
                err.partial = scaled
                raise
            for obj in items:
                replicas = (obj.get("spec") or {}).get("replicas", 1)
                ref = _ref(kind, obj)
                recorded = _annotations(obj).get(ORIGINAL_REPLICAS)
                if replicas == 0 and recorded is not None and recorded.isdigit():
                    scaled[ref] = int(recorded)  # scaled down by us earlier: the original is on the object
                    continue
                if not isinstance(replicas, int) or replicas <= 0:
                    continue
                _, ns, name = parse_ref(ref)
                try:
                    await self._patch(f"scale {ref} to 0", kclient.AppsV1Api, f"patch_namespaced_{_WORKLOADS[kind]}",
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
        kind, namespace, name = parse_ref(ref)
        if kind not in _WORKLOADS:
            raise ValueError(f"{ref}: only Deployments and StatefulSets can be scaled")
        if replicas < 0:
            raise ValueError(f"{ref}: replicas must be >= 0, not {replicas}")
        await self._patch(f"scale {ref} to {replicas}", kclient.AppsV1Api, f"patch_namespaced_{_WORKLOADS[kind]}",
                          name, namespace, body={"spec": {"replicas": replicas},
                                                 "metadata": {"annotations": {ORIGINAL_REPLICAS: None}}})

    # -- nodes -------------------------------------------------------------------------------

    async def cordon(self, node: str) -> bool:
        """Mark the node unschedulable; True if Hecate changed it, False if already cordoned."""
        data = await self._call(f"get Node/{node}", kclient.CoreV1Api, "read_node", node)
        if (data or {}).get("spec", {}).get("unschedulable") is True:
            return _annotations(data).get(CORDONED_BY) == OWNER  # ours from an earlier run, or someone else's
        await self._patch(f"cordon Node/{node}", kclient.CoreV1Api, "patch_node", node,
                          body={"spec": {"unschedulable": True}, "metadata": {"annotations": {CORDONED_BY: OWNER}}})
        return True

    async def uncordon(self, node: str) -> None:
        """Make the node schedulable again (removes ``spec.unschedulable``, as kubectl does)."""
        await self._patch(f"uncordon Node/{node}", kclient.CoreV1Api, "patch_node", node,
                          body={"spec": {"unschedulable": None}, "metadata": {"annotations": {CORDONED_BY: None}}})

    async def _node_pods(self, node: str) -> list[dict[str, Any]]:
        data = await self._call(f"list pods on Node/{node}", kclient.CoreV1Api, "list_pod_for_all_namespaces",
                                field_selector=f"spec.nodeName={node}")
        return list((data or {}).get("items", []))

    async def _evict(self, namespace: str, name: str) -> tuple[str, str]:
        """One eviction: ("evicted" | "gone" | "blocked" | "failed", detail)."""
        body = kclient.V1Eviction(api_version="policy/v1", kind="Eviction",
                                  metadata=kclient.V1ObjectMeta(name=name, namespace=namespace))
        try:
            await self._call(f"evict Pod/{namespace}/{name}", kclient.CoreV1Api, "create_namespaced_pod_eviction",
                             name, namespace, body, write=True, server_error_is_unavailable=False)
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
        with pods still blocked or terminating.
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
                result["skipped"][_pod_ref(pod)] = reason
            else:
                pending.append(_pod_ref(pod))
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
                present = {_pod_ref(p) for p in await self._node_pods(node)} & evicted
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

    # -- startup -----------------------------------------------------------------------------

    async def _raw(self, what: str, method: str, path: str, body: Any = None, *, write: bool = False,
                   content_type: str = "application/json") -> Any:
        return await self._call(what, _Raw, "request", method, path, body, write=write, _content_type=content_type)

    async def get_object(self, ref: str, api_version: str | None = None) -> dict[str, Any] | None:
        """The live object ``Kind/namespace/name`` (a kind of :data:`OBJECT_KINDS`), None if absent."""
        kind, namespace, name = parse_ref(ref)
        if kind not in OBJECT_KINDS:
            raise ValueError(f"{ref}: kind {kind} is not one of {', '.join(sorted(OBJECT_KINDS))}")
        try:
            data = await self._raw(f"get {ref}", "GET",
                                   _path(api_version or DEFAULT_API_VERSION[kind], kind, namespace or None, name))
        except KubeNotFound:
            return None
        return dict(data or {})

    async def export(self, refs: Iterable[str]) -> list[dict[str, Any]]:
        """The objects as manifests (:func:`clean_manifest`); KubeNotFound names a missing one."""
        manifests: list[dict[str, Any]] = []
        for ref in refs:
            obj = await self.get_object(ref)
            if obj is None:
                raise KubeNotFound(f"export {ref}: not found", status=404)
            manifests.append(clean_manifest(obj))
        return manifests

    async def apply_missing(self, manifests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Create the objects that do not exist; never touches one that does (the cache may be older
        than Git). Returns ``{"created": [refs], "present": [refs], "failed": {ref: error}}``."""
        result: dict[str, Any] = {"created": [], "present": [], "failed": {}}
        for manifest in manifests:
            kind = str(manifest.get("kind"))
            ref = object_ref(manifest)
            if kind not in OBJECT_KINDS:
                result["failed"][ref] = f"kind {kind} cannot be applied from the cache"
                continue
            try:
                parse_ref(ref)
            except ValueError as err:
                result["failed"][ref] = str(err)
                continue
            meta = manifest.get("metadata") or {}
            api_version = str(manifest.get("apiVersion") or DEFAULT_API_VERSION[kind])
            namespace = meta.get("namespace") if OBJECT_KINDS[kind][1] else None
            try:
                if await self.get_object(ref, api_version) is not None:
                    result["present"].append(ref)
                    continue
                await self._raw(f"create {ref}", "POST", _path(api_version, kind, namespace), dict(manifest),
                                write=True)
            except ApiUnavailable as err:
                err.partial = result
                raise
            except KubeError as err:
                if err.status == 409:  # created meanwhile (by Flux, say): fine
                    result["present"].append(ref)
                else:
                    result["failed"][ref] = str(err)
                continue
            result["created"].append(ref)
        return result

    async def delete_object(self, ref: str) -> bool:
        """Delete ``Kind/namespace/name`` (drills break things with it); False if it was already gone."""
        kind, namespace, name = parse_ref(ref)
        if kind not in OBJECT_KINDS:
            raise ValueError(f"{ref}: kind {kind} is not one of {', '.join(sorted(OBJECT_KINDS))}")
        try:
            await self._raw(f"delete {ref}", "DELETE", _path(DEFAULT_API_VERSION[kind], kind, namespace or None, name),
                            write=True)
        except KubeNotFound:
            return False
        return True

    async def workload(self, ref: str) -> dict[str, Any]:
        """``{"exists", "available", "detail"}`` of a Deployment, StatefulSet or DaemonSet."""
        kind, namespace, name = parse_ref(ref)
        snake = _READABLE_WORKLOADS.get(kind)
        if snake is None:
            raise ValueError(f"{ref}: not a Deployment, StatefulSet or DaemonSet")
        try:
            obj = await self._call(f"get {ref}", kclient.AppsV1Api, f"read_namespaced_{snake}", name, namespace)
        except KubeNotFound:
            return {"exists": False, "available": False, "detail": "not found"}
        available, detail = workload_available(kind, obj or {})
        return {"exists": True, "available": available, "detail": detail}

    async def restart_unready_pods(self, ref: str) -> list[str]:
        """Delete the workload's stuck pods -- not Ready on a Ready node, with a container that
        crash-loops or failed to start (:func:`crash_looping`); their controller re-creates them.
        Pods on unready nodes, not yet scheduled, or merely slow are left alone."""
        kind, namespace, name = parse_ref(ref)
        obj = await self._call(f"get {ref}", kclient.AppsV1Api, f"read_namespaced_{_READABLE_WORKLOADS[kind]}",
                               name, namespace)
        labels = (((obj or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not labels:
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = await self._call(f"list pods of {ref}", kclient.CoreV1Api, "list_namespaced_pod", namespace,
                                label_selector=selector)
        ready_nodes = {n for n, ok in (await self.nodes_ready()).items() if ok}
        restarted: list[str] = []
        for pod in (pods or {}).get("items", []):
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in ready_nodes or _condition(pod).get("status") == "True" or not crash_looping(pod):
                continue  # a pod that is only slow (a database replaying its log) is left to finish
            pod_name = pod["metadata"]["name"]
            try:
                await self._call(f"delete Pod/{namespace}/{pod_name}", kclient.CoreV1Api, "delete_namespaced_pod",
                                 pod_name, namespace, write=True)
            except KubeNotFound:
                continue
            restarted.append(f"{namespace}/{pod_name}")
        return restarted

    async def flux_status(self) -> dict[str, dict[str, Any]]:
        """Every Kustomization and HelmRelease: ``{ref: {"ready", "suspended", "ours", "message", "fresh"}}``."""
        out: dict[str, dict[str, Any]] = {}
        for flux in FLUX_KINDS:
            _, items = await self._flux_objects(flux)
            for obj in items:
                cond = _condition(obj)
                requested = _annotations(obj).get(RECONCILE_ANNOTATION)
                out[_ref(flux.kind, obj)] = {
                    "ready": cond.get("status") == "True",
                    "suspended": (obj.get("spec") or {}).get("suspend") is True,
                    "ours": _annotations(obj).get(SUSPENDED_BY) == OWNER,
                    "message": str(cond.get("message") or ""),
                    # the last reconcile request was handled: the status is not older than that request
                    "fresh": requested is None or (obj.get("status") or {}).get("lastHandledReconcileAt") == requested,
                }
        return out

    async def git_repository(self, namespace: str, name: str) -> dict[str, Any]:
        """``{"ready", "reason", "message", "branch", "pinned", "suspended", "requested_at", "handled_at"}``
        (``pinned``: a tag, semver, name or commit overrides the branch); KubeNotFound if it is absent."""
        version = await self._flux_version(GIT_REPOSITORY)
        if version is None:
            raise KubeNotFound("the GitRepository CRD is not installed", status=404)
        obj = await self._call(f"get GitRepository/{namespace}/{name}", kclient.CustomObjectsApi,
                               "get_namespaced_custom_object", GIT_REPOSITORY.group, version, namespace,
                               GIT_REPOSITORY.plural, name)
        cond = _condition(obj)
        spec = (obj or {}).get("spec") or {}
        ref = spec.get("ref") or {}
        status = (obj or {}).get("status") or {}
        return {"ready": cond.get("status") == "True", "reason": str(cond.get("reason") or ""),
                "message": str(cond.get("message") or ""), "branch": ref.get("branch"),
                "pinned": any(ref.get(k) for k in ("tag", "semver", "name", "commit")),
                "suspended": spec.get("suspend") is True,
                "requested_at": _annotations(obj).get(RECONCILE_ANNOTATION),
                "handled_at": status.get("lastHandledReconcileAt")}

    async def set_git_branch(self, namespace: str, name: str, branch: str) -> str | None:
        """Point the GitRepository at ``branch`` (and request a reconcile); returns the previous branch."""
        current = await self.git_repository(namespace, name)
        if current["branch"] == branch and not current["pinned"]:
            return branch
        version = await self._flux_version(GIT_REPOSITORY)
        now = dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")
        await self._patch(f"set branch of GitRepository/{namespace}/{name}", kclient.CustomObjectsApi,
                          "patch_namespaced_custom_object", GIT_REPOSITORY.group, version, namespace,
                          GIT_REPOSITORY.plural, name,
                          # tag, semver, name and commit take precedence over branch in Flux: clear them
                          body={"spec": {"ref": {"branch": branch, "tag": None, "semver": None, "name": None,
                                                 "commit": None}},
                                "metadata": {"annotations": {RECONCILE_ANNOTATION: now}}})
        previous: str | None = current["branch"]
        return previous

    async def request_reconcile(self, refs: Iterable[str]) -> list[str]:
        """Set ``reconcile.fluxcd.io/requestedAt`` on these Flux objects (GitRepository included)."""
        now = dt.datetime.now(tz=dt.UTC).isoformat(timespec="milliseconds")
        done: list[str] = []
        for ref in refs:
            kind, namespace, name = parse_ref(ref)
            flux = _FLUX_BY_KIND[kind]
            version = await self._flux_version(flux)
            if version is None:
                continue
            try:
                await self._patch(f"reconcile {ref}", kclient.CustomObjectsApi, "patch_namespaced_custom_object",
                                  flux.group, version, namespace, flux.plural, name,
                                  body={"metadata": {"annotations": {RECONCILE_ANNOTATION: now}}})
            except KubeNotFound:
                continue
            done.append(ref)
        return done

    async def replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]:
        """``{ref: spec.replicas}`` of the Deployments and StatefulSets the label selector picks."""
        return {_ref(kind, obj): int((obj.get("spec") or {}).get("replicas") or 0)
                for kind in _WORKLOADS for obj in await self._list_workloads(kind, selector, namespace)}

    async def unschedulable_nodes(self) -> list[str]:
        """Every cordoned node, whoever cordoned it."""
        data = await self._call("list nodes", kclient.CoreV1Api, "list_node")
        return [n["metadata"]["name"] for n in (data or {}).get("items", [])
                if (n.get("spec") or {}).get("unschedulable") is True]

    async def clear_stale_marks(self) -> list[str]:
        """Drop Hecate's ownership annotations from objects no longer in the state they recorded.

        A person who ran ``kubectl uncordon`` or ``flux resume`` by hand leaves Hecate's
        ``cordoned-by``/``suspended-by`` behind; if they later cordon or suspend the object on
        purpose, the next startup must not take it for Hecate's and undo it.
        """
        cleared: list[str] = []
        data = await self._call("list nodes", kclient.CoreV1Api, "list_node")
        for node in (data or {}).get("items", []):
            name = node["metadata"]["name"]
            if _annotations(node).get(CORDONED_BY) and (node.get("spec") or {}).get("unschedulable") is not True:
                await self._patch(f"clear mark on Node/{name}", kclient.CoreV1Api, "patch_node", name,
                                  body={"metadata": {"annotations": {CORDONED_BY: None}}})
                cleared.append(f"Node//{name}")
        for flux in FLUX_KINDS:
            version, items = await self._flux_objects(flux)
            for obj in items:
                if _annotations(obj).get(SUSPENDED_BY) and (obj.get("spec") or {}).get("suspend") is not True:
                    ref = _ref(flux.kind, obj)
                    _, namespace, name = parse_ref(ref)
                    await self._patch(f"clear mark on {ref}", kclient.CustomObjectsApi,
                                      "patch_namespaced_custom_object", flux.group, version, namespace, flux.plural,
                                      name, body={"metadata": {"annotations": {SUSPENDED_BY: None}}})
                    cleared.append(ref)
        return cleared

    async def scaled_by_hecate(self) -> list[str]:
        """Deployments and StatefulSets (all namespaces) still carrying Hecate's ``original-replicas``."""
        refs: list[str] = []
        for kind in _WORKLOADS:
            refs += [_ref(kind, obj) for obj in await self._list_workloads(kind, "", None)
                     if ORIGINAL_REPLICAS in _annotations(obj)]
        return sorted(refs)

    async def cordoned_by_hecate(self) -> list[str]:
        """Nodes that are unschedulable because Hecate cordoned them."""
        data = await self._call("list nodes", kclient.CoreV1Api, "list_node")
        return [n["metadata"]["name"] for n in (data or {}).get("items", [])
                if (n.get("spec") or {}).get("unschedulable") is True and _annotations(n).get(CORDONED_BY) == OWNER]

    async def restore_replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]:
        """Scale back the workloads Hecate scaled to zero (their ``original-replicas`` annotation).

        One someone else has scaled since (replicas no longer 0) only loses the annotation.
        Returns ``{ref: replicas set}``.
        """
        restored: dict[str, int] = {}
        for kind in _WORKLOADS:
            for obj in await self._list_workloads(kind, selector, namespace):
                recorded = _annotations(obj).get(ORIGINAL_REPLICAS)
                if recorded is None or not recorded.isdigit():
                    continue
                ref = _ref(kind, obj)
                replicas = (obj.get("spec") or {}).get("replicas")
                target = int(recorded) if replicas == 0 else int(replicas or 0)
                try:
                    await self.scale(ref, target)
                except KubeNotFound:
                    continue
                if replicas == 0:
                    restored[ref] = target
        return restored


def _cause(err: BaseException) -> str:
    """The innermost useful reason of a urllib3 error (MaxRetryError wraps the real one)."""
    reason = getattr(err, "reason", None)
    return str(reason) if isinstance(reason, BaseException) else str(err)
