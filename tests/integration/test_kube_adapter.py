"""hecate.adapters.kube against the lab's emulated API (seeded by hecate_lab.cluster_seed).

The lab's pure PodDisruptionBudget rule is tested first, without a server (the adapter's
pure pieces live in ``hecate.domain.kubeobjects``, tested in tests/unit/test_kubeobjects.py).
The rest runs the real adapter (the official client, in threads) against a whole lab
(``Lab.up``: real sshd nodes, emulated API) filled with ``seed_workloads``: Flux objects,
tiered workloads, a DaemonSet pod per node and a PDB that blocks evicting
``gitea/gitea-postgresql-0``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from hecate.adapters.kube import ApiUnavailable, Kube, KubeError, KubeNotFound
from hecate.domain.kubeobjects import parse_ref
from hecate_lab.cluster_seed import BLOCKED_POD, Seeded, seed_workloads
from hecate_lab.cluster_sim import Delays, match_selector_object
from hecate_lab.kubeapi import api_url, start_kubeapi, stop_kubeapi, write_kubeconfig
from hecate_lab.kubeapi.eviction import EVICTION_REFUSED, eviction_verdict, scaled_value
from hecate_lab.nodestate import initial_state, write_state
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

API_TIMEOUT = 2.0
FAST = Delays(api=0.2, node=0.1, pod=0.1)  # the lab cluster comes up (and seed_workloads returns) sooner


# -- the PodDisruptionBudget rule, without a server ------------------------------------------


def pod(name: str, labels: dict[str, str] | None = None, *, deleting: bool = False,
        phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "data", "labels": labels or {"app": "db"}}
    if deleting:
        meta["deletionTimestamp"] = "2025-03-01T12:00:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


def pdb(name: str = "db", selector: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "data"},
            "spec": {"selector": {"matchLabels": {"app": "db"}} if selector is None else selector, **spec}}


DB0, DB1, DB2 = pod("db-0"), pod("db-1"), pod("db-2")


@pytest.mark.parametrize(
    ("target", "budgets", "pods", "allowed", "code"),
    [
        pytest.param(DB0, [], [DB0], True, 201, id="no-budget"),
        pytest.param(DB0, [pdb(minAvailable=1)], [DB0], False, 429, id="min1-of-1-blocks"),
        pytest.param(DB0, [pdb(minAvailable=1)], [DB0, DB1], True, 201, id="min1-of-2-allows"),
        pytest.param(DB0, [pdb(minAvailable=2)], [DB0, DB1], False, 429, id="min2-of-2-blocks"),
        pytest.param(DB0, [pdb(minAvailable=0)], [DB0], True, 201, id="min0-allows"),
        pytest.param(DB0, [pdb(minAvailable="50%")], [DB0, DB1], True, 201, id="min50pct-of-2"),
        pytest.param(DB0, [pdb(minAvailable="50%")], [DB0, DB1, DB2], True, 201, id="min50pct-of-3-needs-2"),
        pytest.param(DB0, [pdb(minAvailable="51%")], [DB0, DB1], False, 429, id="pct-rounds-up"),
        pytest.param(DB0, [pdb(minAvailable="100%")], [DB0, DB1], False, 429, id="min100pct-blocks"),
        pytest.param(DB0, [pdb(maxUnavailable=1)], [DB0, DB1], True, 201, id="max1-allows"),
        pytest.param(DB0, [pdb(maxUnavailable=0)], [DB0, DB1], False, 429, id="max0-blocks"),
        pytest.param(DB0, [pdb(maxUnavailable=1)], [DB0, DB1, pod("db-2", deleting=True)], False, 429,
                     id="max1-one-already-going"),
        pytest.param(DB0, [pdb(minAvailable=1)], [DB0, pod("db-1", deleting=True)], False, 429,
                     id="terminating-peers-are-not-healthy"),
        pytest.param(DB0, [pdb(minAvailable=1)], [DB0, pod("db-1", phase="Failed")], False, 429,
                     id="failed-peers-are-not-healthy"),
        pytest.param(pod("db-0", deleting=True), [pdb(minAvailable=1)], [pod("db-0", deleting=True)], True, 201,
                     id="pod-already-deleting"),
        pytest.param(pod("db-0", phase="Succeeded"), [pdb(minAvailable=1)], [DB0], True, 201,
                     id="finished-pod-always-goes"),
        pytest.param(DB0, [pdb(selector={"matchLabels": {"app": "web"}}, minAvailable=1)], [DB0], True, 201,
                     id="other-selector"),
        pytest.param(DB0, [pdb(selector={}, minAvailable=1)], [DB0], False, 429, id="empty-selector-selects-all"),
        pytest.param(DB0, [{"metadata": {"name": "x"}, "spec": {"minAvailable": 1}}], [DB0], True, 201,
                     id="null-selector-selects-none"),
        pytest.param(DB0, [pdb(), ], [DB0], True, 201, id="neither-min-nor-max"),
        pytest.param(DB0, [pdb("a", minAvailable=0), pdb("b", minAvailable=0)], [DB0], False, 500,
                     id="two-budgets-unsupported"),
    ],
)
def test_eviction_verdict(target: dict[str, Any], budgets: list[dict[str, Any]], pods: list[dict[str, Any]],
                          allowed: bool, code: int) -> None:
    verdict = eviction_verdict(target, budgets, pods)
    assert (verdict.allowed, verdict.code) == (allowed, code)


def test_eviction_verdict_words_it_like_the_api() -> None:
    verdict = eviction_verdict(DB0, [pdb("postgres", minAvailable=1)], [DB0])
    assert verdict.message == EVICTION_REFUSED == "Cannot evict pod as it would violate the pod's disruption budget."
    assert verdict.budget == "postgres"
    assert verdict.cause == "The disruption budget postgres needs 1 healthy pods and has 1 currently"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {"a": "1"}, False),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": ""}, False),
    ],
)
def test_match_selector_object(selector: dict[str, Any] | None, labels: dict[str, str], expected: bool) -> None:
    assert match_selector_object(selector, labels) is expected


@pytest.mark.parametrize(("value", "total", "expected"), [(2, 5, 2), ("50%", 3, 2), ("0%", 3, 0), ("100%", 3, 3)])
def test_scaled_value(value: int | str, total: int, expected: int) -> None:
    assert scaled_value(value, total) == expected


# -- against the lab -------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=2, delays=FAST))
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def seeded(lab: Lab) -> Seeded:
    return seed_workloads(lab.kubeconfig)


@pytest.fixture
def kube(lab: Lab) -> Iterator[Kube]:
    k = Kube(lab.kubeconfig, API_TIMEOUT, retry_interval=0.25)
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def api(lab: Lab) -> Iterator[kclient.ApiClient]:
    api_client = kconfig.new_client_from_config(config_file=str(lab.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def flux_suspend_field(api: kclient.ApiClient, ref: str) -> Any:
    namespace, kind, name = parse_ref(ref)
    group, version, plural = {
        "Kustomization": ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
        "HelmRelease": ("helm.toolkit.fluxcd.io", "v2", "helmreleases"),
    }[kind]
    obj = kclient.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, plural, name)
    return obj["spec"].get("suspend")


def replicas_of(api: kclient.ApiClient, ref: str) -> int:
    namespace, kind, name = parse_ref(ref)
    apps = kclient.AppsV1Api(api)
    read = apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_stateful_set
    return int(read(name, namespace).spec.replicas)


def pods_on(api: kclient.ApiClient, node: str) -> set[str]:
    items = kclient.CoreV1Api(api).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    return {f"{p.metadata.namespace}/{p.metadata.name}" for p in items}


async def test_reads_make_no_writes(kube: Kube, seeded: Seeded) -> None:
    assert (await kube.server_version()).endswith("+k3s1")
    assert await kube.nodes_ready() == {"titan-s1": True, "titan-a1": True, "titan-a2": True}
    assert await kube.volume_attachments() == []
    assert kube.writes == 0  # what a dry-run does: look, never touch


async def test_flux_suspend_then_resume_only_what_hecate_suspended(kube: Kube, seeded: Seeded,
                                                                   api: kclient.ApiClient) -> None:
    assert seeded.flux_active == ["flux-system/kustomization/flux-system", "gitea/helmrelease/gitea",
                                  "gitea/helmrelease/gitea-valkey"]
    assert seeded.flux_user_suspended == ["flux-system/kustomization/experiments"]

    result = await kube.flux_suspend()
    assert result == {"suspended": seeded.flux_active, "already_suspended": seeded.flux_user_suspended}
    assert kube.writes == 3
    for ref in [*seeded.flux_active, *seeded.flux_user_suspended]:
        assert flux_suspend_field(api, ref) is True

    again = await kube.flux_suspend()  # idempotent: nothing written, and Hecate's own still count as Hecate's
    assert again == result
    assert kube.writes == 3

    resumed = await kube.flux_resume([*result["suspended"], "flux-system/kustomization/deleted-meanwhile"],
                                     reconcile=True)
    assert resumed == seeded.flux_active  # the missing one is ignored
    assert kube.writes == 7
    for ref in seeded.flux_active:
        assert flux_suspend_field(api, ref) is False
    assert flux_suspend_field(api, "flux-system/kustomization/experiments") is True  # the user's stays
    ks = kclient.CustomObjectsApi(api).get_namespaced_custom_object(
        "kustomize.toolkit.fluxcd.io", "v1", "flux-system", "kustomizations", "flux-system")
    assert "reconcile.fluxcd.io/requestedAt" in ks["metadata"]["annotations"]


async def test_scale_down_records_replicas_and_scale_restores(kube: Kube, seeded: Seeded,
                                                              api: kclient.ApiClient) -> None:
    apps_tier = await kube.scale_down("hecate.io/tier=apps", None)
    assert apps_tier == {"apps/deployment/web": 2, "apps/deployment/api": 1}
    assert {ref: replicas_of(api, ref) for ref in apps_tier} == {"apps/deployment/web": 0, "apps/deployment/api": 0}
    assert replicas_of(api, "data/deployment/redis") == 1  # another tier: untouched
    assert kube.writes == 2
    assert await kube.scale_down("hecate.io/tier=apps", None) == apps_tier  # originals come from the objects
    assert kube.writes == 2

    data_tier = await kube.scale_down("hecate.io/tier=data", "data")
    assert data_tier == {"data/deployment/redis": 1, "data/statefulset/postgres": 1}
    assert replicas_of(api, "data/statefulset/postgres") == 0
    assert await kube.scale_down("hecate.io/tier=foundation", "apps") == {}  # wrong namespace: nothing

    for ref, replicas in {**apps_tier, **data_tier}.items():
        await kube.scale(ref, replicas)
        assert replicas_of(api, ref) == replicas
    assert kube.writes == 8

    not_found = r'scale apps/deployment/nope to 1: 404 NotFound: deployments.apps "nope" not found'
    with pytest.raises(KubeNotFound, match=not_found):
        await kube.scale("apps/deployment/nope", 1)
    with pytest.raises(KubeError, match="400") as bad:
        await kube.scale_down("not a selector", None)
    assert not isinstance(bad.value, ApiUnavailable)
    assert bad.value.status == 400


async def test_cordon_reports_whether_hecate_changed_it(kube: Kube, api: kclient.ApiClient) -> None:
    core = kclient.CoreV1Api(api)
    assert await kube.cordon("titan-a1") is True
    assert core.read_node("titan-a1").spec.unschedulable is True
    assert await kube.cordon("titan-a1") is True  # cordoned by Hecate earlier: still Hecate's to undo
    assert kube.writes == 1
    core.patch_node("titan-a2", {"spec": {"unschedulable": True}})  # cordoned by a person
    assert await kube.cordon("titan-a2") is False  # not Hecate's to undo
    await kube.uncordon("titan-a1")
    assert not core.read_node("titan-a1").spec.unschedulable
    assert await kube.cordon("titan-a1") is True
    with pytest.raises(KubeNotFound, match="/node/titan-x9"):
        await kube.cordon("titan-x9")


async def test_drain_evicts_skips_daemonsets_and_gives_up_on_a_pdb(kube: Kube, seeded: Seeded,
                                                                   api: kclient.ApiClient) -> None:
    for agent in ("titan-a1", "titan-a2"):  # cordoned first, as a drain needs: the lab's controller re-creates
        kclient.CoreV1Api(api).patch_node(agent, {"spec": {"unschedulable": True}})  # evicted pods elsewhere
    free_node = next(n for n in ("titan-a1", "titan-a2") if n != seeded.blocked_node)
    ds_pod = seeded.daemonset_pods[free_node]
    normal = sorted(set(seeded.pods_by_node[free_node]) - {ds_pod})
    assert normal

    start = time.monotonic()
    result = await kube.drain(free_node, timeout_s=5)
    took = time.monotonic() - start
    assert sorted(result["evicted"]) == normal
    assert result["skipped"] == {ds_pod: "DaemonSet pod"}
    assert (result["blocked"], result["failed"], result["terminating"], result["timed_out"]) == ([], {}, [], False)
    assert took < 1.5  # nothing blocked: no waiting
    assert pods_on(api, free_node) == {ds_pod}
    assert kube.writes == len(normal)

    blocked_node = seeded.blocked_node
    ds_pod = seeded.daemonset_pods[blocked_node]
    others = sorted(set(seeded.pods_by_node[blocked_node]) - {ds_pod, BLOCKED_POD})
    writes_before = kube.writes
    start = time.monotonic()
    result = await kube.drain(blocked_node, timeout_s=2)
    took = time.monotonic() - start
    assert 1.9 <= took < 2 + API_TIMEOUT  # bounded by the drain timeout, not by the PDB
    assert result["blocked"] == [BLOCKED_POD]
    assert result["timed_out"] is True
    assert sorted(result["evicted"]) == others
    assert result["skipped"] == {ds_pod: "DaemonSet pod"}
    assert pods_on(api, blocked_node) == {ds_pod, BLOCKED_POD}  # the PDB kept it
    retries = kube.writes - writes_before - len(others)
    assert retries >= 4  # refused evictions were retried every 0.25 s until the timeout


async def test_an_eviction_the_api_will_never_accept_fails_without_waiting(
        kube: Kube, seeded: Seeded, lab: Lab) -> None:
    second_budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                     "metadata": {"name": "gitea-postgresql-too", "namespace": "gitea"},
                     "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "gitea-postgresql"}}}}
    assert post(lab, "/apis/policy/v1/namespaces/gitea/poddisruptionbudgets", second_budget) == 201
    await kube.cordon(seeded.blocked_node)  # or the lab's controller re-creates evicted StatefulSet pods right there

    start = time.monotonic()
    result = await kube.drain(seeded.blocked_node, timeout_s=5)
    assert time.monotonic() - start < 1.5  # a 500 is not retried like a PDB's 429
    assert list(result["failed"]) == [BLOCKED_POD]
    assert "500" in result["failed"][BLOCKED_POD]
    assert "more than one PodDisruptionBudget" in result["failed"][BLOCKED_POD]
    assert (result["blocked"], result["timed_out"]) == ([], False)
    assert await kube.nodes_ready()  # a refused eviction is not a dead API: no cool-down


def post(lab: Lab, path: str, body: dict[str, Any]) -> int:
    url = urllib.parse.urlsplit(api_url(lab.kubeconfig))
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        rsp = conn.getresponse()
        rsp.read()
        return rsp.status
    finally:
        conn.close()


async def test_volume_attachments_are_listed(kube: Kube, lab: Lab) -> None:
    assert await kube.volume_attachments() == []
    body = {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": "csi-4f1e"},
            "spec": {"attacher": "driver.longhorn.io", "nodeName": "titan-a1",
                     "source": {"persistentVolumeName": "pvc-9a7c"}}}
    assert post(lab, "/apis/storage.k8s.io/v1/volumeattachments", body) == 201
    assert await kube.volume_attachments() == ["csi-4f1e"]


async def test_api_down_fails_fast_and_cools_down(lab: Lab, seeded: Seeded) -> None:
    kube = Kube(lab.kubeconfig, API_TIMEOUT, cooldown=30)
    assert await kube.nodes_ready()
    assert lab.kubeapi_pid is not None
    stop_kubeapi(lab.kubeapi_pid)
    lab.kubeapi_pid = None

    start = time.monotonic()
    with pytest.raises(ApiUnavailable) as first:
        await kube.cordon("titan-a1")
    assert time.monotonic() - start < API_TIMEOUT + 1
    assert first.value.status is None

    start = time.monotonic()
    for call in (kube.flux_suspend(), kube.drain("titan-a1", 10), kube.scale("apps/deployment/web", 0)):
        with pytest.raises(ApiUnavailable, match="not retried for another"):
            await call
    assert time.monotonic() - start < 0.2  # the cool-down: no network, no timeout
    assert kube.writes == 0  # nothing was sent
    kube.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a wedged API server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_wedged_api_costs_one_timeout(tmp_path: Path, silent_port: int) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, f"http://127.0.0.1:{silent_port}")
    kube = Kube(kubeconfig, 1.0, cooldown=0.5)
    start = time.monotonic()
    with pytest.raises(ApiUnavailable, match="cannot reach the API"):
        await kube.server_version()
    assert 0.9 <= time.monotonic() - start < 2.0  # one timeout, no urllib3 retries

    start = time.monotonic()
    with pytest.raises(ApiUnavailable, match="not retried"):
        await kube.nodes_ready()
    assert time.monotonic() - start < 0.1

    time.sleep(0.6)  # the cool-down is over: the next call tries (and waits) again
    start = time.monotonic()
    with pytest.raises(ApiUnavailable, match="cannot reach the API"):
        await kube.nodes_ready()
    assert time.monotonic() - start >= 0.9
    kube.close()


async def test_kubeconfig_missing_then_reloaded_after_the_cool_down(tmp_path: Path, lab: Lab) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kube = Kube(kubeconfig, API_TIMEOUT, cooldown=0.2)
    with pytest.raises(ApiUnavailable, match="does not exist"):
        await kube.server_version()

    write_kubeconfig(kubeconfig, f"http://127.0.0.1:{closed_port()}")
    time.sleep(0.25)
    start = time.monotonic()
    with pytest.raises(ApiUnavailable, match="cannot reach the API"):
        await kube.server_version()
    assert time.monotonic() - start < 1.0  # refused is immediate

    kubeconfig.write_bytes(lab.kubeconfig.read_bytes())  # the API is back, on another address
    time.sleep(0.25)
    assert (await kube.server_version()).startswith("v1.")
    kube.close()


async def test_the_cool_down_starts_short_grows_while_the_api_stays_down_and_resets(tmp_path: Path,
                                                                                   lab: Lab) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    refused = f"http://127.0.0.1:{closed_port()}"
    write_kubeconfig(kubeconfig, refused)
    kube = Kube(kubeconfig, API_TIMEOUT, cooldown=1.0)

    async def retry_after() -> float:
        with pytest.raises(ApiUnavailable, match="cannot reach the API") as err:
            await kube.server_version()
        with pytest.raises(ApiUnavailable, match="not retried for another") as again:
            await kube.server_version()  # within the cool-down: no network, and it says how long is left
        assert 0 < again.value.retry_after <= err.value.retry_after
        await asyncio.sleep(err.value.retry_after + 0.05)
        return err.value.retry_after

    assert [await retry_after() for _ in range(3)] == pytest.approx([0.5, 1.0, 1.0])  # doubled, capped
    kubeconfig.write_bytes(lab.kubeconfig.read_bytes())
    assert (await kube.server_version()).startswith("v1.")
    write_kubeconfig(kubeconfig, refused)
    kube.close()  # the next call reads the kubeconfig again
    assert await retry_after() == pytest.approx(0.5)  # a call that got through reset it
    kube.close()


async def test_without_flux_crds_flux_steps_are_empty(tmp_path: Path) -> None:
    node_dir = tmp_path / "n1"
    node_dir.mkdir()
    write_state(node_dir, initial_state("server"))
    manifest = tmp_path / "nodes.json"
    manifest.write_text(json.dumps({"flux": False,
                                    "nodes": [{"name": "n1", "role": "server", "dir": str(node_dir)}]}))
    proc = start_kubeapi(manifest, tmp_path / "kubeconfig", tmp_path / "kubeapi.log")
    try:
        kube = Kube(tmp_path / "kubeconfig", API_TIMEOUT)
        assert await kube.flux_suspend() == {"suspended": [], "already_suspended": []}
        assert await kube.flux_resume(["flux-system/kustomization/flux-system"]) == []
        assert kube.writes == 0
        kube.close()
    finally:
        stop_kubeapi(proc)


async def test_concurrent_calls_share_one_client(kube: Kube, seeded: Seeded) -> None:
    results = await asyncio.gather(*(kube.nodes_ready() for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert threading.active_count() < 64


async def test_repeated_shutdown_steps_still_know_what_hecate_changed(tmp_path: Path) -> None:
    """A resumed or repeated shutdown must not mistake Hecate's own changes for the user's."""
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=2, delays=FAST))
    try:
        seed_workloads(lab.kubeconfig)
        async with Kube(lab.kubeconfig, 5) as kube:
            first = await kube.flux_suspend()
            again = await kube.flux_suspend()
            assert sorted(again["suspended"]) == sorted(first["suspended"])
            assert again["already_suspended"] == ["flux-system/kustomization/experiments"]
            scaled = await kube.scale_down("hecate.io/tier=apps", None)
            assert await kube.scale_down("hecate.io/tier=apps", None) == scaled  # originals, not zeros
            assert await kube.cordon("titan-a1") is True
            assert await kube.cordon("titan-a1") is True  # still ours
            await kube.uncordon("titan-a1")
            await kube.flux_resume(first["suspended"])
            resumed_again = await kube.flux_suspend()  # annotations were cleared on resume
            assert sorted(resumed_again["suspended"]) == sorted(first["suspended"])
    finally:
        lab.down()
