"""The lab's emulated Kubernetes API (hecate.lab.kubeapi), driven by the official client.

The server tests start the real process (``python -m hecate.lab.kubeapi``) over three
fake lab nodes -- one server, two agents -- whose ``state.json`` files the tests rewrite
the way the nodes' sshd forced command does. The rule for the Ready condition and the
selector matching are tested on their own first, without a server.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from hecate.lab.cluster_seed import seed_workloads
from hecate.lab.kubeapi import (
    DEFAULT_K3S_VERSION,
    LabKubeApiError,
    LabNode,
    api_url,
    match_field_selector,
    match_label_selector,
    node_object,
    node_ready_condition,
    parse_manifest,
    parse_namespace_path,
    start_kubeapi,
    stop_kubeapi,
)
from hecate.lab.nodestate import initial_state, service_for, write_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

NODES = {"lab-s1": "server", "lab-a1": "agent", "lab-a2": "agent"}
T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
T0S = "2025-03-01T12:00:00Z"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ats(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(status: str, heartbeat: str, transition: str) -> dict[str, str]:
    ready = status == "True"
    return {
        "type": "Ready",
        "status": status,
        "reason": "KubeletReady" if ready else "NodeStatusUnknown",
        "message": "kubelet is posting ready status" if ready else "Kubelet stopped posting node status.",
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": transition,
    }


SERVER_UP = {"power": "on", "services": {"k3s": "active"}}
SERVER_STOPPED = {"power": "on", "services": {"k3s": "inactive"}}
AGENT_UP = {"power": "on", "services": {"k3s-agent": "active"}}
POWERED_OFF = {"power": "off", "services": {"k3s": "active"}}


# -- the rule, without a server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "previous", "seconds", "expected"),
    [
        pytest.param(SERVER_UP, None, 0, cond("True", T0S, T0S), id="first-look-running"),
        pytest.param(AGENT_UP, None, 0, cond("True", T0S, T0S), id="agent-service-counts"),
        pytest.param(SERVER_STOPPED, None, 0, cond("False", T0S, T0S), id="first-look-stopped"),
        pytest.param(POWERED_OFF, None, 0, cond("False", T0S, T0S), id="powered-off-service-active"),
        pytest.param({}, None, 0, cond("False", T0S, T0S), id="empty-state"),
        pytest.param({"power": "on", "services": {}}, None, 0, cond("False", T0S, T0S), id="no-services"),
        pytest.param(SERVER_UP, cond("True", T0S, T0S), 5, cond("True", T0S, T0S),
                     id="running-heartbeat-not-due-unchanged"),
        pytest.param(SERVER_UP, cond("True", T0S, T0S), 10, cond("True", ats(10), T0S),
                     id="running-heartbeat-due"),
        pytest.param(SERVER_STOPPED, cond("True", ats(3), T0S), 7, cond("False", ats(3), ats(7)),
                     id="stops-heartbeat-frozen-transition-now"),
        pytest.param(POWERED_OFF, cond("True", T0S, T0S), 4, cond("False", T0S, ats(4)),
                     id="power-off-flips"),
        pytest.param(SERVER_STOPPED, cond("False", T0S, ats(1)), 60, cond("False", T0S, ats(1)),
                     id="stopped-stays-unchanged"),
        pytest.param(SERVER_UP, cond("False", T0S, ats(1)), 2, cond("True", ats(2), ats(2)),
                     id="starts-again"),
        pytest.param(SERVER_UP, {"type": "Ready", "status": "Unknown"}, 0, cond("True", T0S, T0S),
                     id="previous-without-times"),
    ],
)
def test_node_ready_condition(state: dict[str, Any], previous: dict[str, Any] | None, seconds: float,
                              expected: dict[str, str]) -> None:
    assert node_ready_condition(state, previous, at(seconds)) == expected


def test_node_ready_condition_is_stable_when_nothing_is_due() -> None:
    first = node_ready_condition(SERVER_UP, None, T0)
    assert node_ready_condition(SERVER_UP, first, at(9.9)) == first
    assert node_ready_condition(SERVER_UP, first, at(5), heartbeat_period=dt.timedelta(seconds=2)) != first


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("role=server", True),
        ("role==server", True),
        ("role=agent", False),
        ("role!=agent", True),
        ("missing!=x", True),
        ("node-role.kubernetes.io/control-plane", True),
        ("!node-role.kubernetes.io/control-plane", False),
        ("!missing", True),
        ("role in (agent, server)", True),
        ("role notin (agent,server)", False),
        ("role in (agent),zone=a", False),
        ("role in (server), zone=a", True),
    ],
)
def test_label_selector(selector: str, expected: bool) -> None:
    labels = {"role": "server", "zone": "a", "node-role.kubernetes.io/control-plane": "true"}
    assert match_label_selector(labels, selector) is expected


def test_label_selector_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid label selector"):
        match_label_selector({}, "a b c")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=n1", True),
        ("metadata.name!=n1", False),
        ("spec.unschedulable=true", True),
        ("spec.unschedulable=true,metadata.name==n2", False),
        ("metadata.namespace=", True),
    ],
)
def test_field_selector(selector: str, expected: bool) -> None:
    obj = {"metadata": {"name": "n1"}, "spec": {"unschedulable": True}}
    assert match_field_selector(obj, selector) is expected


def test_node_objects_carry_k3s_labels() -> None:
    ready = cond("True", T0S, T0S)
    server = node_object(LabNode("s", "server", Path("/x")), ready, k3s_version=DEFAULT_K3S_VERSION)
    agent = node_object(LabNode("a", "agent", Path("/y"), address="10.0.0.2"), ready,
                        k3s_version=DEFAULT_K3S_VERSION)
    assert server["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true"
    assert server["metadata"]["labels"]["node-role.kubernetes.io/master"] == "true"
    assert "node-role.kubernetes.io/control-plane" not in agent["metadata"]["labels"]
    assert agent["metadata"]["labels"]["kubernetes.io/hostname"] == "a"
    assert agent["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.0.0.2"}
    assert server["status"]["nodeInfo"]["kubeletVersion"] == DEFAULT_K3S_VERSION
    assert server["status"]["conditions"][-1] == ready


def test_manifest_is_validated() -> None:
    with pytest.raises(LabKubeApiError, match="role must be server or agent"):
        parse_manifest({"nodes": [{"name": "n", "role": "master", "dir": "/x"}]})
    with pytest.raises(LabKubeApiError, match="duplicate"):
        parse_manifest({"nodes": [{"name": "n", "role": "agent", "dir": "/x"}] * 2})


# -- the process, through the official client ----------------------------------------------


@dataclass
class Lab:
    dirs: dict[str, Path]
    manifest: Path
    kubeconfig: Path
    log: Path
    pid: int

    def set_k3s(self, name: str, active: bool) -> None:
        service = service_for(NODES[name])
        state = "active" if active else "inactive"
        write_state(self.dirs[name], {"power": "on", "services": {service: state}})

    def power_off(self, name: str) -> None:
        write_state(self.dirs[name], {"power": "off", "services": {service_for(NODES[name]): "inactive"}})


def write_lab(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    dirs = {}
    for name, role in NODES.items():
        node_dir = tmp_path / "nodes" / name
        node_dir.mkdir(parents=True)
        write_state(node_dir, initial_state(role))
        dirs[name] = node_dir
    manifest = tmp_path / "lab-nodes.json"
    manifest.write_text(json.dumps({"nodes": [
        {"name": name, "role": role, "dir": str(dirs[name])} for name, role in NODES.items()
    ]}))
    return manifest, dirs


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    manifest, dirs = write_lab(tmp_path)
    kubeconfig, log = tmp_path / "kubeconfig", tmp_path / "kubeapi.log"
    proc = start_kubeapi(manifest, kubeconfig, log, timeout=15)
    try:
        yield Lab(dirs=dirs, manifest=manifest, kubeconfig=kubeconfig, log=log, pid=proc.pid)
    finally:
        try:
            stop_kubeapi(proc.pid, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def api(lab: Lab) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(lab.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def ready_of(node: Any) -> str:
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def wait_for(what: Callable[[], Any], expected: Any, timeout: float = 2.0) -> float:
    """Poll until what() == expected; the seconds it took."""
    start = time.monotonic()
    while (value := what()) != expected:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still {value!r}, not {expected!r}, after {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


def http_get(lab: Lab, path: str) -> tuple[int, Any]:
    url = urllib.parse.urlsplit(api_url(lab.kubeconfig))
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
    try:
        conn.request("GET", path)
        rsp = conn.getresponse()
        body = rsp.read()
        return rsp.status, json.loads(body) if body.startswith((b"{", b"[")) else body
    finally:
        conn.close()


def test_official_client_lists_the_nodes(lab: Lab) -> None:
    assert api_url(lab.kubeconfig).startswith("http://127.0.0.1:")
    config.load_kube_config(config_file=str(lab.kubeconfig))
    v1 = client.CoreV1Api()
    nodes = {n.metadata.name: n for n in v1.list_node().items}
    assert set(nodes) == set(NODES)
    for name, role in NODES.items():
        node = nodes[name]
        labels = node.metadata.labels
        assert labels["kubernetes.io/hostname"] == name
        is_server = role == "server"
        assert (labels.get("node-role.kubernetes.io/control-plane") == "true") is is_server
        assert (labels.get("node-role.kubernetes.io/master") == "true") is is_server
        assert ready_of(node) == "True"
        assert node.status.node_info.kubelet_version == "v1.31.4+k3s1"
        assert node.metadata.resource_version
        assert node.metadata.uid
    servers = v1.list_node(label_selector="node-role.kubernetes.io/control-plane=true").items
    assert [n.metadata.name for n in servers] == ["lab-s1"]
    assert v1.read_node("lab-a2").metadata.name == "lab-a2"


def test_ready_follows_the_k3s_service(lab: Lab, core: client.CoreV1Api) -> None:
    before = core.read_node("lab-a1")
    assert ready_of(before) == "True"

    lab.set_k3s("lab-a1", active=False)
    took = wait_for(lambda: ready_of(core.read_node("lab-a1")), "False")
    assert took < 2.0
    down = core.read_node("lab-a1")
    ready = next(c for c in down.status.conditions if c.type == "Ready")
    assert ready.reason == "NodeStatusUnknown"
    assert int(down.metadata.resource_version) > int(before.metadata.resource_version)
    assert ready_of(core.read_node("lab-s1")) == "True"  # the others are untouched
    assert ready_of(core.read_node("lab-a2")) == "True"

    lab.set_k3s("lab-a1", active=True)
    wait_for(lambda: ready_of(core.read_node("lab-a1")), "True")
    up = next(c for c in core.read_node("lab-a1").status.conditions if c.type == "Ready")
    assert up.reason == "KubeletReady"
    assert up.last_transition_time >= ready.last_transition_time

    lab.power_off("lab-s1")
    wait_for(lambda: ready_of(core.read_node("lab-s1")), "False")


def test_cordon_persists(lab: Lab, core: client.CoreV1Api) -> None:
    before = core.read_node("lab-a2")
    assert not before.spec.unschedulable

    patched = core.patch_node("lab-a2", {"spec": {"unschedulable": True}})
    assert patched.spec.unschedulable is True
    again = core.read_node("lab-a2")
    assert again.spec.unschedulable is True
    assert again.metadata.labels == before.metadata.labels  # a merge, not a replacement
    assert int(again.metadata.resource_version) > int(before.metadata.resource_version)
    cordoned = core.list_node(field_selector="spec.unschedulable=true").items
    assert [n.metadata.name for n in cordoned] == ["lab-a2"]

    time.sleep(0.5)  # the simulator keeps running and must not undo the cordon
    assert core.read_node("lab-a2").spec.unschedulable is True

    core.patch_node("lab-a2", {"spec": {"unschedulable": None}})  # uncordon, as kubectl does
    assert not core.read_node("lab-a2").spec.unschedulable


def test_watch_sees_modified_when_ready_flips(lab: Lab, core: client.CoreV1Api) -> None:
    w = watch.Watch()
    seen: list[tuple[str, str, str]] = []
    for event in w.stream(core.list_node, timeout_seconds=10):
        obj = event["object"]
        seen.append((event["type"], obj.metadata.name, ready_of(obj)))
        if len(seen) == len(NODES):  # the initial ADDED events: the watch is established
            lab.set_k3s("lab-a2", active=False)
        if event["type"] == "MODIFIED" and obj.metadata.name == "lab-a2" and ready_of(obj) == "False":
            w.stop()
    assert sorted(seen[: len(NODES)]) == sorted(("ADDED", name, "True") for name in NODES)
    assert seen[-1] == ("MODIFIED", "lab-a2", "False")


def test_watch_from_a_resource_version_with_timeout(lab: Lab, core: client.CoreV1Api) -> None:
    listed = core.list_node()
    rv = listed.metadata.resource_version
    assert rv
    assert rv.isdigit()

    timer = threading.Timer(0.5, lab.set_k3s, args=("lab-s1", False))
    timer.start()
    try:
        w = watch.Watch()
        events = []
        for event in w.stream(core.list_node, resource_version=rv, timeout_seconds=5):
            events.append((event["type"], event["object"].metadata.name, ready_of(event["object"])))
            if events[-1] == ("MODIFIED", "lab-s1", "False"):
                w.stop()
    finally:
        timer.cancel()
    assert events == [("MODIFIED", "lab-s1", "False")]  # nothing replayed from before rv

    start = time.monotonic()  # the server ends the stream at timeoutSeconds
    latest = core.list_node().metadata.resource_version
    quiet = list(watch.Watch().stream(core.list_node, resource_version=latest, timeout_seconds=1))
    assert quiet == []
    assert time.monotonic() - start < 3


def test_discovery_for_clients_and_kopf(lab: Lab, api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version == "v1.31.4+k3s1"
    core_resources = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core_resources["nodes"].namespaced is False
    assert core_resources["nodes"].kind == "Node"
    assert "nodes/status" in core_resources
    assert {"patch", "watch", "list"} <= set(core_resources["nodes"].verbs)
    assert http_get(lab, "/api") == (200, {"kind": "APIVersions", "versions": ["v1"]})
    status, apis = http_get(lab, "/apis")
    assert status == 200
    assert {"apps", "apiextensions.k8s.io", "coordination.k8s.io"} <= {g["name"] for g in apis["groups"]}
    assert http_get(lab, "/api/v1")[1]["groupVersion"] == "v1"
    assert http_get(lab, "/api/v1/")[1]["groupVersion"] == "v1"
    assert http_get(lab, "/apis/apps/v1/")[1]["groupVersion"] == "apps/v1"
    assert http_get(lab, "/apis/apps/")[1]["name"] == "apps"
    assert http_get(lab, "/healthz") == (200, b"ok")


POWERPOLICY_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "powerpolicies.hecate.io"},
    "spec": {
        "group": "hecate.io",
        "scope": "Cluster",
        "names": {"plural": "powerpolicies", "singular": "powerpolicy", "kind": "PowerPolicy",
                  "shortNames": ["pp"]},
        "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}},
                      "subresources": {"status": {}}}],
    },
}


def test_created_crds_become_served_resources(lab: Lab, api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    created = ext.create_custom_resource_definition(
        client.V1CustomResourceDefinition.from_dict(POWERPOLICY_CRD))
    established = {c.type: c.status for c in created.status.conditions}
    assert established["Established"] == "True"

    status, group = http_get(lab, "/apis/hecate.io/v1alpha1")
    assert status == 200
    resources = {r["name"]: r for r in group["resources"]}
    assert resources["powerpolicies"]["kind"] == "PowerPolicy"
    assert resources["powerpolicies"]["namespaced"] is False
    assert "powerpolicies/status" in resources

    crs = client.CustomObjectsApi(api)
    crs.create_cluster_custom_object("hecate.io", "v1alpha1", "powerpolicies", {
        "apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": "default"}, "spec": {"shutdownAt": "40%"},
    })
    crs.patch_cluster_custom_object_status("hecate.io", "v1alpha1", "powerpolicies", "default",
                                           {"status": {"phase": "Armed"}})
    listed = crs.list_cluster_custom_object("hecate.io", "v1alpha1", "powerpolicies")
    assert [(i["metadata"]["name"], i["spec"], i["status"]) for i in listed["items"]] == \
        [("default", {"shutdownAt": "40%"}, {"phase": "Armed"})]


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    manifest, _ = write_lab(tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    proc = start_kubeapi(manifest, kubeconfig, tmp_path / "kubeapi.log")
    try:
        start = time.monotonic()
        stop_kubeapi(proc, timeout=5)
        assert proc.returncode == 0
        assert time.monotonic() - start < 3
        assert not kubeconfig.exists()  # no stale kubeconfig pointing at a dead port
        assert "stopped" in (tmp_path / "kubeapi.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps({"nodes": [{"name": "n", "role": "master", "dir": str(tmp_path)}]}))
    with pytest.raises(LabKubeApiError, match="role must be server or agent") as failure:
        start_kubeapi(manifest, tmp_path / "kubeconfig", tmp_path / "kubeapi.log", timeout=10)
    assert "exited with status 2" in str(failure.value)


# -- what a k3s + Flux cluster adds: Flux CRDs, namespaces, evictions, the seeded workloads ---


def http_request(lab: Lab, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = urllib.parse.urlsplit(api_url(lab.kubeconfig))
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        rsp = conn.getresponse()
        data = rsp.read()
        return rsp.status, json.loads(data) if data.startswith((b"{", b"[")) else data
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/namespaces", ("", "v1", "namespaces", None, None, None)),
        ("/api/v1/namespaces/apps", ("", "v1", "namespaces", None, "apps", None)),
        ("/api/v1/namespaces/apps/status", ("", "v1", "namespaces", None, "apps", "status")),
        ("/api/v1/namespaces/apps/pods", ("", "v1", "pods", "apps", None, None)),
        ("/api/v1/namespaces/apps/pods/web-1/eviction", ("", "v1", "pods", "apps", "web-1", "eviction")),
        ("/apis/apps/v1/namespaces/apps/deployments/web", ("apps", "v1", "deployments", "apps", "web", None)),
    ],
)
def test_namespace_paths_are_namespace_objects(path: str, expected: tuple[str | None, ...]) -> None:
    parsed = parse_namespace_path(path)
    assert (parsed.group, parsed.version, parsed.plural, parsed.namespace, parsed.name, parsed.subresource) == expected


def test_manifest_flux_flag() -> None:
    nodes = [{"name": "n", "role": "server", "dir": "/x"}]
    assert parse_manifest({"nodes": nodes}).flux is True
    assert parse_manifest({"nodes": nodes, "flux": False}).flux is False
    with pytest.raises(LabKubeApiError, match='"flux" must be true or false'):
        parse_manifest({"nodes": nodes, "flux": "no"})


def test_flux_crds_are_installed_at_start(lab: Lab, api: client.ApiClient) -> None:
    crds = {c.metadata.name for c in client.ApiextensionsV1Api(api).list_custom_resource_definition().items}
    assert {"kustomizations.kustomize.toolkit.fluxcd.io", "helmreleases.helm.toolkit.fluxcd.io",
            "gitrepositories.source.toolkit.fluxcd.io"} <= crds
    for path, plural, kind in [("/apis/kustomize.toolkit.fluxcd.io/v1", "kustomizations", "Kustomization"),
                               ("/apis/helm.toolkit.fluxcd.io/v2", "helmreleases", "HelmRelease"),
                               ("/apis/source.toolkit.fluxcd.io/v1", "gitrepositories", "GitRepository")]:
        status, group = http_get(lab, path)
        assert status == 200
        resources = {r["name"]: r for r in group["resources"]}
        assert (resources[plural]["kind"], resources[plural]["namespaced"]) == (kind, True)
        assert f"{plural}/status" in resources
    status, storage = http_get(lab, "/apis/storage.k8s.io/v1")
    assert "volumeattachments" in {r["name"] for r in storage["resources"]}

    crs = client.CustomObjectsApi(api)
    crs.create_namespaced_custom_object("source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories", {
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "flux-system"}, "spec": {"url": "http://gitea/ops/fleet.git", "ref": {"branch": "main"}},
    })
    crs.patch_namespaced_custom_object_status("source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories",
                                              "flux-system", {"status": {"conditions": [{"type": "Ready",
                                                                                         "status": "False"}]}})
    repo = crs.get_namespaced_custom_object("source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories",
                                            "flux-system")
    assert repo["spec"]["ref"] == {"branch": "main"}
    assert repo["status"]["conditions"][0]["status"] == "False"


def test_namespaces_creates_and_not_found_speak_like_the_api(lab: Lab, core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="apps")))
    assert "apps" in {n.metadata.name for n in core.list_namespace().items}
    assert core.read_namespace("apps").metadata.uid

    status, created = http_request(lab, "POST", "/api/v1/namespaces/apps/configmaps",
                                   {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert status == 201
    assert created["metadata"]["namespace"] == "apps"
    status, missing = http_request(lab, "GET", "/apis/apps/v1/namespaces/apps/deployments/nope")
    assert status == 404
    assert (missing["reason"], missing["message"]) == ("NotFound", 'deployments.apps "nope" not found')
    assert http_request(lab, "PATCH", "/api/v1/nodes/nope", {"spec": {}})[1]["message"] == 'nodes "nope" not found'


def evict(core: client.CoreV1Api, namespace: str, name: str, **kwargs: Any) -> Any:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
    return core.create_namespaced_pod_eviction(name, namespace, body, **kwargs)


def test_eviction_honours_the_disruption_budget(lab: Lab, core: client.CoreV1Api) -> None:
    seeded = seed_workloads(lab.kubeconfig)
    assert seeded.blocked_node == "lab-a1"
    ns, name = seeded.blocked_pod.split("/")

    with pytest.raises(client.ApiException) as refused:
        evict(core, ns, name)
    assert refused.value.status == 429
    body = json.loads(refused.value.body)
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"] == [{"reason": "DisruptionBudget",
                                          "message": "The disruption budget postgres needs 1 healthy pods "
                                                     "and has 1 currently"}]
    assert core.read_namespaced_pod(name, ns).metadata.name == name  # still there

    web = next(p for p in seeded.pods_by_node["lab-a2"] if p.startswith("apps/web-")).split("/")[1]
    evict(core, "apps", web, dry_run="All")
    assert core.read_namespaced_pod(web, "apps")  # a dry run changes nothing

    rv = core.list_namespaced_pod("apps").metadata.resource_version
    timer = threading.Timer(0.3, evict, args=(core, "apps", web))
    timer.start()
    try:
        events = [(e["type"], e["object"].metadata.name)
                  for e in watch.Watch().stream(core.list_namespaced_pod, "apps", resource_version=rv,
                                                timeout_seconds=2)]
    finally:
        timer.cancel()
    assert events == [("DELETED", web)]  # watchers see the eviction as a deletion
    with pytest.raises(client.ApiException) as gone:
        core.read_namespaced_pod(web, "apps")
    assert gone.value.status == 404

    with pytest.raises(client.ApiException) as missing:
        evict(core, "apps", web)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == f'pods "{web}" not found'


def test_seed_places_pods_and_is_idempotent(lab: Lab, core: client.CoreV1Api, api: client.ApiClient) -> None:
    seeded = seed_workloads(lab.kubeconfig)
    again = seed_workloads(lab.kubeconfig)  # everything exists already: no error, same answer
    assert again == seeded
    assert seeded.workloads == {"Deployment/apps/web": 2, "Deployment/apps/api": 1, "Deployment/data/redis": 1,
                                "StatefulSet/data/postgres": 1, "Deployment/gitea/gitea": 1}
    assert set(seeded.daemonset_pods) == set(NODES)
    assert seeded.pods_by_node["lab-s1"] == [seeded.daemonset_pods["lab-s1"]]  # servers: DaemonSet pods only
    for node in NODES:
        pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        assert {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods} == set(seeded.pods_by_node[node])
    ds_pod = core.read_namespaced_pod(*reversed(seeded.daemonset_pods["lab-a1"].split("/")))
    assert ds_pod.metadata.owner_references[0].kind == "DaemonSet"
    tiers = client.AppsV1Api(api).list_deployment_for_all_namespaces(label_selector="hecate.io/tier=apps").items
    assert sorted(d.metadata.name for d in tiers) == ["api", "web"]
    web_pods = core.list_namespaced_pod("apps", label_selector="app=web").items
    assert web_pods[0].metadata.owner_references[0].kind == "ReplicaSet"
    assert len(web_pods) == 2
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("postgres", "data")
    assert pdb.spec.min_available == 1
