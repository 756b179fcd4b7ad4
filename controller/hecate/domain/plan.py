"""Plans as data: the ordered stages and steps of a shutdown, built by pure functions.

A plan is printed as-is by a dry-run and applied by the one executor
(``hecate.services.executor``), which journals it, so a killed run resumes with exactly
the steps it started with. Purely computational: the builder takes the configuration
(and later the effective policy) and returns values.

Each step acts on one target (a node, a workload tier, a UPS, "flux", "local") so that
the journal records progress per node. Steps of a stage run in *waves*: every step of
wave 0, then wave 1, ...; steps within a wave run in parallel up to the stage's
parallelism. That expresses both "agents in parallel" and "servers one by one in
power-off order" without special cases.

Default shutdown plan (stages in order; * = optional)::

    flux-suspend      suspend Flux Kustomizations/HelmReleases (record which were already)
    scale-down        scale the configured workload tiers to zero, tier by tier
    storage-quiesce*  wait for VolumeAttachments to go; run the host's hooks
    drain             cordon and drain agents (Eviction API, bounded by the drain timeout)
    stop-agents       systemctl stop k3s-agent on agents, in parallel
    stop-servers      systemctl stop k3s on servers (one by one in power-off order by default)
    killall           k3s-killall.sh on every node (stopping the unit leaves containers running)
    poweroff          agents, then servers, each in power-off order
    ups-power-cycle*  ask upsd to cut and later restore the outputs (shutdown.return)
    local-poweroff    the coordinator powers itself off, last

Stages before ``scale-down`` are *not disruptive*: if mains returns before the first
disruptive stage starts, the run aborts cleanly (and undoes the Flux suspension).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hecate.domain.config import HecateConfig, Node, NodeRole


class Action(StrEnum):
    flux_suspend = "flux-suspend"
    scale_down = "scale-down"
    wait_volumes = "wait-volumes"
    host_hook = "host-hook"
    drain = "drain"
    stop_service = "stop-service"
    killall = "killall"
    poweroff = "poweroff"
    ups_power_cycle = "ups-power-cycle"
    local_poweroff = "local-poweroff"


class OnError(StrEnum):
    proceed = "continue"  # record the failure, go on (the default: shutdown must reach power-off)
    abort = "abort"  # stop the run


@dataclass(frozen=True)
class Step:
    action: Action
    target: str
    timeout_s: float
    retries: int = 0
    on_error: OnError = OnError.proceed
    wave: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def key(self, stage: str) -> str:
        """Stable identity of the step within a plan (journal key)."""
        return f"{stage}/{self.action.value}/{self.target}"


@dataclass(frozen=True)
class Stage:
    name: str
    steps: tuple[Step, ...]
    parallelism: int
    deadline_s: float
    disruptive: bool = True

    def waves(self) -> list[list[Step]]:
        ordered: dict[int, list[Step]] = {}
        for step in self.steps:
            ordered.setdefault(step.wave, []).append(step)
        return [ordered[w] for w in sorted(ordered)]


@dataclass(frozen=True)
class Plan:
    kind: str
    stages: tuple[Stage, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stages": [
            {"name": s.name, "parallelism": s.parallelism, "deadline_s": s.deadline_s, "disruptive": s.disruptive,
             "steps": [{"action": st.action.value, "target": st.target, "timeout_s": st.timeout_s,
                        "retries": st.retries, "on_error": st.on_error.value, "wave": st.wave,
                        "params": st.params} for st in s.steps]}
            for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(kind=data["kind"], stages=tuple(
            Stage(name=s["name"], parallelism=s["parallelism"], deadline_s=s["deadline_s"],
                  disruptive=s["disruptive"], steps=tuple(
                      Step(action=Action(st["action"]), target=st["target"], timeout_s=st["timeout_s"],
                           retries=st["retries"], on_error=OnError(st["on_error"]), wave=st["wave"],
                           params=st["params"]) for st in s["steps"]))
            for s in data["stages"]))


def _ordered(nodes: Iterable[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: (n.poweroff_order, n.name))


def _waves_by_order(nodes: list[Node], start: int = 0) -> dict[str, int]:
    """Same power-off order -> same wave; lower order first."""
    orders = sorted({n.poweroff_order for n in nodes})
    return {n.name: start + orders.index(n.poweroff_order) for n in nodes}


def shutdown_plan(config: HecateConfig) -> Plan:
    sd, ssh = config.shutdown, config.ssh
    api_timeout = config.cluster.api_timeout_s
    agents = _ordered(n for n in config.cluster.nodes if n.role is NodeRole.agent)
    servers = _ordered(n for n in config.cluster.nodes if n.role is NodeRole.server)
    every = agents + servers
    width = sd.parallelism
    command_timeout = ssh.command_timeout_s
    # An SSH step may first connect (TCP, banner, auth: each bounded by the connect timeout),
    # then run its command (bounded by the command timeout): the step's own bound covers both.
    node_timeout = command_timeout + 3 * ssh.connect_timeout_s + 1
    remote = {"command_timeout_s": command_timeout}
    stage_deadline = sd.stage_timeout_s
    stages: list[Stage] = []

    if sd.flux_suspend:
        stages.append(Stage("flux-suspend", (Step(Action.flux_suspend, "flux", timeout_s=4 * api_timeout),),
                            parallelism=1, deadline_s=stage_deadline, disruptive=False))
    if sd.scale_down:
        stages.append(Stage("scale-down", tuple(
            Step(Action.scale_down, tier.name, timeout_s=4 * api_timeout, wave=i,
                 params={"selector": tier.selector, "namespace": tier.namespace})
            for i, tier in enumerate(sd.scale_down)), parallelism=1, deadline_s=stage_deadline))
    if sd.storage_quiesce.enabled:
        quiesce = [Step(Action.wait_volumes, "volume-attachments", timeout_s=sd.storage_quiesce.timeout_s + api_timeout,
                        params={"timeout_s": sd.storage_quiesce.timeout_s})]
        quiesce += [Step(Action.host_hook, f"hook-{i + 1}", timeout_s=command_timeout, wave=1 + i,
                         params={"argv": list(argv)}) for i, argv in enumerate(sd.storage_quiesce.hooks)]
        stages.append(Stage("storage-quiesce", tuple(quiesce), parallelism=1,
                            deadline_s=sd.storage_quiesce.timeout_s + stage_deadline))
    if agents:
        stages.append(Stage("drain", tuple(
            Step(Action.drain, n.name, timeout_s=sd.drain_timeout_s + 2 * api_timeout,
                 params={"drain_timeout_s": sd.drain_timeout_s}) for n in agents),
            parallelism=width, deadline_s=sd.drain_timeout_s + stage_deadline))
        stages.append(Stage("stop-agents", tuple(
            Step(Action.stop_service, n.name, timeout_s=node_timeout, retries=2,
                 params={"unit": "k3s-agent", **remote}) for n in agents),
            parallelism=width, deadline_s=stage_deadline))
    if servers:
        # One at a time in power-off order (even when orders tie: embedded etcd), or all at once.
        server_waves = {n.name: i if sd.stop_servers_one_by_one else 0 for i, n in enumerate(servers)}
        stages.append(Stage("stop-servers", tuple(
            Step(Action.stop_service, n.name, timeout_s=node_timeout, retries=2, wave=server_waves[n.name],
                 params={"unit": "k3s", **remote}) for n in servers),
            parallelism=width, deadline_s=stage_deadline))
    if every:
        stages.append(Stage("killall", tuple(
            Step(Action.killall, n.name, timeout_s=node_timeout, retries=1, params=remote) for n in every),
            parallelism=width, deadline_s=stage_deadline))
        agent_waves = _waves_by_order(agents)
        server_wave_map = _waves_by_order(servers, start=len(set(agent_waves.values())))
        stages.append(Stage("poweroff", tuple(
            Step(Action.poweroff, n.name, timeout_s=node_timeout, retries=2,
                 wave={**agent_waves, **server_wave_map}[n.name],
                 params={"command": sd.remote_poweroff_command, **remote}) for n in every),
            parallelism=width, deadline_s=stage_deadline))
    if sd.ups_power_cycle:
        stages.append(Stage("ups-power-cycle", tuple(
            Step(Action.ups_power_cycle, u.name, timeout_s=10.0, retries=2) for u in config.ups if u.protects_cluster),
            parallelism=width, deadline_s=stage_deadline))
    stages.append(Stage("local-poweroff", (
        Step(Action.local_poweroff, "local", timeout_s=command_timeout,
             params={"argv": list(sd.local_poweroff_command)}),), parallelism=1, deadline_s=stage_deadline))
    return Plan("shutdown", tuple(s for s in stages if s.steps))


def first_disruptive(plan: Plan) -> int:
    """Index of the first stage that changes what the cluster serves (len(stages) if none)."""
    return next((i for i, s in enumerate(plan.stages) if s.disruptive), len(plan.stages))
