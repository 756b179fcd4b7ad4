"""The lab's emulated Kubernetes API (hecate_lab.kubeapi), driven by the official client.

The server tests start the real process (``python -m hecate_lab.kubeapi``) over three
fake lab nodes -- one server, two agents -- whose ``state.json`` files the tests rewrite
the way the nodes' sshd forced command does. The rule for the Ready condition and the
selector matching are tested on their own first, without a server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

from hecate_lab.cluster_seed import LabApi, seed_workloads
from hecate_lab.kubeapi import LabKubeApiError, api_url, kubectl, read_events, start_kubeapi, stop_kubeapi
from hecate_lab.kubeapi.emulator import parse_namespace_path
from hecate_lab.kubeapi.manifest import DEFAULT_K3S_VERSION, LabNode, parse_manifest
from hecate_lab.kubeapi.node_objects import node_object, node_ready_condition
from hecate_lab.kubeapi.process import kubectl_command
from hecate_lab.kubeapi.selectors import match_field_selector, match_label_selector
from hecate_lab.kubeapi.tables import cell, human_duration, printer_columns, table, wants_table
from hecate_lab.nodestate import initial_state, service_for, write_state

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


FAST = {"api": 0.3, "node": 0.1, "pod": 0.1}  # the cluster simulator's delays for most tests, s


@dataclass
class Lab:
    dirs: dict[str, Path]
    manifest: Path
    kubeconfig: Path
    log: Path
    pid: int
    roles: dict[str, str] = field(default_factory=lambda: dict(NODES))

    def set_k3s(self, name: str, active: bool) -> None:
        service = service_for(self.roles[name])
        state = "active" if active else "inactive"
        write_state(self.dirs[name], {"power": "on", "services": {service: state}})

    def power_off(self, name: str) -> None:
        write_state(self.dirs[name], {"power": "off", "services": {service_for(self.roles[name]): "inactive"}})

    @property
    def events(self) -> Path:
        return self.kubeconfig.parent / "events.jsonl"


def write_lab(tmp_path: Path, roles: dict[str, str] | None = None,
              delays: dict[str, float] | None = None) -> tuple[Path, dict[str, Path]]:
    roles = roles or NODES
    dirs = {}
    for name, role in roles.items():
        node_dir = tmp_path / "nodes" / name
        node_dir.mkdir(parents=True)
        write_state(node_dir, initial_state(role))
        dirs[name] = node_dir
    manifest = tmp_path / "lab-nodes.json"
    data: dict[str, Any] = {"nodes": [{"name": name, "role": role, "dir": str(dirs[name])}
                                      for name, role in roles.items()]}
    if delays is not None:
        data["delays"] = delays
    manifest.write_text(json.dumps(data))
    return manifest, dirs


@contextlib.contextmanager
def running_lab(tmp_path: Path, roles: dict[str, str] | None = None,
                delays: dict[str, float] | None = None) -> Iterator[Lab]:
    manifest, dirs = write_lab(tmp_path, roles, delays)
    kubeconfig, log = tmp_path / "kubeconfig", tmp_path / "kubeapi.log"
    proc = start_kubeapi(manifest, kubeconfig, log, timeout=15)
    try:
        yield Lab(dirs=dirs, manifest=manifest, kubeconfig=kubeconfig, log=log, pid=proc.pid,
                  roles=dict(roles or NODES))
    finally:
        try:
            stop_kubeapi(proc.pid, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """One server, two agents; the simulator's default delays."""
    with running_lab(tmp_path) as running:
        yield running


@pytest.fixture
def fast_lab(tmp_path: Path) -> Iterator[Lab]:
    """One server, two agents; short simulator delays (FAST)."""
    with running_lab(tmp_path, delays=FAST) as running:
        yield running


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

    lab.power_off("lab-a2")  # (the only server's power-off takes the API down: test_api_needs_a_server_quorum)
    wait_for(lambda: ready_of(core.read_node("lab-a2")), "False")


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

    timer = threading.Timer(0.5, lab.set_k3s, args=("lab-a1", False))
    timer.start()
    try:
        w = watch.Watch()
        events = []
        for event in w.stream(core.list_node, resource_version=rv, timeout_seconds=5):
            events.append((event["type"], event["object"].metadata.name, ready_of(event["object"])))
            if events[-1] == ("MODIFIED", "lab-a1", "False"):
                w.stop()
    finally:
        timer.cancel()
    assert events == [("MODIFIED", "lab-a1", "False")]  # nothing replayed from before rv

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


