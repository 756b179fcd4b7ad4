"""Rule 5: Flux's GitRepositories, Kustomizations and HelmReleases, as source-controller and co. would.

A GitRepository is Ready when the workload serving it is available and it has the branch;
Kustomizations and HelmReleases follow their source unless suspended; a reconciling object
re-creates what it renders. See docs/lab-kubeapi.md for the contract.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hecate_lab.cluster_sim.objects import (
    BRANCHES,
    KIND_BY_LOWER,
    RENDERS,
    REQUESTED_AT,
    SERVED_BY,
    ObjRef,
    annotations_of,
    condition,
    condition_true,
    is_true,
    make_condition,
    meta_of,
    ref_text,
    spec_of,
    status_of,
)
from hecate_lab.cluster_sim.timing import format_time


def revision_of(branch: str, url: str) -> str:
    """A GitRepository artifact revision, ``<branch>@sha1:<40 hex>`` (stable per URL and branch)."""
    return f"{branch}@sha1:{hashlib.sha1(f'{url}#{branch}'.encode()).hexdigest()}"  # noqa: S324 - not security


def served_by(repo: Mapping[str, Any]) -> ObjRef | None:
    """The workload ``lab.hecate.io/served-by`` names (None: an external, always reachable server)."""
    text = annotations_of(repo).get(SERVED_BY)
    if not text:
        return None
    parts = str(text).split("/")
    if len(parts) != 3 or parts[1].lower() not in KIND_BY_LOWER:
        raise ValueError(f"{SERVED_BY}: {text!r} is not namespace/kind/name")
    return KIND_BY_LOWER[parts[1].lower()], parts[0], parts[2]


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
    spec = spec_of(repo)
    previous = status_of(repo)
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
                        "path": f"gitrepository/{meta_of(repo).get('namespace')}/{meta_of(repo).get('name')}/"
                                f"{revision.rsplit(':', 1)[-1]}.tar.gz"}
        status["artifact"] = artifact
    if not suspended:
        status["observedGeneration"] = meta_of(repo).get("generation", 1)
        _handled(repo, status)
    status["conditions"] = [make_condition("Ready", ok, reason, message, condition(repo, "Ready"), now)]
    return status


def source_ref(obj: Mapping[str, Any]) -> ObjRef | None:
    """A Kustomization's ``spec.sourceRef`` or a HelmRelease's ``spec.chart.spec.sourceRef``.

    The namespace defaults to the object's own.
    """
    spec = spec_of(obj)
    ref = spec.get("sourceRef") if obj.get("kind") == "Kustomization" else \
        ((spec.get("chart") or {}).get("spec") or {}).get("sourceRef")
    if not isinstance(ref, Mapping) or not ref.get("kind") or not ref.get("name"):
        return None
    return str(ref["kind"]), str(ref.get("namespace") or meta_of(obj).get("namespace")), str(ref["name"])


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
    revision = (status_of(repo).get("artifact") or {}).get("revision") or ""
    return Source(ready=condition_true(repo), revision=str(revision))


def flux_status(obj: Mapping[str, Any], source: Source, now: float) -> dict[str, Any] | None:
    """A Kustomization's or HelmRelease's status; None when suspended (the status stays as it was).

    Pure. Ready follows the source: Ready when the source is; otherwise Ready False with
    reason ``ArtifactFailed`` (Flux's "Source artifact not found, retrying in 30s"). A
    reconcile request is handled (``lastHandledReconcileAt``).
    """
    spec = spec_of(obj)
    if is_true(spec.get("suspend")):
        return None
    previous = status_of(obj)
    meta = meta_of(obj)
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
    if is_true(spec_of(obj).get("suspend")) or not condition_true(obj):
        return []
    default_ns = spec_of(obj).get("targetNamespace") or meta_of(obj).get("namespace")
    missing = []
    for manifest in rendered(obj):
        manifest = json.loads(json.dumps(manifest))
        meta = manifest.setdefault("metadata", {})
        meta.setdefault("namespace", default_ns)
        if (manifest["kind"], meta["namespace"], meta["name"]) not in existing:
            missing.append(manifest)
    return missing
