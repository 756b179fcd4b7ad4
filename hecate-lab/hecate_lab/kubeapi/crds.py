"""CustomResourceDefinitions: created through the API they become served resources; Flux's are installed.

kmock serves only the resources it knows; a CRD created through the lab API is registered
with kmock's discovery (:func:`register_crd`), and the lab installs the Flux CRDs at start,
as ``flux install`` would (:data:`FLUX_CRDS`). See docs/lab-kubeapi.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kmock

from hecate_lab.kubeapi.resources import CRUD_VERBS


def register_crd(emulator: kmock.KubernetesScaffold, crd: Mapping[str, Any]) -> list[kmock.resource]:
    """Make a CustomResourceDefinition's served versions known to kmock's discovery.

    Returns the resources registered. :class:`~hecate_lab.kubeapi.emulator.LabKubernetesEmulator` calls this when a
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


def established_status(crd: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status the API server gives a CRD it accepted: names accepted, established."""
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
