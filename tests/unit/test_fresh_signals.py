"""Fresh signals after a cold start: which Node and workload statuses a startup believes (no cluster).

The pure checks of hecate.domain.kubeobjects: a Node counts as Ready only when its kubelet renewed
its Lease or posted a heartbeat since the run began; a workload counts as available only with a
status of its current generation and enough pods confirmed by live kubelets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hecate.domain.kubeobjects import (
    KUBELET_SETTLE,
    NodeSignal,
    label_selector,
    node_signal,
    node_signals,
    pod_confirmed,
    workload_fresh,
)
from hecate.domain.timestamps import rfc3339

SINCE = datetime(2026, 11, 27, 4, 10, 0, 250000, tzinfo=UTC)  # the run began (power is back)
NOW = SINCE + timedelta(seconds=20)
OUTAGE = SINCE - timedelta(hours=1)  # the last thing written before the power went


def at(offset_s: float, *, fraction: bool = False) -> str:
    return rfc3339(SINCE + timedelta(seconds=offset_s), fraction=fraction)


def node(status: str = "True", heartbeat: str | None = None, transition: str | None = None,
         reason: str = "KubeletReady", name: str = "titan-a1") -> dict[str, Any]:
    cond = {"type": "Ready", "status": status, "reason": reason,
            "lastHeartbeatTime": heartbeat or rfc3339(OUTAGE), "lastTransitionTime": transition or rfc3339(OUTAGE)}
    return {"metadata": {"name": name}, "status": {"conditions": [cond]}}


def lease(renewed: str | None, name: str = "titan-a1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, **({"renewTime": renewed} if renewed else {})}}


@pytest.mark.parametrize(
    ("obj", "the_lease", "ready", "fresh"),
    [
        pytest.param(node(), lease(rfc3339(OUTAGE, fraction=True)), True, False, id="stale-ready-from-before-outage"),
        pytest.param(node(), None, True, False, id="stale-ready-no-lease"),
        pytest.param(node(), lease(at(0.5, fraction=True)), True, True, id="lease-renewed-since"),
        pytest.param(node(), lease(at(-0.1, fraction=True)), True, False, id="lease-renewed-just-before"),
        pytest.param(node(heartbeat=at(1)), None, True, True, id="heartbeat-since"),
        # metav1.Time has whole seconds: 04:10:00Z may be any instant of that second, the run began at .25
        pytest.param(node(heartbeat=at(-0.25)), None, True, False, id="heartbeat-in-the-starting-second"),
        pytest.param(node("False", heartbeat=at(1), reason="KubeletNotReady"), lease(at(1, fraction=True)),
                     False, True, id="kubelet-back-not-ready-yet"),
        pytest.param(node(heartbeat="garbage"), lease("not a time"), True, False, id="unreadable-times"),
    ],
)
def test_a_node_counts_only_with_a_lease_or_heartbeat_since_the_run_began(
        obj: dict[str, Any], the_lease: dict[str, Any] | None, ready: bool, fresh: bool) -> None:
    signal = node_signal(obj, the_lease, SINCE, NOW)
    assert (signal.ready, signal.fresh, signal.up) == (ready, fresh, ready and fresh)


def test_the_details_say_why_a_node_is_not_believed() -> None:
    stale = node_signal(node(), lease(rfc3339(OUTAGE, fraction=True)), SINCE, NOW)
    assert stale.detail == ("Ready only by a status from before 2026-11-27T04:10:00Z: its kubelet has not posted "
                            "since (last 2026-11-27T03:10:00Z)")
    assert node_signal(node("False", reason="NodeStatusUnknown"), None, SINCE, NOW).detail == \
        "not Ready (NodeStatusUnknown)"
    assert node_signal(node(), lease(at(1, fraction=True)), SINCE, NOW).detail == "Ready"


def test_a_node_that_came_back_during_the_run_remembers_when_until_it_has_settled() -> None:
    back = node(heartbeat=at(3), transition=at(3))
    assert node_signal(back, None, SINCE, NOW).back_at == SINCE.replace(microsecond=0) + timedelta(seconds=3)
    assert node_signal(back, None, SINCE, SINCE + timedelta(seconds=3) + KUBELET_SETTLE).back_at is None
    always_up = node(transition=rfc3339(OUTAGE - timedelta(days=3)))
    assert node_signal(always_up, lease(at(1, fraction=True)), SINCE, NOW).back_at is None


def test_node_signals_pair_each_node_with_its_lease() -> None:
    signals = node_signals([node(name="a"), node(name="b")], [lease(at(1, fraction=True), name="b")], SINCE, NOW)
    assert {n: s.up for n, s in signals.items()} == {"a": False, "b": True}


def pod(node_name: str = "titan-a1", ready: str = "True", ready_at: str | None = None, start: str | None = None,
        started: str | None = None, terminating: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "ready": ready == "True",
                                 "state": {"running": {"startedAt": started}} if started else {"waiting": {}}}
    meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
    if terminating:
        meta["deletionTimestamp"] = at(1)
    return {"metadata": meta, "spec": {"nodeName": node_name},
            "status": {"startTime": start or rfc3339(OUTAGE - timedelta(days=1)),
                       "conditions": [{"type": "Ready", "status": ready,
                                       "lastTransitionTime": ready_at or rfc3339(OUTAGE - timedelta(days=1))}],
                       "containerStatuses": [container]}}


UP_BEFORE = NodeSignal(ready=True, fresh=True)
CAME_BACK = NodeSignal(ready=True, fresh=True, back_at=SINCE.replace(microsecond=0) + timedelta(seconds=5))
STALE = NodeSignal(ready=True, fresh=False)


@pytest.mark.parametrize(
    ("the_pod", "signal", "confirmed"),
    [
        pytest.param(pod(), UP_BEFORE, True, id="node-up-before-the-run-keeps-its-pods-current"),
        pytest.param(pod(), STALE, False, id="node-not-back-stale-pod"),
        pytest.param(pod(), None, False, id="node-unknown"),
        pytest.param(pod(), CAME_BACK, False, id="node-back-pod-from-before"),
        pytest.param(pod(ready_at=at(6)), CAME_BACK, True, id="node-back-pod-turned-ready-since"),
        pytest.param(pod(ready_at=at(6), ready="False"), CAME_BACK, False, id="node-back-pod-not-ready"),
        pytest.param(pod(started=at(5)), CAME_BACK, True, id="node-back-container-restarted-since"),
        pytest.param(pod(start=at(7)), CAME_BACK, True, id="node-back-new-pod"),
        pytest.param(pod(terminating=True), UP_BEFORE, False, id="terminating"),
    ],
)
def test_a_pod_counts_once_a_live_kubelet_confirmed_it(the_pod: dict[str, Any], signal: NodeSignal | None,
                                                       confirmed: bool) -> None:
    assert pod_confirmed(the_pod, signal) is confirmed


def deployment(replicas: int = 2, ready: int = 2, generation: int = 3, observed: int | None = 3) -> dict[str, Any]:
    status: dict[str, Any] = {"readyReplicas": ready}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "web", "namespace": "ns", "generation": generation},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}}, "status": status}


def test_a_workload_counts_only_with_a_status_of_its_generation_and_confirmed_pods() -> None:
    nodes = {"titan-a1": CAME_BACK, "titan-a2": UP_BEFORE, "titan-a3": STALE}
    fresh = [pod("titan-a1", ready_at=at(6)), pod("titan-a2")]
    assert workload_fresh("Deployment", deployment(), fresh, nodes) == (True, "2/2 ready")
    # readyReplicas from before the outage: the pods' kubelets have not confirmed them
    stale = [pod("titan-a1"), pod("titan-a3")]
    assert workload_fresh("Deployment", deployment(), stale, nodes) == (
        False, "2/2 ready by its status, 0/2 confirmed by a live kubelet since power returned")
    assert workload_fresh("Deployment", deployment(observed=2), fresh, nodes) == (
        False, "2/2 ready by a status of generation 2, not 3 yet")
    assert workload_fresh("Deployment", deployment(observed=None), fresh, nodes)[0] is False
    assert workload_fresh("Deployment", deployment(ready=1), fresh, nodes) == (False, "1/2 ready")
    assert workload_fresh("Deployment", deployment(replicas=0, ready=0), [], nodes) == (True, "0/0 ready")


def test_a_daemonset_wants_a_confirmed_pod_per_scheduled_node() -> None:
    ds = {"metadata": {"generation": 1}, "spec": {"selector": {"matchLabels": {"app": "svclb"}}},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "numberReady": 2}}
    nodes = {"titan-a1": UP_BEFORE, "titan-a2": STALE}
    assert workload_fresh("DaemonSet", ds, [pod("titan-a1"), pod("titan-a2")], nodes)[0] is False
    nodes["titan-a2"] = UP_BEFORE
    assert workload_fresh("DaemonSet", ds, [pod("titan-a1"), pod("titan-a2")], nodes) == (True, "2/2 ready")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"matchLabels": {"app": "web", "tier": "apps"}}, "app=web,tier=apps"),
        ({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "NotIn", "values": ["c"]},
            {"key": "y", "operator": "Exists"}, {"key": "z", "operator": "DoesNotExist"}]},
         "app=web,env in (a,b),x notin (c),y,!z"),
        ({}, None),
        (None, None),
    ],
)
def test_label_selector(selector: dict[str, Any] | None, expected: str | None) -> None:
    assert label_selector(selector) == expected
