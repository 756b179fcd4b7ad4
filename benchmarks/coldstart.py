"""Cold start of a 10-node lab cluster in the Flux/Gitea deadlock: Hecate's startup vs naive.

The lab: 1 UPS, 3 k3s servers + 7 agents (network namespaces when root), seeded with the
homelab workloads and Flux objects, the simulator imposing readiness delays
(:data:`DELAYS`: the API ``api`` s after a quorum of servers runs k3s, a Node ``node`` s
after its k3s starts, a pod ``pod`` s after its node and dependencies are ready). Hecate
shuts it down for real (Flux suspended, tiers scaled to zero, agents drained, nodes
powered off); the simulator's cold-start rule loses ``gitea/gitea-valkey``, which Gitea
needs and which a Flux HelmRelease installs from Gitea.

* **Hecate**: "mains back" is t = 0: every node boots (in parallel, k3s disabled at boot)
  and ``hecate.services.startup.run`` runs with the lab's configuration. ``flux_ready_s``
  is when the ``flux-bootstrap`` stage ended (GitRepository and Kustomizations Ready),
  ``total_s`` when the run ended (after restore and verify).
* **Unavoidable waits** on the critical path, from the delays the simulator imposes and
  the configured detection window: ``wait-api`` = api; ``nodes-ready`` = node (agents can
  only start after the API); ``flux-bootstrap`` = detection window + pod (valkey, created
  from the cache) + pod (Gitea, which needs valkey). The foundation's pod delay (CoreDNS)
  is not counted: it runs while the agents come up (its pod lands on a server that is
  Ready first), and ``stage_ended_s`` shows it costs nothing on the path.
  ``overhead_s = flux_ready_s - sum`` -- everything Hecate adds: SSH round trips, polling
  (every 0.5 s), API calls, the second wave of servers (the API needs a quorum of two).
  Target (issue #5): overhead <= 5 s.
* **Naive baseline**: the same lab, shut down by Hecate again; then every node boots with
  k3s enabled (all at once) and the Flux objects are resumed by hand, as a person would
  (``flux resume``); we wait up to :data:`NAIVE_WAIT_S` for the GitRepository to be Ready.

**Machine mode** (``COLDSTART_NODES=machines``, root): the nodes are booted systemd machines
(``LabSpec(machines=True)``): Hecate starts the real k3s units over SSH as the lab's ``hecate``
user with ``sudo -n``. "Mains back" boots every machine at once (k3s disabled at boot) and each
boot's time to ``systemctl is-system-running`` = ``running`` is reported
(``machine_boot_to_running_s``), with each machine's memory after ``lab up`` (``machine_rss_mib``,
``machines.memory_bytes``). The baseline is a **sequential ssh loop** (variant ``sequential``):
the machines boot the same way, then ``ssh hecate@node sudo -n systemctl start --no-block
k3s|k3s-agent`` node after node (servers first; ``--no-block`` is the start the production
sudoers line allows), then ``flux resume`` as above (``loop_s``: the loop's own time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import spread
from hecate.adapters import ssh
from hecate.adapters.kube import Kube, KubeError
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunRecord, StageRecord
from hecate.services import bootstrap_cache, shutdown, startup
from hecate.services.executor import StepOutcome
from hecate_lab import machines, nodes, nodestate
from hecate_lab.cluster_seed import seed_workloads
from hecate_lab.cluster_sim import Delays
from hecate_lab.testbed import Lab, LabSpec

SERVERS, AGENTS = 3, 7
DELAYS = Delays(api=3.0, node=2.0, pod=2.0)
DETECTION_WINDOW_S = 5.0
NAIVE_WAIT_S = 60.0
TARGET_OVERHEAD_S = 5.0
NODE_KIND = os.environ.get("COLDSTART_NODES", "light")
"""``light`` (the lab's emulated sshd nodes) or ``machines`` (booted systemd machines)."""
MACHINES = NODE_KIND == "machines"
SSH_TIMEOUT_S = 30


def progress(message: str) -> None:
    print(f"coldstart: {message}", file=sys.stderr, flush=True)


class _Clock:
    """The executor's progress: when each stage ended, relative to ``t0``."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ended: dict[str, float] = {}

    def stage_started(self, stage: Any, index: int, total: int) -> None: ...

    def step_finished(self, outcome: StepOutcome) -> None: ...

    def stage_finished(self, record: StageRecord) -> None:
        self.ended[record.name] = time.monotonic() - self.t0
        progress(f"  {record.name}: {record.result.value} at {self.ended[record.name]:.2f} s ({record.detail})")

    def run_finished(self, record: RunRecord) -> None: ...


def _config(lab: Lab) -> HecateConfig:
    data = lab.hecate_config()
    data["shutdown"] = {**data["shutdown"], "drain_timeout_s": 1, "parallelism": SERVERS + AGENTS}
    data["flux"] = {**data.get("flux", {}), "detection_window_s": DETECTION_WINDOW_S}
    return HecateConfig.model_validate(data)


def _boot(lab: Lab, *, k3s_at_boot: bool, boots: list[float] | None = None) -> float:
    """Power every node on at once; a machine's seconds to ``running`` go to ``boots``."""
    started = time.monotonic()
    if MACHINES:
        try:
            with ThreadPoolExecutor(len(lab.nodes)) as pool:
                seconds = list(pool.map(lambda n: _boot_machine(n, k3s_at_boot), lab.nodes))
        finally:
            lab.save()  # whatever booted: lab.down() finds it by its cgroup either way
        if boots is not None:
            boots.extend(s for s in seconds if s is not None)
        return time.monotonic() - started
    with ThreadPoolExecutor(len(lab.nodes)) as pool:
        lab.nodes = list(pool.map(lambda n: nodes.power_on(n, k3s_at_boot=k3s_at_boot), lab.nodes))
    lab.save()
    return time.monotonic() - started


def _wait_ended(lab: Lab) -> None:
    """Machines: wait until every one Hecate's shutdown powered off has really ended (before t = 0)."""
    deadline = time.monotonic() + machines.BOOT_TIMEOUT_S
    while (running := [n.name for n in lab.nodes if n.machine and machines.pid1(n) is not None]):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"machines still running after the shutdown: {running}")
        time.sleep(0.1)