KUBECTL_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io," \
    "application/json"
HECATE_CRD = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "powerpolicy.yaml").read_text())


@pytest.mark.parametrize(("seconds", "printed"), [
    (-5, "<invalid>"), (-0.5, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (200, "3m20s"), (600, "10m"),
    (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"), (50 * 3600, "2d2h"),
    (48 * 3600, "2d"), (30 * 86400, "30d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y")])
def test_ages_print_as_kubectl_prints_them(seconds: float, printed: str) -> None:
    assert human_duration(seconds) == printed


def test_a_table_from_the_crds_printer_columns() -> None:
    assert wants_table(KUBECTL_TABLE)
    assert not wants_table("application/json")
    assert not wants_table(None)
    columns = printer_columns(HECATE_CRD, "v1alpha1")
    assert printer_columns({"spec": {"versions": [{"name": "v1"}]}}, "v1") == \
        [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]  # the API server's default
    with pytest.raises(ValueError, match="simple"):
        printer_columns({"spec": {"versions": [{"name": "v1", "additionalPrinterColumns": [
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}]}]}}, "v1")
    obj = {"metadata": {"name": "titan", "creationTimestamp": T0S},
           "status": {"phase": "Active", "ups": {"state": "on_mains", "runtimeSeconds": 900},
                      "thresholdSeconds": 600.5, "lastRun": {"dryRun": True, "finishedAt": ats(-30)}}}
    result = table([obj], columns, "7", at(200))
    assert (result["kind"], result["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert result["metadata"] == {"resourceVersion": "7"}
    names = [c["name"] for c in result["columnDefinitions"]]
    assert names == ["Name", "Phase", "UPS", "Runtime", "Threshold", "Budget", "Last run", "Dry run", "Result",
                     "Source", "Age"]
    row = result["rows"][0]
    assert row["cells"] == ["titan", "Active", "on_mains", 900.0, 600.5, None, "3m50s", True, None, None, "3m20s"]
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
    assert "object" not in table([obj], columns, "7", at(0), "None")["rows"][0]
    assert table([obj], columns, "7", at(0), "Object")["rows"][0]["object"] == obj
    assert cell({"type": "string"}, 2.0, T0) == "2"
    assert cell({"type": "string"}, False, T0) == "false"
    assert cell({"type": "integer"}, 2.7, T0) == 2
    assert cell({"type": "date"}, "yesterday", T0) == "<invalid>"
    assert cell({"type": "boolean"}, "yes", T0) is None


@pytest.mark.timeout(60)
def test_kubectl_get_shows_the_printer_columns_and_wait_watches_for_a_condition(lab: Lab) -> None:
    """The real kubectl: ``get`` asks for a Table (the CRD's columns), ``wait`` lists then watches."""
    def ok(*args: str) -> str:
        done = kubectl(lab.kubeconfig, *args)
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr, done.stderr  # e.g. a short name also matching a subresource
        return done.stdout

    for name, doc in (("crd", HECATE_CRD), ("titan", {"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy",
                                                       "metadata": {"name": "titan"}, "spec": {}})):
        manifest = lab.kubeconfig.parent / f"{name}.yaml"
        manifest.write_text(yaml.safe_dump(doc))
        ok("create", "--validate=false", "-f", str(manifest))  # the lab serves no OpenAPI document
    header, row = ok("get", "pp").splitlines()
    assert header.split() == ["NAME", "PHASE", "UPS", "RUNTIME", "THRESHOLD", "BUDGET", "LAST", "RUN", "DRY", "RUN",
                              "AGE"]
    assert row.split()[0] == "titan"
    assert len(row.split()) == 2  # no status yet: blank cells, then the age

    def ready(status: str, generation: int) -> None:
        ok("patch", "pp", "titan", "--subresource=status", "--type=merge", "-p", json.dumps({"status": {
            "phase": "Active" if status == "True" else "Invalid", "observedGeneration": generation,
            "ups": {"state": "on_mains", "runtimeSeconds": 900}, "thresholdSeconds": 600, "budgetSeconds": 300,
            "lastRun": {"dryRun": True, "result": "success", "finishedAt": T0S},
            "conditions": [{"type": "Ready", "status": status, "reason": "InForce" if status == "True" else "Invalid",
                            "message": "", "lastTransitionTime": T0S, "observedGeneration": generation}]}}))

    # kubectl wait started before the condition holds: it lists, then watches until it does
    argv, env = kubectl_command(lab.kubeconfig, "wait", "--for=condition=Ready", "pp/titan", "--timeout=20s")
    waiting = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let it reach its watch (a wait that finds the condition at once proves nothing)
        ready("True", 1)
        out, err = waiting.communicate(timeout=25)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert "condition met" in out
    assert "Unhandled Error" not in err, err  # e.g. a watch stream kubectl cannot decode

    cells = ok("get", "pp", "titan", "--no-headers").split()
    assert cells[:7] == ["titan", "Active", "on_mains", "900", "600", "300", cells[6]]
    assert cells[6].endswith(("d", "y"))  # last run: an age
    assert cells[7] == "true"  # dry run
    assert {"RESULT", "SOURCE"} <= set(ok("get", "pp", "-o", "wide").splitlines()[0].split())  # priority 1

    # Ready=False, or a Ready=True written for an older generation: the wait times out (non-zero)
    for status, generation in (("False", 1), ("True", 0)):
        ready(status, generation)
        done = kubectl(lab.kubeconfig, "wait", "--for=condition=Ready", "pp/titan", "--timeout=500ms")
        assert done.returncode != 0, (status, generation)
        assert "timed out" in done.stderr
    assert set(ok("get", "nodes", "--no-headers").split()[0::2]) == set(NODES)  # built-in kinds: kubectl's fallback


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
    return LabApi(api_url(lab.kubeconfig)).request(method, path, body)


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
                                              "flux-system", {"status": {"url": "http://source-controller/x"}})

    def repo() -> Any:
        return crs.get_namespaced_custom_object("source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories",
                                                "flux-system")
    assert repo()["spec"]["ref"] == {"branch": "main"}
    assert repo()["status"]["url"] == "http://source-controller/x"  # the status subresource takes patches
    # No lab.hecate.io/served-by: served from outside the cluster, so the simulator makes it Ready.
    wait_for(lambda: repo()["status"]["conditions"][0]["status"], "True")
    assert repo()["status"]["artifact"]["revision"].startswith("main@sha1:")
    assert repo()["status"]["url"] == "http://source-controller/x"  # what the simulator does not own stays


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


def test_eviction_honours_the_disruption_budget(fast_lab: Lab) -> None:
    lab = fast_lab
    api_client = config.new_client_from_config(config_file=str(lab.kubeconfig))
    core = client.CoreV1Api(api_client)
    seeded = seed_workloads(lab.kubeconfig)
    assert seeded.blocked_node == "lab-a1"  # pinned to the first agent
    ns, name = seeded.blocked_pod.split("/")

    with pytest.raises(client.ApiException) as refused:
        evict(core, ns, name)
    assert refused.value.status == 429
    body = json.loads(refused.value.body)
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"] == [{"reason": "DisruptionBudget",
                                          "message": "The disruption budget gitea-postgresql needs 1 healthy "
                                                     "pods and has 1 currently"}]
    assert core.read_namespaced_pod(name, ns).metadata.name == name  # still there

    web = sorted(p for pods in seeded.pods_by_node.values() for p in pods if p.startswith("apps/web-"))[0]
    web = web.split("/")[1]
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
    assert events[0] == ("DELETED", web)  # watchers see the eviction as a deletion
    added = [n for t, n in events if t == "ADDED"]
    assert len(added) == 1  # ... and the ReplicaSet's replacement
    assert added[0] != web
    assert added[0].startswith(web.rsplit("-", 1)[0] + "-")
    with pytest.raises(client.ApiException) as gone:
        core.read_namespaced_pod(web, "apps")
    assert gone.value.status == 404

    with pytest.raises(client.ApiException) as missing:
        evict(core, "apps", web)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == f'pods "{web}" not found'
    api_client.close()


