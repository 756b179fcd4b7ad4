"""Objects by reference: get, export, create the missing ones, delete.

Why this module exists: the bootstrap cache exports the objects Gitea needs while the
cluster is healthy and creates them again when Flux and Gitea deadlock after a cold start;
drills delete them to prove that works. Any kind the bootstrap cache may hold
(:data:`~hecate.domain.kubeobjects.CACHEABLE_KINDS`) goes through the same few REST paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.transport import Transport
from hecate.domain.kubeobjects import CACHEABLE_KINDS, KINDS, clean_manifest, object_ref, parse_ref


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    spec = KINDS[kind]
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{spec.plural}" if spec.namespaced else f"{root}/{spec.plural}"
    return f"{path}/{name}" if name else path


class ObjectOps(Transport):
    async def get_object(self, ref: str, api_version: str | None = None) -> dict[str, Any] | None:
        """The live object ``namespace/kind/name`` (a kind of :data:`CACHEABLE_KINDS`), None if absent."""
        namespace, kind, name = parse_ref(ref, CACHEABLE_KINDS)
        try:
            data = await self._raw(f"get {ref}", "GET",
                                   _path(api_version or KINDS[kind].api_version, kind, namespace or None, name))
        except KubeNotFound:
            return None
        return dict(data or {})

    async def export(self, refs: Iterable[str]) -> list[dict[str, Any]]:
        """The objects as manifests (:func:`~hecate.domain.kubeobjects.clean_manifest`); KubeNotFound
        names a missing one."""
        manifests: list[dict[str, Any]] = []
        for ref in refs:
            obj = await self.get_object(ref)
            if obj is None:
                raise KubeNotFound(f"export {ref}: not found", status=404)
            manifests.append(clean_manifest(obj))
        return manifests

    async def apply_missing(self, manifests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Create the objects that do not exist; never touches one that does (the cache may be older
        than Git). Returns ``{"created": [refs], "present": [refs], "failed": {ref: error}}``; an
        ApiUnavailable carries that result so far in ``err.partial``."""
        result: dict[str, Any] = {"created": [], "present": [], "failed": {}}
        for manifest in manifests:
            kind = str(manifest.get("kind"))
            ref = object_ref(manifest)
            if kind not in CACHEABLE_KINDS:
                result["failed"][ref] = f"kind {kind} cannot be applied from the cache"
                continue
            try:
                namespace, _, _ = parse_ref(ref)
            except ValueError as err:
                result["failed"][ref] = str(err)
                continue
            api_version = str(manifest.get("apiVersion") or KINDS[kind].api_version)
            try:
                if await self.get_object(ref, api_version) is not None:
                    result["present"].append(ref)
                    continue
                await self._raw(f"create {ref}", "POST", _path(api_version, kind, namespace or None), dict(manifest),
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
        """Delete ``namespace/kind/name`` (drills break things with it); False if it was already gone."""
        namespace, kind, name = parse_ref(ref, CACHEABLE_KINDS)
        try:
            await self._raw(f"delete {ref}", "DELETE", _path(KINDS[kind].api_version, kind, namespace or None, name),
                            write=True)
        except KubeNotFound:
            return False
        return True