def _boot_machine(node: nodes.LabNode, k3s_at_boot: bool) -> float | None:
    """Boot a powered-off machine (k3s started only if ``k3s_at_boot``); its seconds to ``running``."""
    if machines.pid1(node) is not None:
        return None
    machines.stop_machines([node])  # what the previous boot left (idempotent)
    machines.boot(node)  # sets node.pid: the same object lab.nodes holds
    seconds = machines.wait_running(node)  # sshd is up once the machine is running
    if k3s_at_boot:
        machines.start_k3s(node)
    return seconds


def _ssh_loop(config: HecateConfig, lab: Lab) -> float:
    """A person's loop: start k3s node after node (servers first) over ssh, as the lab's user."""
    prefix = ssh.SUDO_PREFIX if config.ssh.sudo else ""
    started = time.monotonic()
    for node in sorted(lab.nodes, key=lambda n: n.role != "server"):
        argv = ["ssh", "-F", "/dev/null", "-i", str(config.ssh.key_file),
                "-o", f"UserKnownHostsFile={config.ssh.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-p", str(node.port), f"{config.ssh.user}@{node.address}",
                f"{prefix}systemctl start --no-block {nodestate.service_for(node.role)}"]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=SSH_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ssh loop: {node.name}: exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return time.monotonic() - started


async def _healthy(kube: Kube, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KubeError):  # the API is coming up
            if (await kube.git_repository("flux-system", "flux-system"))["ready"]:
                return True
        await asyncio.sleep(0.25)
    return False