def test_seed_makes_a_healthy_cluster_and_is_idempotent(lab: Lab, core: client.CoreV1Api,
                                                         api: client.ApiClient) -> None:
    seeded = seed_workloads(lab.kubeconfig)  # the default delays: the simulator writes every status
    again = seed_workloads(lab.kubeconfig)  # everything exists already: no error, same answer
    assert again == seeded
    assert seeded.workloads == {"apps/deployment/web": 2, "apps/deployment/api": 1, "data/deployment/redis": 1,
                                "data/statefulset/postgres": 1, "kube-system/deployment/coredns": 1,
                                "gitea/statefulset/gitea-postgresql": 1, "gitea/deployment/gitea-valkey": 1,
                                "gitea/deployment/gitea": 1}
    assert seeded.foundation == ["kube-system/deployment/coredns", "gitea/statefulset/gitea-postgresql",
                                 "gitea/deployment/gitea-valkey", "gitea/deployment/gitea"]
    assert seeded.helm_rendered == {"gitea/deployment/gitea-valkey": "gitea/helmrelease/gitea-valkey"}
    assert seeded.lost_on_cold_start == ["gitea/deployment/gitea-valkey"]
    assert (seeded.git_repository, seeded.gitea) == ("flux-system/gitrepository/flux-system", "gitea/deployment/gitea")
    assert seeded.flux_active == ["flux-system/kustomization/flux-system", "gitea/helmrelease/gitea",
                                  "gitea/helmrelease/gitea-valkey"]
    assert seeded.flux_user_suspended == ["flux-system/kustomization/experiments"]
    assert set(seeded.daemonset_pods) == set(NODES)
    assert seeded.blocked_pod in seeded.pods_by_node[seeded.blocked_node]
    for node in NODES:
        pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        assert {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods} == set(seeded.pods_by_node[node])
        assert len(pods) >= 3  # spread over every node, servers too (k3s does not taint them)
    ds_pod = core.read_namespaced_pod(*reversed(seeded.daemonset_pods["lab-a1"].split("/")))
    assert ds_pod.metadata.owner_references[0].kind == "DaemonSet"
    apps = client.AppsV1Api(api)
    tiers = apps.list_deployment_for_all_namespaces(label_selector="hecate.io/tier=apps").items
    assert sorted(d.metadata.name for d in tiers) == ["api", "web"]
    web_pods = core.list_namespaced_pod("apps", label_selector="app=web").items
    assert web_pods[0].metadata.owner_references[0].kind == "ReplicaSet"
    assert len(web_pods) == 2
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("gitea-postgresql", "gitea")
    assert pdb.spec.min_available == 1

    # Healthy, by the statuses the simulator wrote (the seed writes none).
    for pod in core.list_pod_for_all_namespaces().items:
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    for d in [*apps.list_deployment_for_all_namespaces().items, *apps.list_stateful_set_for_all_namespaces().items]:
        assert (d.status.ready_replicas, d.status.observed_generation) == (d.spec.replicas, d.metadata.generation)
        assert {c.type: c.status for c in d.status.conditions}["Available"] == "True"
    ds = apps.read_namespaced_daemon_set("svclb-traefik", "kube-system").status
    assert (ds.desired_number_scheduled, ds.number_ready, ds.number_available) == (3, 3, 3)
    crs = client.CustomObjectsApi(api)
    for group, version, plural in [("source.toolkit.fluxcd.io", "v1", "gitrepositories"),
                                   ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
                                   ("helm.toolkit.fluxcd.io", "v2", "helmreleases")]:
        for obj in crs.list_cluster_custom_object(group, version, plural)["items"]:
            assert obj["status"]["conditions"][0]["status"] == "True", obj["metadata"]["name"]
    experiments = crs.get_namespaced_custom_object("kustomize.toolkit.fluxcd.io", "v1", "flux-system",
                                                   "kustomizations", "experiments")
    assert experiments["spec"]["suspend"] is True  # suspended after it was applied: stale, still Ready
    assert experiments["status"]["observedGeneration"] < experiments["metadata"]["generation"]


