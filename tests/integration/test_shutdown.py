"""Executed shutdowns of a lab cluster: real sshd nodes, the emulated API, the real executor.

Order is checked from the nodes' own command logs, never from Hecate's view of itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Quiet
from hecate.adapters import config as config_mod
from hecate.adapters.kube import Kube
from hecate.domain import budget
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunRecord, RunResult
from hecate.services import shutdown
from hecate_lab import cluster_seed, kubeapi, nodes
from hecate_lab.cluster_sim import Delays
from hecate_lab.testbed import Lab, LabSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Lab]:
    """3 servers + 5 agents, no UPS, with seeded workloads and Flux objects."""
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=3, agents=5,
                                           delays=Delays(api=0.2, node=0.1, pod=0.1)))  # seeded sooner
    try:
        cluster_seed.seed_workloads(lab.kubeconfig)
        yield lab
    finally:
        lab.down()


def lab_config(lab: Lab, **shutdown_overrides: Any) -> HecateConfig:
    data = lab.hecate_config()
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 5})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({
        "execute": True, "drain_timeout_s": 2,
        "scale_down": [{"name": "apps", "selector": "hecate.io/tier=apps"},
                       {"name": "data", "selector": "hecate.io/tier=data"}],
        **shutdown_overrides,
    })
    path = lab.dir / "hecate-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(path, {})


def commands(lab: Lab) -> list[tuple[float, str, str]]:
    """(time, node, command) of every command every node ran, in time order."""
    rows = [(c["t"], n.name, c["cmd"]) for n in lab.nodes for c in nodes.read_commands(n.dir)]
    return sorted(rows)


def first(rows: list[tuple[float, str, str]], node: str, needle: str) -> float:
    return next(t for t, n, c in rows if n == node and needle in c)


def run(config: HecateConfig, **kw: Any) -> RunRecord:
    return asyncio.run(shutdown.run(config, {"source": "test"}, Quiet(), **kw))


def test_full_shutdown_in_order_coordinator_last(cluster: Lab) -> None:
    config = lab_config(cluster)
    record = run(config)
    rows = commands(cluster)
    agents = [n.name for n in cluster.nodes if n.role == "agent"]
    servers = [n.name for n in cluster.nodes if n.role == "server"]

    # agents stop before servers; servers one by one in power-off order
    last_agent_stop = max(first(rows, a, "systemctl stop k3s-agent") for a in agents)
    server_stops = [first(rows, s, "systemctl stop k3s") for s in servers]
    assert last_agent_stop < min(server_stops)
    assert server_stops == sorted(server_stops)  # titan-s1, s2, s3 = poweroff_order 0, 1, 2
    # killall before poweroff on every node; agents powered off before servers
    for node in agents + servers:
        assert first(rows, node, "k3s-killall.sh") < first(rows, node, "poweroff")
    assert max(first(rows, a, "poweroff") for a in agents) < min(first(rows, s, "poweroff") for s in servers)
    # the coordinator last
    coordinator_off = float((cluster.dir / "coordinator-poweroff").read_text().split()[0])
    assert coordinator_off > max(t for t, _, _ in rows)
    for node in cluster.nodes:
        assert nodes.read_state(node.dir)["power"] == "off"

    assert record.result is RunResult.success, [s for s in record.stages if s.result is not RunResult.success]
    assert [s.name for s in record.stages] == [
        "flux-suspend", "scale-down", "drain", "stop-agents", "stop-servers", "killall", "poweroff", "local-poweroff"]
    assert sorted(record.changes["flux_suspended"]) == [
        "flux-system/kustomization/flux-system", "gitea/helmrelease/gitea", "gitea/helmrelease/gitea-valkey"]
    assert record.changes["flux_already_suspended"] == ["flux-system/kustomization/experiments"]
    assert record.changes["scaled"] == {"apps/deployment/web": 2, "apps/deployment/api": 1,
                                        "data/deployment/redis": 1, "data/statefulset/postgres": 1}
    assert sorted(record.changes["cordoned"]) == agents
    drain = next(s for s in record.stages if s.name == "drain")
    assert drain.duration_s >= 2  # the PDB-blocked gitea-postgresql-0 held the drain until its timeout, then went on
    runs = [r for r in json.loads((config.state_dir / "runs.json").read_text()) if r["id"] == record.id]
    assert [r["result"] for r in runs] == ["success"]


def test_dry_run_touches_nothing(cluster: Lab) -> None:
    config = lab_config(cluster)
    path = cluster.dir / "hecate-test.yaml"
    before = _api_state(cluster)
    out = subprocess.run([sys.executable, "-m", "hecate", "shutdown", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "Dry-run: nothing was touched" in out
    for stage in ("flux-suspend", "scale-down", "drain", "stop-agents", "stop-servers", "killall", "poweroff",
                  "local-poweroff"):
        assert stage in out
    assert commands(cluster) == []  # zero SSH commands reached any node
    assert _api_state(cluster) == before  # zero API writes
    assert not (cluster.dir / "coordinator-poweroff").exists()
    assert not config.state_dir.joinpath("runs.json").exists()


def _api_state(lab: Lab) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with Kube(lab.kubeconfig, 5) as kube:
            return {"nodes": await kube.nodes_ready(), "writes": kube.writes,
                    "rv": await asyncio.to_thread(_resource_versions, lab)}
    return asyncio.run(read())


def _resource_versions(lab: Lab) -> list[str]:
    import urllib.request
    url = kubeapi.api_url(lab.kubeconfig)
    out = []
    for path in ("/api/v1/nodes", "/apis/apps/v1/deployments", "/apis/apps/v1/statefulsets", "/api/v1/pods",
                 "/apis/kustomize.toolkit.fluxcd.io/v1/kustomizations"):
        with urllib.request.urlopen(url + path, timeout=5) as resp:  # noqa: S310 - the lab API on loopback
            items = json.loads(resp.read())["items"]
        out += sorted(f"{i['metadata'].get('namespace')}/{i['metadata']['name']}@{i['metadata'].get('resourceVersion')}"
                      f"/{i.get('spec', {}).get('replicas')}/{i.get('spec', {}).get('suspend')}"
                      f"/{i.get('spec', {}).get('unschedulable')}" for i in items)
    return out


def test_unreachable_hanging_and_wrong_key_nodes_do_not_stop_the_run(cluster: Lab) -> None:
    gone, hangs, impostor = cluster.node("titan-a1"), cluster.node("titan-a2"), cluster.node("titan-a3")
    nodes.stop_nodes([gone], lab_id=None)  # its sshd is gone: unreachable
    nodes.set_fault(hangs.dir, "systemctl stop k3s-agent", hang=True)
    known = cluster.ssh_dir / "known_hosts"
    lines = known.read_text().splitlines()
    other_key = next(line.split(" ", 1)[1] for line in lines if line.startswith(f"{hangs.known_hosts_name} "))
    known.write_text("\n".join(f"{impostor.known_hosts_name} {other_key}" if line.startswith(
        f"{impostor.known_hosts_name} ") else line for line in lines) + "\n")
    config = lab_config(cluster)
    started = time.monotonic()
    record = run(config)
    elapsed = time.monotonic() - started
    stop_agents = next(s for s in record.stages if s.name == "stop-agents")
    assert stop_agents.result is RunResult.degraded
    assert "titan-a1:" in stop_agents.detail  # unreachable, named
    assert "titan-a2: titan-a2: 'systemctl stop k3s-agent' did not finish within 5s" in stop_agents.detail  # bounded
    assert "titan-a3: host key for titan-a3" in stop_agents.detail  # refused, reported
    assert record.result is RunResult.degraded
    # the rest still went down, coordinator last
    for name in ("titan-a4", "titan-a5", "titan-s1", "titan-s2", "titan-s3"):
        assert nodes.read_state(cluster.node(name).dir)["power"] == "off"
    assert (cluster.dir / "coordinator-poweroff").exists()
    assert not [c for t, n, c in commands(cluster) if n == "titan-a3"]  # nothing ran on the impostor
    # titan-a1 proved unreachable in stop-agents: later stages re-probe it once (2 s at most), no retry ladder.
    by_name = {s.name: s for s in record.stages}
    for stage in ("killall", "poweroff"):
        assert "titan-a1: titan-a1 is down: not tried again (its stop-service step found it unreachable" \
            in by_name[stage].detail
        # before: 2-3 attempts of ~3 s each + backoff. The power-off's 4 waves each wait for their nodes to go.
        assert by_name[stage].duration_s < (3.5 if stage == "killall" else 5.5), by_name[stage]
    not_done = {(r.stage, r.target): r.status.value for r in record.not_done}
    assert {k: v for k, v in not_done.items() if k[1] == "titan-a1"} == {
        ("stop-agents", "titan-a1"): "failed", ("killall", "titan-a1"): "failed", ("poweroff", "titan-a1"): "failed"}
    assert elapsed < 60


def test_api_down_skips_kubernetes_steps_still_stops_nodes_and_says_so(cluster: Lab) -> None:
    """Skipped Kubernetes steps make the run degraded (exit 3) with a summary, and it teaches no budget."""
    assert cluster.kubeapi_pid is not None
    kubeapi.stop_kubeapi(cluster.kubeapi_pid)
    cluster.kubeapi_pid = None
    config = lab_config(cluster)
    done = subprocess.run([sys.executable, "-m", "hecate", "shutdown", "--execute", "--config",
                           str(cluster.dir / "hecate-test.yaml")], capture_output=True, text=True, timeout=120,
                          check=False)
    for node in cluster.nodes:
        assert nodes.read_state(node.dir)["power"] == "off"
    assert done.returncode == 3, done.stdout + done.stderr
    record = RunRecord.model_validate(json.loads((config.state_dir / "runs.json").read_text())[-1])
    by_name = {s.name: s for s in record.stages}
    for stage in ("flux-suspend", "scale-down", "drain"):
        assert "skipped: Kubernetes API unreachable" in by_name[stage].detail
        assert by_name[stage].result is RunResult.degraded
        assert f"{stage}: degraded" in done.stdout
    assert by_name["poweroff"].result is RunResult.success
    assert record.result is RunResult.degraded
    skipped = sorted((r.stage, r.target) for r in record.not_done)
    assert skipped == sorted([("flux-suspend", "flux"), ("scale-down", "apps"), ("scale-down", "data")]
                             + [("drain", n.name) for n in cluster.nodes if n.role == "agent"])
    assert "Not done in shutdown run" in done.stdout
    assert f"degraded in {record.duration_s:.1f}s: {len(skipped)} steps not done (above)" in done.stdout
    assert "Traceback" not in done.stderr
    assert all(line.startswith("hecate: ") for line in done.stderr.splitlines()), done.stderr
    assert budget.estimate([record], default_s=300, history=5, safety_factor=1.1).source.value == "default"
    # Bounded: flux-suspend retried within its window (8 s step - 2 s call - 0.5 s = 5.5 s; the last attempt
    # within one client cool-down of its end), the later steps tried once.
    assert "skipped: Kubernetes API unreachable for 3." in by_name["flux-suspend"].detail
    assert 3.0 <= by_name["flux-suspend"].duration_s < 6.0
    for stage in ("scale-down", "drain"):  # tried once each: no "(N attempts)", far from a 5.5 s window
        assert "attempts)" not in by_name[stage].detail, by_name[stage].detail
        assert by_name[stage].duration_s < 4.0, by_name[stage]


def test_an_api_down_for_3_s_at_the_start_still_suspends_scales_and_drains(cluster: Lab) -> None:
    pid = cluster.kubeapi_pid
    assert pid is not None
    config = lab_config(cluster)
    agents = sorted(n.name for n in cluster.nodes if n.role == "agent")
    os.kill(pid, signal.SIGSTOP)  # the API process stands still: calls hang until their 2 s timeout
    resume = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        record = run(config)
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    by_name = {s.name: s for s in record.stages}
    for stage in ("flux-suspend", "scale-down", "drain"):
        assert by_name[stage].result is RunResult.success, (stage, by_name[stage].detail)
        assert "skipped" not in by_name[stage].detail
    assert by_name["flux-suspend"].duration_s >= 2.5  # it waited the outage out
    assert sorted(record.changes["flux_suspended"]) == [
        "flux-system/kustomization/flux-system", "gitea/helmrelease/gitea", "gitea/helmrelease/gitea-valkey"]
    assert record.changes["scaled"] == {"apps/deployment/web": 2, "apps/deployment/api": 1,
                                        "data/deployment/redis": 1, "data/statefulset/postgres": 1}
    assert sorted(record.changes["cordoned"]) == agents
    assert record.result is RunResult.success
    for node in cluster.nodes:
        assert nodes.read_state(node.dir)["power"] == "off"


def test_power_back_before_the_first_disruptive_stage_aborts(cluster: Lab) -> None:
    config = lab_config(cluster)
    record = run(config, power_restored=iter([False, True, True]).__next__)
    assert record.result is RunResult.aborted
    assert [s.name for s in record.stages] == ["flux-suspend"]
    assert commands(cluster) == []

    async def suspended() -> list[bool]:
        async with Kube(cluster.kubeconfig, 5) as kube:
            done = await kube.flux_suspend()  # suspends again what the abort resumed
            await kube.flux_resume(done["suspended"])
            return [bool(done["suspended"])]
    assert asyncio.run(suspended()) == [True]  # the abort had resumed them


def test_sigkill_mid_run_resumes_without_repeating_finished_steps(cluster: Lab) -> None:
    config = lab_config(cluster)
    path = cluster.dir / "hecate-test.yaml"
    for server in ("titan-s2", "titan-s3"):
        nodes.set_fault(cluster.node(server).dir, "systemctl stop k3s", delay_s=3)
    proc = subprocess.Popen([sys.executable, "-m", "hecate", "shutdown", "--execute", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(n == "titan-s2" and "stop k3s" in c for _, n, c in commands(cluster)):
            assert time.monotonic() < deadline, "the run never reached stop-servers"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = commands(cluster)
    for server in ("titan-s2", "titan-s3"):
        nodes.clear_faults(cluster.node(server).dir)
    record = run(config)  # the same entry point the CLI and the daemon use: it resumes
    after = [row for row in commands(cluster) if row not in before]
    repeated = {(n, c) for _, n, c in after} & {(n, c) for _, n, c in before if n != "titan-s2"}
    assert not repeated, f"finished steps ran again: {repeated}"
    assert all(nodes.read_state(n.dir)["power"] == "off" for n in cluster.nodes)
    assert record.result is RunResult.success
    assert record.trigger["source"] == "manual"  # the original run, resumed


def test_two_triggers_at_once_make_one_run(cluster: Lab) -> None:
    path = cluster.dir / "hecate-test.yaml"
    lab_config(cluster)
    argv = [sys.executable, "-m", "hecate", "shutdown", "--execute", "--config", str(path)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 4], outputs  # 4: refused, nothing was done
    refused = next(out for p, out in zip(procs, outputs, strict=True) if p.returncode == 4)
    assert refused.count("another run is in progress") == 1  # printed once, prefixed
    assert "hecate: not started: another run is in progress" in refused
    stops = [row for row in commands(cluster) if "systemctl stop k3s-agent" in row[2]]
    assert len(stops) == 5  # each agent stopped exactly once