def _one(directory: Path) -> Iterator[dict[str, Any]]:
    lab = Lab.up(directory / "lab", LabSpec(servers=SERVERS, agents=AGENTS, delays=DELAYS, machines=MACHINES))
    kube = Kube(lab.kubeconfig, 2.0, cooldown=0.2)
    boots: list[float] = []
    machine_fields: dict[str, Any] = {}
    try:
        rss = [b for n in lab.nodes if MACHINES and (b := machines.memory_bytes(n)) is not None]
        config = _config(lab)
        seed_workloads(lab.kubeconfig)
        assert asyncio.run(_healthy(kube)), "the seeded lab did not become healthy"
        assert asyncio.run(bootstrap_cache.refresh(config, kube))["written"]
        progress("shutting the lab down (Hecate)")
        asyncio.run(shutdown.run(config, {"source": "benchmark"}, _Clock(time.monotonic())))

        progress("mains back: booting the nodes, Hecate's startup")
        _wait_ended(lab)
        t0 = time.monotonic()
        boot_s = _boot(lab, k3s_at_boot=False, boots=boots)
        clock = _Clock(t0)
        record = asyncio.run(startup.run(config, {"source": "benchmark"}, clock))
        total_s = time.monotonic() - t0
        waits = {"wait-api": DELAYS.api, "nodes-ready": DELAYS.node,
                 "flux-bootstrap": DETECTION_WINDOW_S + 2 * DELAYS.pod}
        flux_ready_s = clock.ended.get("flux-bootstrap", float("nan"))
        overhead = flux_ready_s - sum(waits.values())
        if MACHINES:
            machine_fields = {"machine_boot_to_running_s": spread(boots, 1.0), "machine_boots": len(boots),
                              "machine_rss_mib": spread(rss, 1 / 2**20)}
        yield {"variant": "hecate", "node_kind": NODE_KIND, "nodes": SERVERS + AGENTS, "delays": DELAYS.to_dict(),
               "detection_window_s": DETECTION_WINDOW_S, "result": record.result.value if record.result else None,
               "deadlock_broken": bool(record.changes.get("deadlock")) and bool(record.changes.get("created")),
               "boot_s": round(boot_s, 3), "flux_ready_s": round(flux_ready_s, 3), "total_s": round(total_s, 3),
               "stage_ended_s": {k: round(v, 3) for k, v in clock.ended.items()},
               "unavoidable_waits_s": waits, "unavoidable_sum_s": sum(waits.values()),
               "overhead_s": round(overhead, 3), "target_overhead_s": TARGET_OVERHEAD_S,
               "target_met": overhead <= TARGET_OVERHEAD_S, **machine_fields}

        progress("shutting the lab down again (Hecate), then the naive start")
        asyncio.run(shutdown.run(config, {"source": "benchmark"}, _Clock(time.monotonic())))
        _wait_ended(lab)
        t0 = time.monotonic()
        loop_s = None
        if MACHINES:  # the loop starts k3s after the boot, node after node
            _boot(lab, k3s_at_boot=False)
            loop_s = _ssh_loop(config, lab)
        else:
            _boot(lab, k3s_at_boot=True)

        async def naive() -> bool:
            deadline = time.monotonic() + NAIVE_WAIT_S
            while time.monotonic() < deadline:  # `flux resume` as soon as the API answers
                try:
                    status = await kube.flux_status()
                    await kube.flux_resume([r for r, s in status.items() if s["ours"]], reconcile=True)
                    break
                except KubeError:  # the API is coming up
                    await asyncio.sleep(0.5)
            return await _healthy(kube, timeout=max(0.0, deadline - time.monotonic()))

        converged = asyncio.run(naive())
        yield {"variant": "sequential" if MACHINES else "naive", "node_kind": NODE_KIND, "nodes": SERVERS + AGENTS,
               "converged": converged, "waited_s": round(time.monotonic() - t0, 3),
               **({"loop_s": round(loop_s, 3)} if loop_s is not None else {}),
               "result": "Flux Ready" if converged else f"did not converge within {NAIVE_WAIT_S:g} s"}
    finally:
        kube.close()
        lab.down()


def run() -> Iterator[dict[str, Any]]:
    if NODE_KIND not in ("light", "machines"):
        raise ValueError(f"COLDSTART_NODES={NODE_KIND!r}: known are light, machines")
    if MACHINES and (why := machines.unavailable()):
        raise RuntimeError(f"COLDSTART_NODES=machines: {why}")
    with tempfile.TemporaryDirectory(prefix="hecate-bench-coldstart-") as tmp:
        yield from _one(Path(tmp))