# -- the cluster simulator: API gate, nodes, workload controller, Flux -------------------------


CLUSTER = {"lab-s1": "server", "lab-s2": "server", "lab-s3": "server", "lab-a1": "agent", "lab-a2": "agent"}


def get_json(lab: Lab, path: str) -> Any:
    status, body = http_request(lab, "GET", path)
    assert status == 200, (path, status, body)
    return body


def ready_condition(obj: Any) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_api_needs_a_server_quorum_and_nodes_wait_for_their_kubelet(tmp_path: Path) -> None:
    delays = {"api": 0.5, "node": 0.5, "pod": 0.1}
    with running_lab(tmp_path, CLUSTER, delays) as lab:
        api_client = config.new_client_from_config(config_file=str(lab.kubeconfig))
        core = client.CoreV1Api(api_client)
        lab.set_k3s("lab-s1", active=False)
        wait_for(lambda: ready_of(core.read_node("lab-s1")), "False")  # 2 of 3: the API still serves

        ended: list[float] = []

        def watch_nodes() -> None:
            start = time.monotonic()
            with contextlib.suppress(Exception):
                for _ in watch.Watch().stream(core.list_node, timeout_seconds=20):
                    pass
            ended.append(time.monotonic() - start)

        watcher = threading.Thread(target=watch_nodes)
        watcher.start()
        time.sleep(0.3)
        lab.set_k3s("lab-s2", active=False)
        wait_for(lambda: http_get(lab, "/version")[0], 503)
        status, body = http_get(lab, "/api/v1/nodes")
        assert status == 503  # every request, discovery and /version too
        assert (body["kind"], body["code"], body["reason"]) == ("Status", 503, "ServiceUnavailable")
        assert body["message"] == "lab API down: 1 of 3 k3s servers running (quorum needs 2)"
        with pytest.raises(client.ApiException) as refused:
            core.list_node()
        assert refused.value.status == 503
        watcher.join(timeout=5)
        assert ended
        assert ended[0] < 1.5  # open watches end when the API goes away (they would run 20 s)

        lab.set_k3s("lab-s2", active=True)
        started = time.monotonic()
        wait_for(lambda: http_get(lab, "/version")[1]["message"][:44], "lab API starting: 2 of 3 k3s servers running")
        wait_for(lambda: http_get(lab, "/version")[0], 200, timeout=3)
        assert 0.5 <= time.monotonic() - started < 1.5  # delays.api after the quorum came back
        assert ready_of(core.read_node("lab-s2")) == "True"  # its node delay ran meanwhile

        lab.set_k3s("lab-a1", active=False)
        wait_for(lambda: ready_of(core.read_node("lab-a1")), "False")
        lab.set_k3s("lab-a1", active=True)
        time.sleep(0.25)
        starting = next(c for c in core.read_node("lab-a1").status.conditions if c.type == "Ready")
        assert (starting.status, starting.reason) == ("False", "KubeletNotReady")  # k3s runs, kubelet not yet
        took = wait_for(lambda: ready_of(core.read_node("lab-a1")), "True")
        assert took >= 0.1  # delays.node (0.5 s) after k3s started, 0.25 s of which already slept
        events = [e["message"] for e in read_events(lab.events) if e["source"] == "api"]
        assert events == ["lab API serving: 3 of 3 k3s servers running",
                          "lab API down: 1 of 3 k3s servers running (quorum needs 2)",
                          "lab API serving: 2 of 3 k3s servers running"]
        api_client.close()


