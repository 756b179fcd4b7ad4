"""The lab's Kubernetes API server: kmock's emulator with what the kubernetes client and kopf rely on.

:class:`LabKubernetesEmulator` keeps kmock's request path, object store, history and watch
bus, and adds resource versions, selectors, watch timeouts, ``/version``, 404s and 503s in
the API's words, the ``namespaces`` resource, CRD registration and the Eviction subresource;
:func:`build_emulator` seeds it with the lab's Nodes and the Flux CRDs. What it adds, in
full: docs/lab-kubeapi.md.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast

import aiohttp.web
import attrs
import kmock

from hecate_lab.kubeapi.crds import FLUX_CRDS, established_status, register_crd
from hecate_lab.kubeapi.eviction import eviction_verdict
from hecate_lab.kubeapi.manifest import DEFAULT_K3S_VERSION, LabManifest
from hecate_lab.kubeapi.node_objects import lease_object, node_object, node_ready_condition, read_node_state
from hecate_lab.kubeapi.resources import CRDS, LEASES, NODES, PDBS, PODS, format_time, status_body, utcnow
from hecate_lab.kubeapi.selectors import match_field_selector, match_label_selector
from hecate_lab.kubeapi.tables import printer_columns, table, wants_table

log = logging.getLogger(__name__)

HISTORY_LIMIT = 100  # object versions kmock keeps per object (it would keep all otherwise)

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
    printer_columns: dict[kmock.resource, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    """The ``Table`` columns of each resource a CRD defines (``kubectl get``)."""

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
        # A watch is a stream of JSON objects: kubectl's watch decoder refuses kmock's octet-stream.
        (self.fallback ** 1)[kmock.action.WATCH] << kmock.headers({"Content-Type": "application/json"}) \
            << self._serve_watch

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
            body["status"] = established_status(body, meta["creationTimestamp"])
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
                    registered = self.register_crd(request.data)
                    log.info("CRD %s registered: %s", request.data["metadata"]["name"], registered)
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("CRD not registered: %s", e)
            current = self.stored(res, request.namespace, request.name)
            if request.action == kmock.action.UPDATE and current is not None:
                self._trim_history(current)
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
                self.changed.set()
        return response

    def register_crd(self, crd: Mapping[str, Any]) -> list[kmock.resource]:
        """Serve a CRD's resources (discovery) and their printer columns (the ``Table`` format)."""
        registered = register_crd(self, crd)
        for res in registered:
            try:
                self.printer_columns[res] = printer_columns(crd, str(res.version))
            except ValueError as e:  # served, as plain lists (kubectl prints NAME AGE)
                log.warning("no Table for %s: %s", res.plural, e)
        return registered

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
        """``POST .../pods/{name}/eviction``: the rule of :mod:`~hecate_lab.kubeapi.eviction`, then delete the pod."""
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
        if isinstance(result, dict):
            for entry in result.get("resources") or []:
                if "/" in entry.get("name", ""):  # a subresource: no short names (kubectl warns of a clash)
                    entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
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
        if self._table_wanted(request):
            return self._table(request, items)
        return {
            "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
            "kind": f"{kind}List" if kind else "List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        obj = await super()._serve_fetch(request)
        if self._table_wanted(request) and isinstance(obj, Mapping):
            return self._table(request, [obj])
        return obj

    def _table_wanted(self, request: kmock.Request) -> bool:
        """A ``Table`` for resources a CRD defines; the others keep their plain answer (kubectl prints NAME AGE)."""
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), None)
        return request.resource in self.printer_columns and wants_table(accept)

    def _table(self, request: kmock.Request, items: list[Any]) -> dict[str, Any]:
        columns = self.printer_columns[cast(kmock.resource, request.resource)]
        return table(items, columns, self.resource_version, utcnow(), request.params.get("includeObject"))

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


def build_emulator(manifest: LabManifest, now: dt.datetime | None = None) -> LabKubernetesEmulator:
    """The emulator with k3s's builtin resources and one Node per lab node."""
    now = now or utcnow()
    emulator = LabKubernetesEmulator(server_version=manifest.k3s_version)
    emulator.resources.load_bundled()
    if manifest.flux:
        for crd in FLUX_CRDS:
            emulator.seed(CRDS, crd)
            emulator.register_crd(crd)
    for index, node in enumerate(manifest.nodes):
        ready = node_ready_condition(read_node_state(node) or {}, None, now)
        emulator.seed(NODES, node_object(node, ready, k3s_version=manifest.k3s_version, index=index))
        emulator.seed(LEASES, lease_object(node, now))
    return emulator
