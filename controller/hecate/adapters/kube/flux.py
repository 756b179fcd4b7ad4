"""Flux: suspend and resume reconciliation, read its status, steer its Git source.

Why this module exists: a shutdown suspends every Kustomization and HelmRelease so that
Flux cannot undo the scale-down behind its back, and a startup must resume exactly the
ones Hecate suspended (a user's suspension stays), re-point the GitRepository and ask
Flux to reconcile at once. Which Flux version the cluster serves is found on first use;
a kind whose CRD is not installed contributes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from kubernetes import client as kclient

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.transport import Transport
from hecate.domain import timestamps
from hecate.domain.kubeobjects import (
    FLUX_KINDS,
    GIT_REPOSITORY,
    KINDS,
    OWNER,
    RECONCILE_ANNOTATION,
    SUSPENDED_BY,
    Kind,
    annotations_of,
    flux_summary,
    format_ref,
    git_repository_summary,
    marked_by_hecate,
    object_ref,
    parse_ref,
)


def _now(*, fraction: bool = False) -> str:
    return timestamps.rfc3339(dt.datetime.now(tz=dt.UTC), fraction=fraction)


class FluxOps(Transport):
    async def _flux_version(self, kind: Kind) -> str | None:
        """The served version of a Flux kind, or None when its CRD is not installed (not cached)."""
        if kind.name not in self._served_versions:
            for version in kind.versions:
                try:
                    await self._call(f"list {kind.name} ({kind.group}/{version})", kclient.CustomObjectsApi,
                                     "list_cluster_custom_object", kind.group, version, kind.plural, limit=1)
                except KubeNotFound:
                    continue
                self._served_versions[kind.name] = version
                break
        return self._served_versions.get(kind.name)

    async def _flux_objects(self, kind: Kind) -> tuple[str | None, list[dict[str, Any]]]:
        version = await self._flux_version(kind)
        if version is None:
            return None, []
        try:
            data = await self._call(f"list {kind.name}", kclient.CustomObjectsApi, "list_cluster_custom_object",
                                    kind.group, version, kind.plural)
        except KubeNotFound:  # the CRD went away between the two calls
            self._served_versions.pop(kind.name, None)
            return None, []
        return version, list((data or {}).get("items", []))

    async def _flux_patch(self, what: str, kind: Kind, version: str | None, namespace: str, name: str,
                          body: dict[str, Any]) -> None:
        await self._patch(what, kclient.CustomObjectsApi, "patch_namespaced_custom_object",
                          kind.group, version, namespace, kind.plural, name, body=body)

    async def flux_suspend(self) -> dict[str, list[str]]:
        """Set ``spec.suspend: true`` on every Flux Kustomization and HelmRelease not yet suspended.

        Returns ``{"suspended": [refs Hecate suspended], "already_suspended": [refs that
        were suspended before]}`` -- startup must resume only the first list. Kinds whose
        CRD is not installed (404) contribute nothing; the kinds go in the order of
        :data:`~hecate.domain.kubeobjects.FLUX_KINDS`. Best effort: one object's refusal does
        not stop the others, and a KubeError at the end names them all; whenever this raises,
        ``err.partial`` is the same-shaped result of what was already suspended.
        """
        result: dict[str, list[str]] = {"suspended": [], "already_suspended": []}
        failed: list[str] = []
        for kind in (KINDS[k] for k in FLUX_KINDS):
            try:
                version, items = await self._flux_objects(kind)
            except KubeError as err:
                err.partial = result
                raise
            for obj in items:
                ref = object_ref(obj, kind.name)
                if (obj.get("spec") or {}).get("suspend") is True:
                    # Suspended by us earlier (a resumed or repeated run): still ours to resume.
                    ours = marked_by_hecate(obj, SUSPENDED_BY)
                    result["suspended" if ours else "already_suspended"].append(ref)
                    continue
                namespace, _, name = parse_ref(ref)
                try:
                    await self._flux_patch(f"suspend {ref}", kind, version, namespace, name,
                                           {"spec": {"suspend": True},
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
            namespace, kind, name = parse_ref(ref, (*FLUX_KINDS, GIT_REPOSITORY))
            version = await self._flux_version(KINDS[kind])
            if version is None:
                continue
            body: dict[str, Any] = {"spec": {"suspend": False}, "metadata": {"annotations": {SUSPENDED_BY: None}}}
            if reconcile:
                body["metadata"]["annotations"][RECONCILE_ANNOTATION] = _now()
            try:
                await self._flux_patch(f"resume {ref}", KINDS[kind], version, namespace, name, body)
            except KubeNotFound:
                continue
            except KubeError as err:
                err.partial = resumed
                raise
            resumed.append(ref)
        return resumed

    async def flux_status(self) -> dict[str, dict[str, Any]]:
        """Every Kustomization and HelmRelease: ``{ref: {"ready", "suspended", "ours", "message", "fresh"}}``."""
        out: dict[str, dict[str, Any]] = {}
        for kind in (KINDS[k] for k in FLUX_KINDS):
            _, items = await self._flux_objects(kind)
            for obj in items:
                out[object_ref(obj, kind.name)] = flux_summary(obj)
        return out

    async def git_repository(self, namespace: str, name: str) -> dict[str, Any]:
        """``{"ready", "reason", "message", "branch", "pinned", "suspended", "requested_at", "handled_at"}``
        (``pinned``: a tag, semver, name or commit overrides the branch); KubeNotFound if it is absent."""
        repo = KINDS[GIT_REPOSITORY]
        version = await self._flux_version(repo)
        if version is None:
            raise KubeNotFound("the GitRepository CRD is not installed", status=404)
        obj = await self._call(f"get {format_ref(namespace, repo.name, name)}", kclient.CustomObjectsApi,
                               "get_namespaced_custom_object", repo.group, version, namespace, repo.plural, name)
        return git_repository_summary(obj)

    async def set_git_branch(self, namespace: str, name: str, branch: str) -> str | None:
        """Point the GitRepository at ``branch`` (and request a reconcile); returns the previous branch."""
        current = await self.git_repository(namespace, name)
        if current["branch"] == branch and not current["pinned"]:
            return branch
        repo = KINDS[GIT_REPOSITORY]
        version = await self._flux_version(repo)
        await self._flux_patch(f"set branch of {format_ref(namespace, repo.name, name)}", repo, version,
                               namespace, name,
                               # tag, semver, name and commit take precedence over branch in Flux: clear them
                               {"spec": {"ref": {"branch": branch, "tag": None, "semver": None, "name": None,
                                                 "commit": None}},
                                "metadata": {"annotations": {RECONCILE_ANNOTATION: _now()}}})
        previous: str | None = current["branch"]
        return previous

    async def request_reconcile(self, refs: Iterable[str]) -> list[str]:
        """Set ``reconcile.fluxcd.io/requestedAt`` on these Flux objects (GitRepository included)."""
        now = _now(fraction=True)
        done: list[str] = []
        for ref in refs:
            namespace, kind, name = parse_ref(ref, (*FLUX_KINDS, GIT_REPOSITORY))
            version = await self._flux_version(KINDS[kind])
            if version is None:
                continue
            try:
                await self._flux_patch(f"reconcile {ref}", KINDS[kind], version, namespace, name,
                                       {"metadata": {"annotations": {RECONCILE_ANNOTATION: now}}})
            except KubeNotFound:
                continue
            done.append(ref)
        return done

    async def clear_stale_suspend_marks(self) -> list[str]:
        """Drop ``suspended-by`` from Flux objects someone resumed by hand; returns their refs."""
        cleared: list[str] = []
        for kind in (KINDS[k] for k in FLUX_KINDS):
            version, items = await self._flux_objects(kind)
            for obj in items:
                if annotations_of(obj).get(SUSPENDED_BY) and (obj.get("spec") or {}).get("suspend") is not True:
                    ref = object_ref(obj, kind.name)
                    namespace, _, name = parse_ref(ref)
                    await self._flux_patch(f"clear mark on {ref}", kind, version, namespace, name,
                                           {"metadata": {"annotations": {SUSPENDED_BY: None}}})
                    cleared.append(ref)
        return cleared