def pods_of(lab: Lab, namespace: str, app: str) -> list[dict[str, Any]]:
    items = get_json(lab, f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def available_of(lab: Lab, path: str) -> tuple[int, str]:
    obj = get_json(lab, path)
    available = next(c["status"] for c in obj["status"]["conditions"] if c["type"] == "Available")
    return obj["status"].get("readyReplicas", 0), available


def all_ready(pods: list[dict[str, Any]]) -> bool:
    return all(ready_condition(p)["status"] == "True" for p in pods)


def test_scaling_a_deployment_deletes_and_recreates_its_pods(fast_lab: Lab) -> None:
    lab = fast_lab
    seed_workloads(lab.kubeconfig)
    path = "/apis/apps/v1/namespaces/apps/deployments/web"
    assert len(pods_of(lab, "apps", "web")) == 2
    assert http_request(lab, "PATCH", path, {"spec": {"replicas": 0}})[0] == 200
    wait_for(lambda: len(pods_of(lab, "apps", "web")), 0)
    wait_for(lambda: available_of(lab, path), (0, "True"))  # zero wanted, zero ready: available
    status = get_json(lab, path)["status"]
    assert (status["replicas"], status["observedGeneration"]) == (0, get_json(lab, path)["metadata"]["generation"])

    assert http_request(lab, "PATCH", path, {"spec": {"replicas": 3}})[0] == 200
    wait_for(lambda: len(pods_of(lab, "apps", "web")), 3)
    wait_for(lambda: available_of(lab, path), (3, "True"))
    pods = pods_of(lab, "apps", "web")
    assert all_ready(pods)
    assert len({p["spec"]["nodeName"] for p in pods}) == 3  # spread round-robin
    rs_name = pods[0]["metadata"]["ownerReferences"][0]["name"]
    assert get_json(lab, f"/apis/apps/v1/namespaces/apps/replicasets/{rs_name}")["spec"]["replicas"] == 3

    sts = "/apis/apps/v1/namespaces/data/statefulsets/postgres"
    assert http_request(lab, "PATCH", sts, {"spec": {"replicas": 2}})[0] == 200
    wait_for(lambda: sorted(p["metadata"]["name"] for p in pods_of(lab, "data", "postgres")),
             ["postgres-0", "postgres-1"])
    wait_for(lambda: available_of(lab, sts), (2, "True"))


def test_a_stuck_pod_never_becomes_ready_and_deleting_it_fixes_the_workload(fast_lab: Lab) -> None:
    lab = fast_lab
    seed_workloads(lab.kubeconfig)
    path = "/apis/apps/v1/namespaces/apps/deployments/api"
    [stuck] = pods_of(lab, "apps", "api")
    name = stuck["metadata"]["name"]
    patch = {"metadata": {"annotations": {"lab.hecate.io/stuck": "true"}}}
    assert http_request(lab, "PATCH", f"/api/v1/namespaces/apps/pods/{name}", patch)[0] == 200
    wait_for(lambda: available_of(lab, path), (0, "False"))
    deadline = time.monotonic() + 0.6  # six times the pod delay: still not Ready
    while time.monotonic() < deadline:
        pod = get_json(lab, f"/api/v1/namespaces/apps/pods/{name}")
        assert ready_condition(pod)["status"] == "False"
        time.sleep(0.1)
    assert "stuck" in ready_condition(pod)["message"]

    assert http_request(lab, "DELETE", f"/api/v1/namespaces/apps/pods/{name}")[0] == 200
    wait_for(lambda: available_of(lab, path), (1, "True"))
    [fresh] = pods_of(lab, "apps", "api")
    assert fresh["metadata"]["name"] != name
    assert "lab.hecate.io/stuck" not in (fresh["metadata"].get("annotations") or {})


def test_a_pod_waits_pending_until_a_node_is_schedulable(fast_lab: Lab) -> None:
    lab = fast_lab
    seed_workloads(lab.kubeconfig)
    for node in NODES:
        assert http_request(lab, "PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})[0] == 200
    path = "/apis/apps/v1/namespaces/apps/deployments/api"
    assert http_request(lab, "PATCH", path, {"spec": {"replicas": 2}})[0] == 200
    wait_for(lambda: len(pods_of(lab, "apps", "api")), 2)
    [pending] = [p for p in pods_of(lab, "apps", "api") if not p["spec"].get("nodeName")]
    wait_for(lambda: get_json(lab, f"/api/v1/namespaces/apps/pods/{pending['metadata']['name']}")["status"]
             ["conditions"][0]["reason"], "Unschedulable")
    assert get_json(lab, f"/api/v1/namespaces/apps/pods/{pending['metadata']['name']}")["status"]["phase"] == "Pending"
    assert available_of(lab, path) == (1, "False")

    assert http_request(lab, "PATCH", "/api/v1/nodes/lab-a2", {"spec": {"unschedulable": None}})[0] == 200
    wait_for(lambda: available_of(lab, path), (2, "True"))
    placed = get_json(lab, f"/api/v1/namespaces/apps/pods/{pending['metadata']['name']}")
    assert placed["spec"]["nodeName"] == "lab-a2"
    assert placed["status"]["phase"] == "Running"


FLUX_GIT = "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/flux-system"
FLUX_KS = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/flux-system"


def test_flux_follows_its_source_and_a_suspended_status_stays_stale(fast_lab: Lab) -> None:
    lab = fast_lab
    seed_workloads(lab.kubeconfig)
    revision = get_json(lab, FLUX_GIT)["status"]["artifact"]["revision"]
    assert revision.startswith("main@sha1:")
    assert get_json(lab, FLUX_KS)["status"]["lastAppliedRevision"] == revision

    assert http_request(lab, "PATCH", FLUX_KS, {"spec": {"suspend": True}})[0] == 200
    assert http_request(lab, "PATCH", FLUX_GIT, {"spec": {"ref": {"branch": "release"}}})[0] == 200
    wait_for(lambda: ready_condition(get_json(lab, FLUX_GIT))["reason"], "GitOperationFailed")
    assert ready_condition(get_json(lab, FLUX_GIT))["message"].endswith(
        "couldn't find remote ref \"refs/heads/release\"")
    time.sleep(0.3)
    assert ready_condition(get_json(lab, FLUX_KS))["status"] == "True"  # suspended: stale

    resume = {"spec": {"suspend": None},
              "metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2025-06-15T15:00:00Z"}}}
    assert http_request(lab, "PATCH", FLUX_KS, resume)[0] == 200
    wait_for(lambda: ready_condition(get_json(lab, FLUX_KS))["message"], "Source artifact not found, retrying in 30s")
    assert get_json(lab, FLUX_KS)["status"]["lastHandledReconcileAt"] == "2025-06-15T15:00:00Z"

    assert http_request(lab, "PATCH", FLUX_GIT, {"spec": {"ref": {"branch": "main"}}})[0] == 200
    wait_for(lambda: ready_condition(get_json(lab, FLUX_KS))["status"], "True")


