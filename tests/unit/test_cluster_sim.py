"""The lab cluster's rules (hecate_lab.cluster_sim), each on its own: pure functions, no server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hecate.domain.kubeobjects import crash_looping
from hecate_lab import cluster_sim as sim
from hecate_lab.cluster_sim import ApiState, Delays, Source

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


# -- builders --------------------------------------------------------------------------------


def node(name: str, *, ready: bool = True, cordoned: bool = False, labels: dict[str, str] | None = None,
         index: int = 0) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"unschedulable": True} if cordoned else {"podCIDR": f"10.42.{index}.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def deployment(name: str = "web", replicas: int = 2, *, ns: str = "apps", uid: str = "d-uid",
               notes: dict[str, str] | None = None, node_selector: dict[str, str] | None = None,
               generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": name, "image": "nginx"}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": generation,
                         "labels": {"app": name}, "annotations": dict(notes or {})},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name},
                                               "annotations": {sim.STUCK: "true", "note": "kept"}},
                                  "spec": spec}}}


def statefulset(name: str = "db", replicas: int = 1, *, ns: str = "data") -> dict[str, Any]:
    obj = deployment(name, replicas, ns=ns, uid="s-uid")
    obj["kind"] = "StatefulSet"
    return obj


def daemonset(name: str = "lb", *, ns: str = "kube-system") -> dict[str, Any]:
    obj = deployment(name, 1, ns=ns, uid="ds-uid")
    obj["kind"] = "DaemonSet"
    del obj["spec"]["replicas"]
    return obj


def pod(name: str, owner: dict[str, Any], *, on: str | None = "n1", ready: bool = False, phase: str = "Pending",
        created: str = "2025-06-15T15:00:00Z", stuck: bool = False, uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner["metadata"]["namespace"], "uid": uid or f"{name}-uid",
                            "creationTimestamp": created,
                            "labels": dict(owner["spec"]["template"]["metadata"]["labels"]),
                            "ownerReferences": [sim.owner_reference(owner)]}
    if stuck:
        meta["annotations"] = {sim.STUCK: "true"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"nodeName": on} if on else {},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def with_status(obj: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**obj, "status": status}


# -- delays and time -------------------------------------------------------------------------


def test_delays_defaults_and_parsing() -> None:
    assert Delays() == Delays.parse(None) == Delays(api=1.0, node=0.5, pod=0.5, grace=1.0, lease=0.5)
    assert Delays.parse({"api": 3, "pod": 0, "grace": 20}) == Delays(api=3.0, node=0.5, pod=0.0, grace=20.0)
    assert Delays(api=2).to_dict() == {"api": 2.0, "node": 0.5, "pod": 0.5, "grace": 1.0, "lease": 0.5}
    for bad, match in [({"api": -1}, "delays.api"), ({"pod": "1"}, "delays.pod"), ({"node": True}, "delays.node"),
                       ({"kubelet": 1}, "unknown delays: kubelet"), ([1], "must be an object"),
                       ({"api": math.inf}, "delays.api"), ({"lease": 0}, "delays.lease must be a number of "
                                                                        "seconds > 0")]:
        with pytest.raises(ValueError, match=match):
            Delays.parse(bad)  # type: ignore[arg-type]


def test_held_since_elapsed_and_due() -> None:
    assert sim.held_since(True, None, T0) == T0  # just became true
    assert sim.held_since(True, T0, T0 + 5) == T0  # still true: since stays
    assert sim.held_since(False, T0, T0 + 5) is None  # false resets
    assert not sim.elapsed(None, T0, 0)
    assert not sim.elapsed(T0, T0 + 0.4, 0.5)
    assert sim.elapsed(T0, T0 + 0.5, 0.5)
    assert sim.due_in(T0, T0 + 0.2, 0.5) == pytest.approx(0.3)
    assert sim.due_in(T0, T0 + 0.5, 0.5) is None
    assert sim.due_in(None, T0, 0.5) is None
    assert sim.format_time(T0) == "2025-06-15T15:06:40Z"


# -- rule 1: the API follows the servers --------------------------------------------------------


@pytest.mark.parametrize(("running", "servers", "quorum"), [
    (0, 0, True), (1, 1, True), (0, 1, False), (1, 2, False), (2, 2, True),
    (1, 3, False), (2, 3, True), (2, 4, False), (3, 4, True), (3, 5, True),
])
def test_quorum_is_a_strict_majority(running: int, servers: int, quorum: bool) -> None:
    assert sim.has_quorum(running, servers) is quorum


def test_api_follows_the_server_quorum_after_a_delay() -> None:
    first = sim.api_state(None, 3, 3, T0, 1.0)
    assert first.available  # the lab starts with its servers up: serving at once
    down = sim.api_state(first, 1, 3, T0 + 1, 1.0)
    assert down == ApiState(False, None, "lab API down: 1 of 3 k3s servers running (quorum needs 2)")
    still = sim.api_state(down, 0, 3, T0 + 2, 1.0)
    assert still.message == "lab API down: 0 of 3 k3s servers running (quorum needs 2)"
    starting = sim.api_state(still, 2, 3, T0 + 3, 1.0)
    assert not starting.available
    assert starting.quorum_since == T0 + 3
    assert starting.message.startswith("lab API starting: 2 of 3 k3s servers running")
    assert not sim.api_state(starting, 2, 3, T0 + 3.9, 1.0).available
    up = sim.api_state(starting, 3, 3, T0 + 4, 1.0)
    assert up.available
    assert up.quorum_since == T0 + 3
    assert not sim.api_state(up, 1, 3, T0 + 5, 1.0).available  # losing the quorum is immediate


def test_api_without_servers_always_serves_and_first_look_without_quorum_waits() -> None:
    assert sim.api_state(None, 0, 0, T0, 1.0).available
    assert sim.api_state(ApiState(True), 0, 0, T0, 1.0).available
    cold = sim.api_state(None, 0, 1, T0, 1.0)
    assert not cold.available
    assert cold.message == "lab API down: 0 of 1 k3s servers running (quorum needs 1)"
    assert not sim.api_state(cold, 1, 1, T0 + 1, 1.0).available
    assert sim.api_state(sim.api_state(cold, 1, 1, T0 + 1, 1.0), 1, 1, T0 + 2, 1.0).available


# -- rule 2: the cold start ----------------------------------------------------------------------


def test_cold_start_deletes_the_annotated_what_they_own_and_the_pods_they_select() -> None:
    valkey = deployment("valkey", 1, ns="gitea", uid="v-uid", notes={sim.LOST_ON_COLD_START: "true"})
    rs = {"kind": "ReplicaSet", "metadata": {"name": "valkey-abc", "namespace": "gitea", "uid": "rs-uid",
                                             "ownerReferences": [sim.owner_reference(valkey)]}}
    owned = pod("valkey-abc-x1", valkey)
    owned["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "valkey-abc", "uid": "rs-uid"}]
    selected = {"kind": "Pod", "metadata": {"name": "stray", "namespace": "gitea", "labels": {"app": "valkey"}}}
    elsewhere = {"kind": "Pod", "metadata": {"name": "other-ns", "namespace": "apps", "labels": {"app": "valkey"}}}
    gitea = deployment("gitea", 1, ns="gitea", uid="g-uid")
    gitea_pod = pod("gitea-1", gitea)
    cm = {"kind": "ConfigMap", "metadata": {"name": "cache", "namespace": "gitea",
                                            "annotations": {sim.LOST_ON_COLD_START: "true"}}}
    kept = {"kind": "ConfigMap", "metadata": {"name": "kept", "namespace": "gitea",
                                              "annotations": {sim.LOST_ON_COLD_START: "false"}}}
    victims = sim.cold_start_victims([valkey, rs, owned, selected, elsewhere, gitea, gitea_pod, cm, kept])
    assert victims[:2] == [("Deployment", "gitea", "valkey"), ("ConfigMap", "gitea", "cache")]  # owners first
    assert set(victims) == {("Deployment", "gitea", "valkey"), ("ConfigMap", "gitea", "cache"),
                            ("ReplicaSet", "gitea", "valkey-abc"), ("Pod", "gitea", "valkey-abc-x1"),
                            ("Pod", "gitea", "stray")}
    assert sim.cold_start_victims([gitea, gitea_pod]) == []


# -- rule 3: nodes -------------------------------------------------------------------------------


def test_node_ready_after_its_delay() -> None:
    assert not sim.node_ready(False, None, T0, 0.5)
    assert not sim.node_ready(True, T0, T0 + 0.4, 0.5)
    assert sim.node_ready(True, T0, T0 + 0.5, 0.5)
    assert sim.node_ready(True, -math.inf, T0, 0.5)  # running since before the simulator started
    assert sim.schedulable(node("n1"))
    assert not sim.schedulable(node("n1", ready=False))
    assert not sim.schedulable(node("n1", cordoned=True))


def test_only_a_running_kubelet_writes_and_only_while_the_api_serves() -> None:
    assert sim.kubelet_posts(True, True)
    assert not sim.kubelet_posts(True, False)  # the API is down: the Node keeps what it last said
    assert not sim.kubelet_posts(False, True)
    assert sim.lease_due(None, T0, 0.5)
    assert not sim.lease_due(T0, T0 + 0.4, 0.5)
    assert sim.lease_due(T0, T0 + 0.5, 0.5)


def test_a_silent_kubelets_node_keeps_its_status_for_the_grace_period_counted_from_the_api_coming_back() -> None:
    renewed, back = T0, T0 + 3600  # the last renewal before a one-hour outage; the API serves again
    assert sim.lost_since(renewed, back) == back  # a restarted node controller grants a full grace period
    assert not sim.node_lost(renewed, back, back + 39, 40)  # stale Ready from before the outage, still served
    assert sim.node_lost(renewed, back, back + 40, 40)
    assert sim.lost_since(T0 + 10, T0) == T0 + 10  # steady state: from its last renewal
    assert sim.node_lost(T0 + 10, T0, T0 + 11, 1.0)
    assert sim.lost_since(None, None) is None
    assert not sim.node_lost(None, None, T0, 0)


# -- rule 4: workloads ---------------------------------------------------------------------------


NODES = [node("s1", index=0), node("a1", index=1), node("a2", index=2)]


def test_deployment_pods_are_created_and_spread_round_robin() -> None:
    web = deployment("web", 3)
    rs = {**sim.replicaset_for(web), "metadata": {**sim.replicaset_for(web)["metadata"], "uid": "rs-uid"}}
    assert rs["metadata"]["name"].startswith("web-")
    assert rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == rs["metadata"]["name"].split("-")[1]
    plan = sim.plan_pods(web, rs, [], NODES, {"s1": 5})
    assert [p["spec"]["nodeName"] for p in plan.create] == ["a1", "a2", "s1"]  # the busy server last
    new = plan.create[0]
    assert new["metadata"]["generateName"] == f"{rs['metadata']['name']}-"
    assert new["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert new["metadata"]["ownerReferences"][0]["uid"] == "rs-uid"
    assert new["metadata"]["annotations"] == {"note": "kept"}  # a fresh pod is never stuck
    assert new["metadata"]["labels"]["pod-template-hash"]
    assert (plan.delete, plan.bind) == ((), ())


def test_pods_go_only_to_ready_uncordoned_matching_nodes_or_stay_pending() -> None:
    nodes = [node("s1", ready=False), node("a1", cordoned=True), node("a2")]
    web = deployment("web", 2)
    plan = sim.plan_pods(web, web, [], nodes)
    assert [p["spec"].get("nodeName") for p in plan.create] == ["a2", "a2"]
    pinned = deployment("db", 1, node_selector={"kubernetes.io/hostname": "a1"})
    plan = sim.plan_pods(pinned, pinned, [], nodes)
    assert "nodeName" not in plan.create[0]["spec"]  # its node is cordoned: Pending
    pending = pod("db-x", pinned, on=None)
    assert sim.plan_pods(pinned, pinned, [pending], nodes) == sim.PodPlan()  # nothing to do yet
    plan = sim.plan_pods(pinned, pinned, [pending], [node("a1")])
    assert plan.bind == (("db-x", "a1"),)  # placed once the node is schedulable
    assert plan.create == ()


def test_scale_down_deletes_unplaced_then_not_ready_then_newest() -> None:
    web = deployment("web", 1)
    pods = [pod("old-ready", web, ready=True, created="2025-01-01T00:00:00Z"),
            pod("new-ready", web, ready=True, created="2025-01-02T00:00:00Z"),
            pod("not-ready", web, ready=False, created="2024-01-01T00:00:00Z"),
            pod("unplaced", web, on=None)]
    assert set(sim.plan_pods(web, web, pods, NODES).delete) == {"unplaced", "not-ready", "new-ready"}
    assert sim.plan_pods(deployment("web", 0), web, pods, NODES).delete[:2] == ("unplaced", "not-ready")
    assert sim.plan_pods(deployment("web", 4), web, pods, NODES) == sim.PodPlan(bind=(("unplaced", "s1"),))


def test_statefulset_pods_are_ordinals() -> None:
    db = statefulset("db", 3)
    plan = sim.plan_pods(db, db, [pod("db-1", db, on="a1")], NODES)
    assert [p["metadata"]["name"] for p in plan.create] == ["db-0", "db-2"]
    assert plan.create[0]["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == "db-0"
    assert plan.create[0]["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
    pods = [pod(f"db-{i}", db) for i in range(3)]
    assert sim.plan_pods(statefulset("db", 1), db, pods, NODES).delete == ("db-2", "db-1")  # highest first


def test_daemonset_pod_on_every_node_even_cordoned_or_not_ready() -> None:
    lb = daemonset()
    nodes = [node("s1", ready=False), node("a1", cordoned=True), node("a2")]
    plan = sim.plan_pods(lb, lb, [pod("lb-a2", lb, on="a2"), pod("lb-gone", lb, on="x9"),
                                  pod("lb-dup", lb, on="a2", created="2025-07-01T00:00:00Z")], nodes)
    assert sorted(p["spec"]["nodeName"] for p in plan.create) == ["a1", "s1"]
    assert set(plan.delete) == {"lb-gone", "lb-dup"}


def test_pod_ready_only_after_the_delay_with_its_node_and_dependencies() -> None:
    web = deployment("web", 1)
    fresh = pod("web-1", web)
    waiting = sim.pod_status(fresh, node_ready=True, waiting_for=[], since=None, now=T0, delay=0.5)
    assert (waiting.ready, waiting.since, waiting.due) == (False, T0, 0.5)
    assert waiting.status["phase"] == "Pending"
    ready_cond = next(c for c in waiting.status["conditions"] if c["type"] == "Ready")
    assert (ready_cond["status"], ready_cond["reason"], ready_cond["message"]) == \
        ("False", "ContainersNotReady", "containers starting")
    up = sim.pod_status({**fresh, "status": waiting.status}, node_ready=True, waiting_for=[], since=waiting.since,
                        now=T0 + 0.5, delay=0.5)
    assert up.ready
    assert up.due is None
    assert up.status["phase"] == "Running"
    assert [(c["type"], c["status"]) for c in up.status["conditions"]] == [
        ("PodScheduled", "True"), ("ContainersReady", "True"), ("Ready", "True")]
    assert up.status["containerStatuses"][0]["state"] == {"running": {"startedAt": sim.format_time(T0)}}
    running = {**fresh, "status": up.status}
    again = sim.pod_status(running, node_ready=True, waiting_for=[], since=up.since, now=T0 + 60, delay=0.5)
    assert not sim.status_changed(running, again.status)  # nothing new: no write

    node_down = sim.pod_status(running, node_ready=False, waiting_for=[], since=up.since, now=T0 + 61, delay=0.5)
    assert (node_down.ready, node_down.since) == (False, None)
    assert node_down.status["phase"] == "Running"  # no eviction: the pod stays, not Ready
    assert next(c for c in node_down.status["conditions"] if c["type"] == "Ready")["reason"] == "NodeNotReady"
    # Its node's kubelet is back: the containers start again, and say so (a startup believes only that).
    restarting = {**fresh, "status": node_down.status}
    back = sim.pod_status(restarting, node_ready=True, waiting_for=[], since=None, now=T0 + 70, delay=0.5)
    again_up = sim.pod_status({**fresh, "status": back.status}, node_ready=True, waiting_for=[], since=back.since,
                              now=T0 + 70.5, delay=0.5)
    assert again_up.ready
    assert again_up.status["containerStatuses"][0]["state"] == {"running": {"startedAt": sim.format_time(T0 + 70)}}
    assert next(c for c in again_up.status["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == \
        sim.format_time(T0 + 70.5)
    assert again_up.status["startTime"] == up.status["startTime"]  # the same pod object

    deps = sim.pod_status(fresh, node_ready=True, waiting_for=["gitea/deployment/valkey"], since=None, now=T0,
                          delay=0)
    assert not deps.ready
    assert next(c for c in deps.status["conditions"] if c["type"] == "Ready")["message"] == \
        "waiting for gitea/deployment/valkey"
    unplaced = sim.pod_status(pod("web-2", web, on=None), node_ready=False, waiting_for=[], since=None, now=T0,
                              delay=0)
    assert unplaced.status["conditions"][0]["status"] == "False"
    assert unplaced.status["conditions"][0]["reason"] == "Unschedulable"


def test_a_stuck_pod_never_becomes_ready() -> None:
    web = deployment("web", 1)
    stuck = pod("web-1", web, stuck=True, ready=True, phase="Running")
    for seconds in (0, 10, 1000):
        verdict = sim.pod_status(stuck, node_ready=True, waiting_for=[], since=T0, now=T0 + seconds, delay=0.5)
        assert not verdict.ready
        assert verdict.since is None
    assert "stuck" in next(c for c in verdict.status["conditions"] if c["type"] == "Ready")["message"]
    # It crash-loops, as a kubelet would report it: the evidence Hecate's foundation recovery looks for.
    (container,) = verdict.status["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["restartCount"] >= 3
    assert crash_looping({"status": verdict.status})
    fine = sim.pod_status(pod("web-2", web), node_ready=True, waiting_for=[], since=T0, now=T0 + 10, delay=0.5)
    assert fine.ready
    assert fine.status["containerStatuses"][0]["state"] == {"running": {"startedAt": sim.format_time(T0)}}
    assert not crash_looping({"status": fine.status})
    slow = sim.pod_status(pod("web-3", web), node_ready=True, waiting_for=["data/statefulset/db"], since=None,
                          now=T0, delay=0.5)
    assert not crash_looping({"status": slow.status})  # waiting for a dependency is not stuck


def test_workload_status_counts_pods_and_says_available() -> None:
    web = deployment("web", 2, generation=3)
    status = sim.workload_status(web, pods=2, ready=1, now=T0)
    assert {k: status[k] for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas",
                                   "observedGeneration")} == {"replicas": 2, "readyReplicas": 1,
                                                              "availableReplicas": 1, "updatedReplicas": 2,
                                                              "observedGeneration": 3}
    available = status["conditions"][-1]
    assert (available["type"], available["status"], available["reason"]) == \
        ("Available", "False", "MinimumReplicasUnavailable")
    assert not sim.available(with_status(web, **status))
    full = sim.workload_status(with_status(web, **status), pods=2, ready=2, now=T0 + 1)
    assert sim.available(with_status(web, **full))
    assert full["conditions"][-1]["lastTransitionTime"] == sim.format_time(T0 + 1)
    same = sim.workload_status(with_status(web, **full), pods=2, ready=2, now=T0 + 99)
    assert same == full  # stable: written once

    lb = daemonset()
    ds = sim.workload_status(lb, pods=3, ready=2, now=T0, desired=3)
    assert (ds["desiredNumberScheduled"], ds["numberReady"], ds["numberAvailable"]) == (3, 2, 2)
    assert not sim.available(with_status(lb, **ds))
    assert sim.available(with_status(lb, **sim.workload_status(lb, pods=3, ready=3, now=T0, desired=3)))
    sts = sim.workload_status(statefulset("db", 1), pods=1, ready=1, now=T0)
    assert sts["currentReplicas"] == 1
    assert sim.available(with_status(statefulset("db", 1), **sts))


def test_available_needs_the_object_and_its_ready_replicas() -> None:
    assert not sim.available(None)
    assert not sim.available(deployment("web", 1))  # no status yet
    assert sim.available(deployment("web", 0))  # scaled to zero: nothing to wait for
    assert sim.available(with_status(deployment("web", 2), readyReplicas=2))


def test_dependencies_and_blockers() -> None:
    gitea = deployment("gitea", 1, ns="gitea",
                       notes={sim.DEPENDS_ON: "gitea/deployment/valkey, data/StatefulSet/db,kube-system/daemonset/lb"})
    assert sim.dependencies(gitea) == [("Deployment", "gitea", "valkey"), ("StatefulSet", "data", "db"),
                                       ("DaemonSet", "kube-system", "lb")]
    workloads = {("Deployment", "gitea", "valkey"): with_status(deployment("valkey", 1, ns="gitea"), readyReplicas=1),
                 ("StatefulSet", "data", "db"): with_status(statefulset("db", 1), readyReplicas=0)}
    assert sim.blockers(gitea, workloads) == ["data/statefulset/db", "kube-system/daemonset/lb"]
    bad = deployment("x", 1, notes={sim.DEPENDS_ON: "gitea/pod/valkey"})
    with pytest.raises(ValueError, match="not namespace/kind/name"):
        sim.dependencies(bad)
    assert sim.blockers(bad, {})[0].startswith(sim.DEPENDS_ON)  # a malformed dependency blocks
    assert sim.dependency_order({("Deployment", "gitea", "gitea"): gitea,
                                 ("Deployment", "gitea", "valkey"): deployment("valkey", 1, ns="gitea")}) == [
        ("Deployment", "gitea", "valkey"), ("Deployment", "gitea", "gitea")]


def test_owned_by_and_merge_patch() -> None:
    web = deployment("web", 1)
    assert sim.owned_by(pod("p", web), web)
    assert not sim.owned_by(pod("p", web), {**web, "metadata": {**web["metadata"], "uid": "other"}})
    assert sim.merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"c": None, "e": 3}, "d": [2]}) == \
        {"a": {"b": 1, "e": 3}, "d": [2]}
    assert not sim.status_changed({"status": {"a": 1, "b": {"c": 2}}}, {"b": {"c": 2}})
    assert sim.status_changed({"status": {"a": 1}}, {"a": 2})


# -- rule 5: Flux ------------------------------------------------------------------------------


URL = "http://gitea-http.gitea.svc.cluster.local:3000/ops/fleet.git"


def repo(branch: str = "main", *, branches: str | None = "main,dev", suspend: bool = False,
         requested: str | None = None) -> dict[str, Any]:
    notes = {sim.SERVED_BY: "gitea/deployment/gitea"}
    if branches is not None:
        notes[sim.BRANCHES] = branches
    if requested:
        notes[sim.REQUESTED_AT] = requested
    spec: dict[str, Any] = {"url": URL, "ref": {"branch": branch}}
    if suspend:
        spec["suspend"] = True
    return {"kind": "GitRepository", "metadata": {"name": "flux-system", "namespace": "flux-system",
                                                  "generation": 2, "annotations": notes}, "spec": spec}


def ready_of(status: dict[str, Any]) -> tuple[str, str, str]:
    cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["reason"], cond["message"]


def test_gitrepository_ready_when_its_server_is_available_and_has_the_branch() -> None:
    assert sim.served_by(repo()) == ("Deployment", "gitea", "gitea")
    status = sim.gitrepository_status(repo(requested="2025-06-15T15:00:00Z"), True, T0)
    revision = status["artifact"]["revision"]
    assert revision.startswith("main@sha1:")
    assert len(revision.split(":")[1]) == 40
    assert ready_of(status) == ("True", "Succeeded", f"stored artifact for revision '{revision}'")
    assert status["observedGeneration"] == 2
    assert status["lastHandledReconcileAt"] == "2025-06-15T15:00:00Z"
    assert sim.gitrepository_status(repo(branches=None, branch="anything"), True, T0)["conditions"][0]["status"] \
        == "True"  # no branch list: every branch exists

    down = sim.gitrepository_status({**repo(), "status": status}, False, T0 + 5)
    assert ready_of(down) == ("False", "GitOperationFailed",
                              f"failed to checkout and determine revision: unable to clone '{URL}': "
                              "dial tcp gitea-http.gitea.svc.cluster.local:3000: connect: connection refused")
    assert down["artifact"] == status["artifact"]  # the last artifact stays
    missing = sim.gitrepository_status(repo("feature"), True, T0)
    assert ready_of(missing) == ("False", "GitOperationFailed",
                                 f"failed to checkout and determine revision: unable to clone '{URL}': "
                                 "couldn't find remote ref \"refs/heads/feature\"")
    suspended = sim.gitrepository_status(repo(suspend=True, requested="later"), True, T0)
    assert ready_of(suspended)[:2] == ("False", "Suspended")
    assert "lastHandledReconcileAt" not in suspended  # a suspended object handles no request


def kustomization(*, suspend: bool = False, requested: str | None = None, source_ns: str | None = None,
                  status: dict[str, Any] | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "GitRepository", "name": "flux-system"}
    if source_ns:
        ref["namespace"] = source_ns
    obj: dict[str, Any] = {"kind": "Kustomization",
                           "metadata": {"name": "apps", "namespace": "flux-system", "generation": 4,
                                        "annotations": {sim.REQUESTED_AT: requested} if requested else {}},
                           "spec": {"sourceRef": ref, **({"suspend": True} if suspend else {})}}
    if status is not None:
        obj["status"] = status
    return obj


def test_kustomization_follows_its_source_unless_suspended() -> None:
    ks = kustomization(requested="r1")
    assert sim.source_ref(ks) == ("GitRepository", "flux-system", "flux-system")  # namespace defaults to its own
    ready_repo = {**repo(), "status": sim.gitrepository_status(repo(), True, T0)}
    source = sim.source_view(sim.source_ref(ks), {("GitRepository", "flux-system", "flux-system"): ready_repo})
    assert source.ready
    status = sim.flux_status(ks, source, T0)
    assert status is not None
    assert ready_of(status) == ("True", "ReconciliationSucceeded", f"Applied revision: {source.revision}")
    assert (status["lastAppliedRevision"], status["lastHandledReconcileAt"], status["observedGeneration"]) == \
        (source.revision, "r1", 4)

    failing = sim.flux_status({**ks, "status": status}, Source(ready=False), T0 + 1)
    assert failing is not None
    assert ready_of(failing) == ("False", "ArtifactFailed", "Source artifact not found, retrying in 30s")
    gone = sim.flux_status(ks, sim.source_view(sim.source_ref(ks), {}), T0)
    assert gone is not None
    assert ready_of(gone) == ("False", "ArtifactFailed", "flux-system/gitrepository/flux-system not found")

    stale = {"conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded"}]}
    assert sim.flux_status(kustomization(suspend=True, status=stale), Source(ready=False), T0) is None  # stays
    other_ns = kustomization(source_ns="infra")
    assert sim.source_ref(other_ns) == ("GitRepository", "infra", "flux-system")


def helmrelease(source_kind: str = "HelmRepository", *, renders: list[dict[str, Any]] | None = None,
                suspend: bool = False, ready: bool | None = None) -> dict[str, Any]:
    notes = {sim.RENDERS: json.dumps(renders)} if renders is not None else {}
    obj: dict[str, Any] = {
        "kind": "HelmRelease",
        "metadata": {"name": "valkey", "namespace": "gitea", "annotations": notes},
        "spec": {"releaseName": "valkey", "suspend": suspend,
                 "chart": {"spec": {"chart": "valkey", "version": "2.1.0",
                                    "sourceRef": {"kind": source_kind, "name": "src", "namespace": "flux-system"}}}}}
    if ready is not None:
        obj["status"] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return obj


def test_helmrelease_from_a_helm_repository_is_always_ready_from_a_git_repository_follows_it() -> None:
    hr = helmrelease()
    source = sim.source_view(sim.source_ref(hr), {}, "2.1.0")
    assert source == Source(ready=True, revision="2.1.0")
    status = sim.flux_status(hr, source, T0)
    assert status is not None
    assert ready_of(status) == ("True", "InstallSucceeded",
                                "Helm install succeeded for release gitea/valkey.v1 with chart valkey@2.1.0")
    from_git = helmrelease("GitRepository")
    blocked = sim.flux_status(from_git, sim.source_view(sim.source_ref(from_git), {
        ("GitRepository", "flux-system", "src"): {**repo(), "status": sim.gitrepository_status(repo(), False, T0)}}),
        T0)
    assert blocked is not None
    assert ready_of(blocked)[:2] == ("False", "ArtifactFailed")


VALKEY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "valkey"}, "spec": {"replicas": 1}}
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf", "namespace": "other"}}


def test_renders_only_what_is_missing_and_only_when_reconciling() -> None:
    hr = helmrelease(renders=[VALKEY, CM], ready=True)
    missing = sim.renders_to_create(hr, set())
    assert [(m["kind"], m["metadata"]["namespace"]) for m in missing] == [("Deployment", "gitea"),
                                                                          ("ConfigMap", "other")]
    assert "namespace" not in VALKEY["metadata"]  # the annotation's manifests are not mutated
    assert sim.renders_to_create(hr, {("Deployment", "gitea", "valkey")}) == [missing[1]]  # never overwrites
    assert sim.renders_to_create(helmrelease(renders=[VALKEY], ready=False), set()) == []  # source not Ready
    assert sim.renders_to_create(helmrelease(renders=[VALKEY], ready=True, suspend=True), set()) == []
    assert sim.renders_to_create(helmrelease(ready=True), set()) == []
    broken = helmrelease(ready=True)
    broken["metadata"]["annotations"][sim.RENDERS] = '{"not": "a list"}'
    with pytest.raises(ValueError, match="JSON list"):
        sim.renders_to_create(broken, set())
