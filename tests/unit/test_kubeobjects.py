"""hecate.domain.kubeobjects: references, the kinds table and what is read off an object (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from hecate.domain.kubeobjects import (
    CACHEABLE_KINDS,
    FLUX_KINDS,
    KINDS,
    SCALABLE_KINDS,
    WORKLOAD_KINDS,
    canonical_ref,
    drain_skip_reason,
    flux_summary,
    format_ref,
    git_repository_summary,
    node_ready,
    object_ref,
    parse_ref,
    pod_ref,
)


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"ownerReferences": [{"kind": "ReplicaSet", "name": "web-1"}]}, None),
        ({"ownerReferences": [{"kind": "DaemonSet", "name": "svclb"}]}, "DaemonSet pod"),
        ({"annotations": {"kubernetes.io/config.mirror": "abc"}}, "mirror pod"),
        ({}, None),
    ],
)
def test_drain_skip_reason(meta: dict[str, Any], expected: str | None) -> None:
    assert drain_skip_reason({"metadata": {"name": "p", "namespace": "n", **meta}}) == expected


def test_parse_ref() -> None:
    assert parse_ref("apps/deployment/web") == ("apps", "Deployment", "web")
    for bad in ("Deployment/web", "/deployment/web", "a/b/c/d"):
        with pytest.raises(ValueError, match="namespace/kind/name"):
            parse_ref(bad)


def test_the_earlier_written_form_is_still_read() -> None:
    # journals and run records written before one syntax: Kind/namespace/name, Kind//name
    assert parse_ref("Deployment/apps/web") == ("apps", "Deployment", "web")
    assert parse_ref("Kustomization/flux-system/apps", FLUX_KINDS) == ("flux-system", "Kustomization", "apps")
    assert parse_ref("Node//a1") == ("", "Node", "a1")
    with pytest.raises(ValueError, match="namespace/kind/name"):
        parse_ref("Deployment/web")  # never a form Hecate wrote


@pytest.mark.parametrize(
    ("ref", "kinds", "error"),
    [
        ("apps/pod/web", None, "kind 'pod' is not allowed here"),
        ("apps/secret/token", CACHEABLE_KINDS, "the kind must be one of deployment, statefulset"),
        ("apps/daemonset/lb", SCALABLE_KINDS, "kind 'daemonset'"),
        ("gitea/namespace/gitea", None, "a Namespace is written /namespace/NAME"),
        ("a1/node/x", None, "a Node is written /node/NAME"),
        ("apps//web", None, "is not namespace/kind/name"),
        ("apps/deployment/", None, "is not namespace/kind/name"),
    ],
)
def test_parse_ref_refuses_what_cannot_be_named(ref: str, kinds: tuple[str, ...] | None, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_ref(ref, kinds)


def test_one_syntax_written_in_lower_case_read_in_any() -> None:
    assert format_ref("apps", "Deployment", "web") == "apps/deployment/web"
    assert format_ref(None, "Node", "a1") == "/node/a1"
    assert canonical_ref("kube-system/DaemonSet/svclb") == "kube-system/daemonset/svclb"
    assert canonical_ref("/Namespace/gitea") == "/namespace/gitea"
    assert parse_ref("flux-system/KUSTOMIZATION/apps", FLUX_KINDS) == ("flux-system", "Kustomization", "apps")
    manifest = {"kind": "HelmRelease", "metadata": {"name": "gitea", "namespace": "gitea"}}
    assert object_ref(manifest) == "gitea/helmrelease/gitea"
    assert object_ref({"metadata": {"name": "web", "namespace": "apps"}}, "StatefulSet") == "apps/statefulset/web"
    assert pod_ref({"metadata": {"name": "web-1", "namespace": "apps"}}) == "apps/web-1"
    for kind in KINDS.values():  # every object Hecate can name, it can parse back
        namespace = "ns" if kind.namespaced else ""
        assert parse_ref(format_ref(namespace, kind.name, "x")) == (namespace, kind.name, "x")


def test_the_narrower_lists_are_views_of_the_one_table() -> None:
    assert set(WORKLOAD_KINDS) | set(FLUX_KINDS) | {"GitRepository"} <= set(CACHEABLE_KINDS) <= set(KINDS)
    assert set(SCALABLE_KINDS) < set(WORKLOAD_KINDS)
    assert "Node" in KINDS
    assert "Node" not in CACHEABLE_KINDS
    assert "Secret" not in KINDS
    assert KINDS["Deployment"].api_version == "apps/v1"
    assert KINDS["Namespace"].api_version == "v1"
    assert KINDS["HelmRelease"].api_version == "helm.toolkit.fluxcd.io/v2"


def test_flux_summary_and_the_git_repository() -> None:
    requested = {"reconcile.fluxcd.io/requestedAt": "t1", "hecate.io/suspended-by": "hecate"}
    ks = {"metadata": {"annotations": requested}, "spec": {"suspend": True},
          "status": {"conditions": [{"type": "Ready", "status": "True", "message": "Applied"}],
                     "lastHandledReconcileAt": "t0"}}
    assert flux_summary(ks) == {"ready": True, "suspended": True, "ours": True, "message": "Applied", "fresh": False}
    assert flux_summary({})["fresh"] is True  # no reconcile requested: whatever status there is counts
    repo = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "t1"}},
            "spec": {"ref": {"branch": "main", "tag": "v1"}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "GitOperationFailed",
                                       "message": "clone"}], "lastHandledReconcileAt": "t1"}}
    assert git_repository_summary(repo) == {
        "ready": False, "reason": "GitOperationFailed", "message": "clone", "branch": "main", "pinned": True,
        "suspended": False, "requested_at": "t1", "handled_at": "t1"}
    assert node_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not node_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