def test_a_reconciling_release_recreates_what_it_renders_and_never_overwrites(fast_lab: Lab) -> None:
    lab = fast_lab
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"}, "data": {"a": "1"}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "cache"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "cache"}},
                           "template": {"metadata": {"labels": {"app": "cache"}},
                                        "spec": {"containers": [{"name": "c", "image": "valkey"}]}}}}
    assert http_request(lab, "POST", "/api/v1/namespaces", {"metadata": {"name": "apps"}})[0] == 201
    release = {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
               "metadata": {"name": "cache", "namespace": "apps",
                            "annotations": {"lab.hecate.io/renders": json.dumps([config_map, deployment])}},
               "spec": {"chart": {"spec": {"chart": "cache", "version": "1.0.0",
                                           "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}}
    hr_path = "/apis/helm.toolkit.fluxcd.io/v2/namespaces/apps/helmreleases"
    assert http_request(lab, "POST", hr_path, release)[0] == 201
    wait_for(lambda: http_request(lab, "GET", "/api/v1/namespaces/apps/configmaps/conf")[0], 200)
    wait_for(lambda: available_of(lab, "/apis/apps/v1/namespaces/apps/deployments/cache"), (1, "True"))
    assert ready_condition(get_json(lab, f"{hr_path}/cache"))["status"] == "True"

    assert http_request(lab, "PATCH", "/api/v1/namespaces/apps/configmaps/conf", {"data": {"a": "mine"}})[0] == 200
    assert http_request(lab, "DELETE", "/apis/apps/v1/namespaces/apps/deployments/cache")[0] == 200
    wait_for(lambda: http_request(lab, "GET", "/apis/apps/v1/namespaces/apps/deployments/cache")[0], 200)
    assert get_json(lab, "/api/v1/namespaces/apps/configmaps/conf")["data"] == {"a": "mine"}  # not overwritten

    assert http_request(lab, "PATCH", f"{hr_path}/cache", {"spec": {"suspend": True}})[0] == 200
    assert http_request(lab, "DELETE", "/api/v1/namespaces/apps/configmaps/conf")[0] == 200
    time.sleep(0.3)
    assert http_request(lab, "GET", "/api/v1/namespaces/apps/configmaps/conf")[0] == 404  # suspended: no reconcile
    created = [e for e in read_events(lab.events) if "re-created" in e["message"]]
    assert [e["object"] for e in created] == ["apps/helmrelease/cache"] * 3


def lease_of(lab: Lab, name: str) -> dt.datetime:
    lease = get_json(lab, f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
    assert lease["spec"]["holderIdentity"] == name
    return dt.datetime.fromisoformat(lease["spec"]["renewTime"])


def test_a_cold_start_serves_the_statuses_from_before_the_outage_until_the_grace_period(tmp_path: Path) -> None:
    delays = {"api": 0.2, "node": 0.1, "pod": 0.1, "grace": 2.0, "lease": 0.2}
    with running_lab(tmp_path, delays=delays) as lab:
        template = {"metadata": {"labels": {"app": "svclb"}}, "spec": {"containers": [{"name": "lb"}]}}
        ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "svclb", "namespace": "kube-system"},
              "spec": {"selector": {"matchLabels": {"app": "svclb"}}, "template": template}}
        path = "/apis/apps/v1/namespaces/kube-system/daemonsets/svclb"
        assert http_request(lab, "POST", "/apis/apps/v1/namespaces/kube-system/daemonsets", ds)[0] == 201
        wait_for(lambda: get_json(lab, path)["status"].get("numberReady"), 3)
        renewed = lease_of(lab, "lab-a1")
        wait_for(lambda: lease_of(lab, "lab-a1") > renewed, True)  # a running kubelet renews its Lease

        # A power cut: the server (and the API with it) first, then the agents -- nobody writes any more.
        for name in ("lab-s1", "lab-a1", "lab-a2"):
            lab.power_off(name)
        wait_for(lambda: http_get(lab, "/version")[0], 503)
        cut = dt.datetime.now(dt.UTC)
        time.sleep(0.5)
        lab.set_k3s("lab-s1", active=True)  # power is back on the server only
        wait_for(lambda: http_get(lab, "/version")[0], 200)
        back = time.monotonic()

        # Served as they were before the outage: the agents Ready, their DaemonSet pods counted ready.
        for agent in ("lab-a1", "lab-a2"):
            node = get_json(lab, f"/api/v1/nodes/{agent}")
            assert ready_condition(node)["status"] == "True"
            assert dt.datetime.fromisoformat(ready_condition(node)["lastHeartbeatTime"]) <= cut
            assert lease_of(lab, agent) <= cut  # what tells a stale Ready from a live one
        assert lease_of(lab, "lab-s1") > cut  # its kubelet posts again
        assert get_json(lab, path)["status"]["numberReady"] >= 2  # the two dead agents' pods still count
        assert time.monotonic() - back < 1.5

        # The node controller's grace period after the API came back: NotReady, their pods too.
        took = wait_for(lambda: ready_condition(get_json(lab, "/api/v1/nodes/lab-a1"))["status"], "False", timeout=4)
        assert time.monotonic() - back >= 1.5  # the grace period (2 s), less the time the checks above took
        assert took < 4
        assert ready_condition(get_json(lab, "/api/v1/nodes/lab-a1"))["reason"] == "NodeStatusUnknown"
        wait_for(lambda: get_json(lab, path)["status"]["numberReady"], 1)
        events = [e for e in read_events(lab.events) if e["source"] == "node"]
        assert sorted(e["object"] for e in events) == ["/node/lab-a1", "/node/lab-a2"]
