"""The kube adapter's startup operations against the lab's emulated API (real HTTP, real client).

Export/apply of the bootstrap cache, GitRepository branch and reconcile requests, the
cordons and replicas Hecate recorded on the objects themselves. Assertions are on what
the API stores (spec and metadata), which the lab's simulator does not rewrite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hecate.adapters.kube import Kube, KubeNotFound
from hecate.domain.kubeobjects import RECONCILE_ANNOTATION
from hecate_lab.cluster_seed import seed_workloads
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=2))
    try:
        seed_workloads(running.kubeconfig)
        yield running
    finally:
        running.down()


@pytest.fixture
def kube(lab: Lab) -> Iterator[Kube]:
    k = Kube(lab.kubeconfig, 2.0)
    try:
        yield k
    finally:
        k.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_export_then_apply_recreates_only_what_is_missing(kube: Kube) -> None:
    refs = ["gitea/deployment/gitea", "/namespace/gitea"]
    manifests = run(kube.export(refs))
    assert [m["kind"] for m in manifests] == ["Deployment", "Namespace"]
    assert "status" not in manifests[0]
    assert "resourceVersion" not in manifests[0]["metadata"]
    assert manifests[0]["spec"]["replicas"] == 1

    before = kube.writes
    assert run(kube.apply_missing(manifests)) == {"created": [], "present": refs, "failed": {}}
    assert kube.writes == before  # nothing missing: nothing written

    run(kube._raw("delete gitea", "DELETE", "/apis/apps/v1/namespaces/gitea/deployments/gitea"))
    assert run(kube.get_object("gitea/deployment/gitea")) is None
    result = run(kube.apply_missing(manifests))
    assert result["created"] == ["gitea/deployment/gitea"]
    assert result["present"] == ["/namespace/gitea"]
    again = run(kube.get_object("gitea/deployment/gitea"))
    assert again is not None
    assert again["spec"]["replicas"] == 1

    with pytest.raises(KubeNotFound, match="gitea/deployment/nope"):
        run(kube.export(["gitea/deployment/nope"]))
    bad = run(kube.apply_missing([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}]))
    assert bad["failed"] == {"x/pod/p": "kind Pod cannot be applied from the cache"}


def test_git_repository_branch_and_reconcile(kube: Kube) -> None:
    repo = run(kube.git_repository("flux-system", "flux-system"))
    assert repo["branch"] == "main"
    before = kube.writes
    assert run(kube.set_git_branch("flux-system", "flux-system", "main")) == "main"
    assert kube.writes == before  # already there: no write
    assert run(kube.set_git_branch("flux-system", "flux-system", "release")) == "main"
    assert run(kube.git_repository("flux-system", "flux-system"))["branch"] == "release"
    with pytest.raises(KubeNotFound):
        run(kube.git_repository("flux-system", "absent"))

    done = run(kube.request_reconcile(["flux-system/gitrepository/flux-system", "flux-system/kustomization/gone",
                                       "gitea/helmrelease/gitea"]))
    assert done == ["flux-system/gitrepository/flux-system", "gitea/helmrelease/gitea"]
    obj = run(kube.get_object("gitea/helmrelease/gitea"))
    assert RECONCILE_ANNOTATION in obj["metadata"]["annotations"]


def test_flux_status_cordons_and_restore_follow_the_ownership_annotations(kube: Kube, lab: Lab) -> None:
    suspended = run(kube.flux_suspend())
    status = run(kube.flux_status())
    ours = sorted(ref for ref, s in status.items() if s["suspended"] and s["ours"])
    assert ours == sorted(suspended["suspended"])
    assert "flux-system/kustomization/experiments" not in ours  # a user's suspension is never ours

    agents = [n.name for n in lab.nodes if n.role == "agent"]
    assert run(kube.cordon(agents[0])) is True
    run(kube._raw("cordon by a user", "PATCH", f"/api/v1/nodes/{agents[1]}", {"spec": {"unschedulable": True}},
                  write=True, content_type="application/merge-patch+json"))
    assert run(kube.cordoned_by_hecate()) == [agents[0]]

    scaled = run(kube.scale_down("hecate.io/tier=apps"))
    assert scaled == {"apps/deployment/web": 2, "apps/deployment/api": 1}
    run(kube.scale("apps/deployment/api", 0))  # someone else scaled it to 0 later and dropped our record
    assert run(kube.restore_replicas("", None)) == {"apps/deployment/web": 2}
    web = run(kube.get_object("apps/deployment/web"))
    assert web["spec"]["replicas"] == 2
    assert "hecate.io/original-replicas" not in (web["metadata"].get("annotations") or {})
    assert run(kube.restore_replicas("", None)) == {}  # idempotent


def test_stale_marks_are_cleared_so_a_later_manual_cordon_is_not_taken_for_hecates(kube: Kube, lab: Lab) -> None:
    agent = next(n.name for n in lab.nodes if n.role == "agent")
    merge = "application/merge-patch+json"
    assert run(kube.cordon(agent)) is True
    run(kube.flux_suspend())
    # A person finishes by hand: uncordon and `flux resume`, which leave Hecate's annotations behind.
    run(kube._raw("uncordon", "PATCH", f"/api/v1/nodes/{agent}", {"spec": {"unschedulable": None}},
                  write=True, content_type=merge))
    run(kube._raw("resume", "PATCH", "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/"
                  "flux-system", {"spec": {"suspend": False}}, write=True, content_type=merge))
    cleared = run(kube.clear_stale_marks())
    assert f"/node/{agent}" in cleared
    assert "flux-system/kustomization/flux-system" in cleared
    assert "gitea/helmrelease/gitea" not in cleared  # still suspended by Hecate: its mark stays
    # Later the person cordons the node on purpose: it is theirs, not Hecate's.
    run(kube._raw("cordon", "PATCH", f"/api/v1/nodes/{agent}", {"spec": {"unschedulable": True}},
                  write=True, content_type=merge))
    assert run(kube.cordoned_by_hecate()) == []
    assert run(kube.clear_stale_marks()) == []  # idempotent
