"""Staged startup on the lab: real sshd nodes, real upsd, the emulated k3s + Flux cluster.

The cold-start tests first shut the lab cluster down with the real shutdown (Flux
suspended, tiers scaled to zero, agents cordoned and drained, k3s stopped, nodes powered
off), then "mains returns": every node boots with its k3s unit disabled (so the startup
orders the start), and the simulator's cold-start rule has lost ``gitea/gitea-valkey``,
which Gitea needs and which a Flux HelmRelease installs from Gitea -- the deadlock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hecate.adapters.kube import Kube
from hecate.domain.config import HecateConfig
from hecate.domain.journal import StepStatus
from hecate.domain.runs import RunResult
from hecate.services import bootstrap_cache, shutdown, startup
from hecate.services.executor import StepOutcome
from hecate.services.progress import JsonLines
from hecate_lab import nodes
from hecate_lab.cluster_seed import seed_workloads
from hecate_lab.cluster_sim import Delays
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

VALKEY = "gitea/deployment/gitea-valkey"


def lab_config(lab: Lab, **sections: dict[str, Any]) -> HecateConfig:
    """The lab's hecate.yaml with short waits (the simulator's delays are under a second)."""
    data = lab.hecate_config()
    data["shutdown"] = {**data["shutdown"], "drain_timeout_s": 1}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return HecateConfig.model_validate(data)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def until(probe: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = run(probe())
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Any]:
    made: list[Kube] = []

    def make(lab: Lab) -> Kube:
        k = Kube(lab.kubeconfig, 2.0, cooldown=0.2)
        made.append(k)
        return k
    yield make
    for k in made:
        k.close()


def healthy(lab: Lab, kube: Kube) -> None:
    """Seed the lab and wait for the simulator to report it healthy."""
    seed_workloads(lab.kubeconfig)

    async def ready() -> bool:
        repo = await kube.git_repository("flux-system", "flux-system")
        status = await kube.flux_status()
        return repo["ready"] and all(s["ready"] for s in status.values() if not s["suspended"])
    assert until(ready), "the seeded lab did not become healthy"


def cold_cycle(lab: Lab, config: HecateConfig, *, skip: tuple[str, ...] = ()) -> None:
    """Shut the lab down with Hecate, then boot every node (but ``skip``) with k3s disabled."""
    record = run(shutdown.run(config, {"source": "test"}, JsonLines()))
    assert record.result in (RunResult.success, RunResult.degraded), record.stages
    booted = []
    for node in lab.nodes:
        if node.name in skip:
            booted.append(node)
            continue
        booted.append(nodes.power_on(node, k3s_at_boot=False))
    lab.nodes = booted
    lab.save()


def started_at(lab: Lab, name: str, unit: str) -> float:
    command = f"systemctl start --no-block {unit}"
    return next(c["t"] for c in nodes.read_commands(lab.node(name).dir) if c["cmd"] == command)


def test_cold_start_stays_deadlocked_without_the_fallback_and_recovers_with_it(lab: Lab, kube: Any) -> None:
    k = kube(lab)
    config = lab_config(lab)
    healthy(lab, k)
    assert run(bootstrap_cache.refresh(config, k))["written"]
    replicas_before = {**run(k.replicas("hecate.io/tier=apps")), **run(k.replicas("hecate.io/tier=data"))}
    agents = [n.name for n in lab.nodes if n.role == "agent"]
    # A person cordoned one agent before the outage: startup must leave that cordon alone.
    run(k._raw("cordon", "PATCH", f"/api/v1/nodes/{agents[1]}", {"spec": {"unschedulable": True}},
               write=True, content_type="application/merge-patch+json"))

    cold_cycle(lab, config)

    # 1. Without the fallback: Flux stays deadlocked for the whole wait, and the run says so.
    no_fallback = lab_config(lab, flux={"bootstrap_fallback": False, "ready_timeout_s": 4, "detection_window_s": 1},
                             startup={"verify_timeout_s": 1})
    stuck = run(startup.run(no_fallback, {"source": "test"}, JsonLines()))
    assert stuck.result is RunResult.degraded
    assert stuck.changes["deadlock"] is True
    assert stuck.changes["created"] == []
    bootstrap = next(s for s in stuck.stages if s.name == "flux-bootstrap")
    assert bootstrap.result is RunResult.degraded
    assert "fallback is off" in bootstrap.detail
    repo = run(k.git_repository("flux-system", "flux-system"))
    assert not repo["ready"]
    assert run(k.get_object(VALKEY)) is None

    # 2. The same lab, with the fallback: the deadlock is broken from the cache.
    record = run(startup.run(config, {"source": "test"}, JsonLines()))
    assert record.result is RunResult.success, [(s.name, s.detail) for s in record.stages]
    assert record.changes["deadlock"] is True
    assert VALKEY in record.changes["created"]
    assert run(k.git_repository("flux-system", "flux-system"))["ready"]
    status = run(k.flux_status())
    assert status["flux-system/kustomization/experiments"]["suspended"]  # a user's suspension stays
    assert not any(s["ours"] for s in status.values())
    assert all(s["ready"] for s in status.values() if not s["suspended"])
    assert run(k.unschedulable_nodes()) == [agents[1]]  # only Hecate's cordon was undone
    restored = {**run(k.replicas("hecate.io/tier=apps")), **run(k.replicas("hecate.io/tier=data"))}
    assert restored == replicas_before
    # Servers before agents: the agents were started only after the API answered.
    server = next(n.name for n in lab.nodes if n.role == "server")
    assert all(started_at(lab, server, "k3s") < started_at(lab, a, "k3s-agent") for a in agents)
    runs = json.loads((lab.state_dir / "runs.json").read_text())
    assert [r["kind"] for r in runs][-3:] == ["shutdown", "startup", "startup"]


@pytest.mark.timeout(150)
def test_a_server_that_never_comes_back_degrades_the_run_and_the_rest_proceeds(tmp_path: Path, kube: Any) -> None:
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=3, agents=1))  # no preflight: no UPS needed
    try:
        k = kube(lab)
        config = lab_config(lab, startup={"boot_timeout_s": 2, "node_ready_timeout_s": 3, "verify_timeout_s": 2})
        healthy(lab, k)
        assert run(bootstrap_cache.refresh(config, k))["written"]
        dead = "titan-s3"
        cold_cycle(lab, config, skip=(dead,))
        record = run(startup.run(config, {"source": "test"}, JsonLines()))
        stages = {s.name: s for s in record.stages}
        assert record.result is RunResult.degraded
        assert stages["start-servers"].result is RunResult.degraded
        assert dead in stages["start-servers"].detail
        assert dead in stages["nodes-ready"].detail
        assert f"node {dead} not Ready" in stages["verify"].detail
        # Two of three servers are a quorum: everything else came back.
        for name in ("wait-api", "start-agents", "uncordon", "flux-resume", "flux-bootstrap", "restore"):
            assert stages[name].result is RunResult.success, (name, stages[name].detail)
        assert run(k.git_repository("flux-system", "flux-system"))["ready"]
    finally:
        lab.down()


def test_startup_on_a_healthy_cluster_changes_nothing_and_force_branch_repoints_flux(bare_lab: Lab,
                                                                                     kube: Any) -> None:
    lab = bare_lab
    k = kube(lab)
    config = lab_config(lab)
    healthy(lab, k)
    workloads = ["apps/deployment/web", "apps/deployment/api", "data/deployment/redis", "data/statefulset/postgres",
                 "gitea/deployment/gitea", "kube-system/deployment/coredns"]
    flux = ["flux-system/gitrepository/flux-system", "flux-system/kustomization/flux-system",
            "flux-system/kustomization/experiments", "gitea/helmrelease/gitea"]

    def snapshot() -> dict[str, Any]:
        objects = {ref: run(k.get_object(ref)) for ref in workloads + flux}
        return {"versions": {ref: objects[ref]["metadata"]["resourceVersion"] for ref in workloads},
                "specs": {ref: objects[ref]["spec"] for ref in flux},
                "nodes": {n.name: run(k._raw("get", "GET", f"/api/v1/nodes/{n.name}"))["spec"] for n in lab.nodes}}

    before = snapshot()
    record = run(startup.run(config, {"source": "boot"}, JsonLines()))
    assert record.result is RunResult.success, [(s.name, s.detail) for s in record.stages]
    changed = {key: value for key, value in record.changes.items() if value}
    assert changed == {}
    assert not any(c["cmd"].startswith("systemctl start") for n in lab.nodes for c in nodes.read_commands(n.dir))
    # Not one write to a workload; Flux objects only got the reconcile request (an annotation).
    assert snapshot() == before

    # Someone pointed Flux at a branch that does not exist: --force-flux-branch main repoints it.
    run(k.set_git_branch("flux-system", "flux-system", "feature-x"))
    assert until(lambda: _not_ready(k))
    forced = run(startup.run(config, {"source": "manual"}, JsonLines(), force_branch="main"))
    assert forced.result is RunResult.success, [(s.name, s.detail) for s in forced.stages]
    assert forced.changes["branch"] == {"from": "feature-x", "to": "main"}
    repo = run(k.git_repository("flux-system", "flux-system"))
    assert repo["branch"] == "main"
    assert repo["ready"]

    # CoreDNS's pod crash-loops: the foundation stage restarts it after recovery_after_s.
    pods = run(k._raw("pods", "GET", "/api/v1/namespaces/kube-system/pods?labelSelector=app%3Dcoredns"))["items"]
    stuck = pods[0]["metadata"]["name"]
    run(k._raw("stick", "PATCH", f"/api/v1/namespaces/kube-system/pods/{stuck}",
               {"metadata": {"annotations": {"lab.hecate.io/stuck": "true"}}}, write=True,
               content_type="application/merge-patch+json"))
    assert until(lambda: _unavailable(k, "kube-system/deployment/coredns"))
    recovered = run(startup.run(config, {"source": "manual"}, JsonLines()))
    assert recovered.result is RunResult.success, [(s.name, s.detail) for s in recovered.stages]
    assert recovered.changes["restarted_pods"] == [f"kube-system/{stuck}"]
    assert recovered.changes["created"] == []  # nothing was missing: the cache was not needed
    assert run(k.workload("kube-system/deployment/coredns"))["available"]


async def _unavailable(k: Kube, ref: str) -> bool:
    return not (await k.workload(ref))["available"]


async def _not_ready(k: Kube) -> bool:
    return not (await k.git_repository("flux-system", "flux-system"))["ready"]


class WatchNodesReady:
    """Progress that brings ``late`` back 1 s into ``nodes-ready``, first noting what the API says of it."""

    def __init__(self, lab: Lab, late: str) -> None:
        self.lab, self.late = lab, late
        self.task: asyncio.Task[None] | None = None
        self.stale_ready: bool | None = None
        self.back_at: float | None = None
        self.finished: dict[tuple[str, str], tuple[float, StepOutcome]] = {}

    def stage_started(self, stage: Any, index: int, total: int) -> None:
        if stage.name == "nodes-ready":
            self.task = asyncio.get_running_loop().create_task(self.bring_back())

    async def bring_back(self) -> None:
        await asyncio.sleep(1.0)
        async with Kube(self.lab.kubeconfig, 2.0) as probe:
            self.stale_ready = (await probe.nodes_ready())[self.late]  # the status from before the outage
        self.back_at = time.monotonic()
        booted = await asyncio.to_thread(nodes.power_on, self.lab.node(self.late), k3s_at_boot=True)
        self.lab.nodes = [booted if n.name == self.late else n for n in self.lab.nodes]
        self.lab.save()

    def step_finished(self, outcome: StepOutcome) -> None:
        self.finished[(outcome.stage, outcome.step.target)] = (time.monotonic(), outcome)

    def stage_finished(self, record: Any) -> None: ...

    def run_finished(self, record: Any) -> None: ...


def test_a_cold_start_with_stale_ready_waits_for_the_kubelet_not_the_status_from_before(tmp_path: Path) -> None:
    # The node controller's grace period (scaled) outlasts the test: a Node whose kubelet is off keeps
    # the Ready=True it had when the power went, as in the first 40 s after a real cluster's API returns.
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=1, agents=2,
                                           delays=Delays(api=0.2, node=0.2, pod=0.1, grace=60)))
    try:
        late = "titan-a2"
        config = lab_config(lab, startup={"foundation": [], "boot_timeout_s": 1.5, "verify_timeout_s": 1},
                            flux={"ready_timeout_s": 1})
        cold_cycle(lab, config, skip=(late,))  # Hecate's shutdown; the agents' Nodes keep Ready=True
        watch = WatchNodesReady(lab, late)
        run(startup.run(config, {"source": "test"}, watch))
        assert watch.stale_ready is True  # the API still said Ready while that node was powered off
        assert watch.back_at is not None
        done_at, outcome = watch.finished[("nodes-ready", late)]
        assert outcome.status is StepStatus.ok, outcome.detail
        assert done_at > watch.back_at  # it passed on the kubelet's fresh signal, not on the old status
        assert outcome.duration_s >= 1.0
        for other in ("titan-s1", "titan-a1"):
            assert watch.finished[("nodes-ready", other)][1].status is StepStatus.ok
    finally:
        lab.down()
