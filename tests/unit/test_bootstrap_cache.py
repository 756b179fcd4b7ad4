"""The bootstrap cache loader and the manifest cleaning it relies on (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hecate.domain.kubeobjects import canonical_ref, clean_manifest, object_ref, workload_available
from hecate.services.bootstrap_cache import CacheError, load

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: gitea-valkey, namespace: gitea}
spec: {replicas: 1}
---
apiVersion: v1
kind: Service
metadata: {name: gitea-http, namespace: gitea}
"""


def test_load_reads_every_yaml_file_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(DEPLOYMENT)
    (tmp_path / "a.yml").write_text("kind: Namespace\napiVersion: v1\nmetadata: {name: gitea}\n---\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    objects = load(tmp_path)
    assert [object_ref(o) for o in objects] == ["/namespace/gitea", "gitea/deployment/gitea-valkey",
                                                "gitea/service/gitea-http"]


def test_missing_directory_is_an_empty_cache(tmp_path: Path) -> None:
    assert load(tmp_path / "absent") == []


@pytest.mark.parametrize(("text", "error"), [
    ("kind: [", "cannot read"),
    ("- just a list\n", "document 1 is not a Kubernetes object"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "kind Pod cannot be applied"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "document 1 is not a Kubernetes object"),
])
def test_bad_files_name_the_file_and_document(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(CacheError, match=error) as info:
        load(tmp_path)
    assert str(path) in str(info.value)


def test_clean_manifest_drops_what_the_server_owns_and_undoes_our_scale_down() -> None:
    live = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "uid": "u", "resourceVersion": "7", "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                         "annotations": {"hecate.io/original-replicas": "3", "team": "web"}},
            "spec": {"replicas": 0}, "status": {"readyReplicas": 0}}
    clean = clean_manifest(live)
    assert clean == {"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": "web", "namespace": "apps", "annotations": {"team": "web"}},
                     "spec": {"replicas": 3}}
    assert live["metadata"]["uid"] == "u"  # the input is not modified


def test_refs_and_availability() -> None:
    assert canonical_ref("gitea/Deployment/gitea") == "gitea/deployment/gitea"
    assert canonical_ref("longhorn-system/daemonset/longhorn-manager") == "longhorn-system/daemonset/longhorn-manager"
    with pytest.raises(ValueError, match="kind 'pod'"):
        canonical_ref("ns/pod/x")
    ready = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    assert workload_available("Deployment", ready) == (True, "2/2 ready")
    assert workload_available("Deployment", {"spec": {"replicas": 2}, "status": {}}) == (False, "0/2 ready")
    assert workload_available("StatefulSet", {"spec": {"replicas": 0}}) == (True, "0/0 ready")
    assert workload_available("DaemonSet", {"status": {"desiredNumberScheduled": 3, "numberReady": 2}}) == (
        False, "2/3 ready")


def test_namespaced_objects_need_a_namespace_and_namespaces_come_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: gitea}\n"
                                     "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: gitea}\n")
    assert [o["kind"] for o in load(tmp_path)] == ["Namespace", "ConfigMap"]
    (tmp_path / "b.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gitea}\n")
    with pytest.raises(CacheError, match=r"Deployment gitea has no metadata\.namespace"):
        load(tmp_path)


def test_the_config_accepts_exactly_the_kinds_the_adapter_can_cache() -> None:
    import pydantic

    from hecate.domain import kubeobjects
    from hecate.domain.config import CACHEABLE_KINDS, HecateConfig

    assert sorted(CACHEABLE_KINDS) == sorted(k.lower() for k in kubeobjects.CACHEABLE_KINDS)
    ok = HecateConfig.model_validate({"flux": {"bootstrap_objects": ["gitea/deployment/gitea", "/namespace/gitea"]}})
    assert ok.flux.bootstrap_objects == ["gitea/deployment/gitea", "/namespace/gitea"]
    for bad, why in (("gitea/secret/admin", "kind must be one of"), ("/deployment/gitea", "needs its namespace"),
                     ("gitea/namespace/gitea", "a Namespace is written")):
        with pytest.raises(pydantic.ValidationError, match=why):
            HecateConfig.model_validate({"flux": {"bootstrap_objects": [bad]}})
