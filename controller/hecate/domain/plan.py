"""Plans as data: the ordered stages and steps of a shutdown, built by pure functions.

A plan is printed as-is by a dry-run and applied by the one executor
(``hecate.services.executor``), which journals it, so a killed run resumes with exactly
the steps it started with. Purely computational: the builder takes the configuration
in force (hecate.yaml with the PowerPolicy laid over it) and returns values; each step
carries its action's typed parameters (``hecate.domain.params``).

Each step acts on one target (a node, a workload tier, a UPS, "flux", "local") so that
the journal records progress per node. Steps of a stage run in *waves*: every step of
wave 0, then wave 1, ...; steps within a wave run in parallel up to the stage's
parallelism. That expresses both "agents in parallel" and "servers one by one in
power-off order" without special cases.

Default shutdown plan (stages in order; * = optional)::

    set-fsd*          set FSD in upsd on the protecting UPSes with ``set_fsd`` (their upsmon secondaries go down)
    flux-suspend      suspend Flux Kustomizations/HelmReleases (record which were already)
    scale-down        scale the configured workload tiers to zero, tier by tier
    storage-quiesce*  wait for VolumeAttachments to go; run the host's hooks
    drain             cordon and drain agents (Eviction API, bounded by the drain timeout)
    stop-agents       systemctl stop k3s-agent on agents, in parallel
    stop-servers      systemctl stop k3s on servers (one by one in power-off order by default)
    killall           k3s-killall.sh on every node (stopping the unit leaves containers running)
    poweroff          agents, then servers, each in power-off order
    hosts-stop*       each ``hosts:`` machine's stop commands, in order (hosts in parallel)
    hosts-poweroff*   the ``hosts:`` machines, in waves by their power-off order
    ups-power-cycle*  ask upsd to cut and later restore the outputs (shutdown.return)
    local-poweroff    the coordinator powers itself off, last

On a peer (``role: peer``) the shutdown plan is only the host's own steps (:func:`peer_plan`):
``ups-power-cycle*`` of its own UPSes and ``local-poweroff`` -- the fallback when its trigger
could not be forwarded to the coordinator. A peer never plans anything of the cluster's.

Stages before ``scale-down`` are *not disruptive*: if mains returns before the first
disruptive stage starts, the run aborts cleanly (and undoes the Flux suspension).
``set-fsd`` is disruptive and first: FSD cannot be taken back over the NUT protocol (upsd
keeps it until it restarts), every upsmon secondary of the UPS starts its shutdown at once,
and Hecate's own monitor reads FSD as a shutdown decision -- an abort after it would leave
the cluster up on a UPS the rest of the rack is leaving. It runs first because the other
machines need their own time before the UPS runs out; its failure is recorded and the
shutdown goes on.

Default startup plan (stages in order; * = optional)::

    preflight         every UPS protecting the cluster on mains and charged (abort otherwise)
    hosts-wake*       ``hosts:`` machines with ``before_cluster``: woken, their sshd waited for (``wait_ssh``)
    wake*             Wake-on-LAN or the host's wake command, for nodes whose sshd does not answer
    start-servers     systemctl start k3s: the last server powered off first, then the others
    wait-api          the API server answers
    start-agents      systemctl start k3s-agent on agents, in parallel
    nodes-ready       each node Ready (one that does not come back degrades the run)
    uncordon          only the nodes Hecate cordoned
    foundation*       configured workloads available; stuck pods restarted, cache applied
    flux-resume       resume only what Hecate suspended, request reconciliation
    flux-bootstrap    the GitRepository Ready, else detect the Flux/Gitea deadlock and break it
    restore           workloads Hecate scaled down back to their recorded replicas, tiers reversed
    verify            nodes Ready, Flux Ready, foundation available
    hosts-wake-late*  the other ``hosts:`` machines, woken and waited for once the cluster is up

Every startup step first looks and changes only what is not as it should be, so on a
healthy cluster the startup changes nothing: ``hecate-bootstrap.service`` runs it at
every boot. Servers start together after the first (not one API-wait apart): embedded
etcd needs a quorum before any API answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from hecate.domain import params as params_mod
from hecate.domain.config import HecateConfig, Host, Node, NodeRole, Role, Wake
from hecate.domain.params import (
    DrainParams,
    FluxBootstrapParams,
    FluxResumeParams,
    HostCommandParams,
    HostStopParams,
    NodeCommandParams,
    NoParams,
    PoweroffParams,
    PreflightParams,
    ScaleParams,
    StartServiceParams,
    StepParams,
    StopServiceParams,
    VerifyParams,
    WaitParams,
    WakeParams,
    WorkloadParams,
)

P = TypeVar("P", bound=StepParams)


class Action(StrEnum):
    set_fsd = "set-fsd"
    flux_suspend = "flux-suspend"
    scale_down = "scale-down"
    wait_volumes = "wait-volumes"
    host_hook = "host-hook"
    drain = "drain"
    stop_service = "stop-service"
    host_stop = "host-stop"
    killall = "killall"
    poweroff = "poweroff"
    ups_power_cycle = "ups-power-cycle"
    local_poweroff = "local-poweroff"
    # startup
    preflight = "preflight"
    wake = "wake"
    start_service = "start-service"
    wait_api = "wait-api"
    wait_node = "wait-node"
    uncordon = "uncordon"
    wait_workload = "wait-workload"
    flux_resume = "flux-resume"
    flux_bootstrap = "flux-bootstrap"
    restore = "restore"
    verify = "verify"


class OnError(StrEnum):
    continue_ = "continue"  # record the failure, go on (the default: shutdown must reach power-off)
    abort = "abort"  # stop the run


NODE_COMMANDS = frozenset({Action.stop_service, Action.host_stop, Action.killall, Action.poweroff,
                           Action.start_service, Action.wake})
"""Actions that run a command on (or probe) a node or host over SSH."""

PARAMS: dict[Action, type[StepParams]] = {
    Action.set_fsd: NoParams, Action.flux_suspend: NoParams, Action.scale_down: ScaleParams,
    Action.wait_volumes: WaitParams,
    Action.host_hook: HostCommandParams, Action.drain: DrainParams, Action.stop_service: StopServiceParams,
    Action.host_stop: HostStopParams,
    Action.killall: NodeCommandParams, Action.poweroff: PoweroffParams, Action.ups_power_cycle: NoParams,
    Action.local_poweroff: HostCommandParams,
    Action.preflight: PreflightParams, Action.wake: WakeParams, Action.start_service: StartServiceParams,
    Action.wait_api: WaitParams, Action.wait_node: WaitParams, Action.uncordon: NoParams,
    Action.wait_workload: WorkloadParams, Action.flux_resume: FluxResumeParams,
    Action.flux_bootstrap: FluxBootstrapParams, Action.restore: ScaleParams, Action.verify: VerifyParams,
}
"""The parameters each action's steps carry (``hecate.domain.params``)."""


@dataclass(frozen=True)
class Step:
    action: Action
    target: str
    timeout_s: float
    retries: int = 0
    on_error: OnError = OnError.continue_
    wave: int = 0
    params: StepParams = field(default_factory=NoParams)

    def key(self, stage: str) -> str:
        """Stable identity of the step within a plan (journal key)."""
        return f"{stage}/{self.action.value}/{self.target}"

    def params_as(self, kind: type[P]) -> P:
        """The step's parameters, which the plan builds as ``kind`` for this action."""
        if not isinstance(self.params, kind):
            raise TypeError(f"{self.action.value} {self.target}: parameters are {type(self.params).__name__}, "
                            f"not {kind.__name__}")
        return self.params


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

    @property
    def node_parallelism(self) -> int:
        """The most node commands one stage runs at once: how many SSH connections the run works at once.

        The stages' parallelism is the one source (the builders set it from ``shutdown.parallelism``
        or ``startup.parallelism``); the run's connections are sized from it.
        """
        return max((s.parallelism for s in self.stages if any(st.action in NODE_COMMANDS for st in s.steps)),
                   default=1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stages": [
            {"name": s.name, "parallelism": s.parallelism, "deadline_s": s.deadline_s, "disruptive": s.disruptive,
             "steps": [{"action": st.action.value, "target": st.target, "timeout_s": st.timeout_s,
                        "retries": st.retries, "on_error": st.on_error.value, "wave": st.wave,
                        "params": params_mod.to_dict(st.params)} for st in s.steps]}
            for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(kind=data["kind"], stages=tuple(
            Stage(name=s["name"], parallelism=s["parallelism"], deadline_s=s["deadline_s"],
                  disruptive=s["disruptive"], steps=tuple(
                      Step(action=Action(st["action"]), target=st["target"], timeout_s=st["timeout_s"],
                           retries=st["retries"], on_error=OnError(st["on_error"]), wave=st["wave"],
                           params=params_mod.from_dict(PARAMS[Action(st["action"])], st["params"]))
                      for st in s["steps"]))
            for s in data["stages"]))


SET_FSD_TIMEOUT_S = 6.0
"""One attempt at setting FSD: connect and four exchanges with upsd (2 s each at most); a hung upsd must not hold
the cluster's shutdown back for long (one retry, for a connection that failed)."""


def _ordered(nodes: Iterable[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: (n.poweroff_order, n.name))


def _waves_by_order(nodes: list[Node] | list[Host], start: int = 0) -> dict[str, int]:
    """Same power-off order -> same wave; lower order first."""
    orders = sorted({n.poweroff_order for n in nodes})
    return {n.name: start + orders.index(n.poweroff_order) for n in nodes}


def shutdown_plan(config: HecateConfig) -> Plan:
    if config.role is Role.peer:
        return peer_plan(config)
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
    stage_deadline = sd.stage_timeout_s
    stages: list[Stage] = []

    stages.extend(_set_fsd(config))
    if sd.flux_suspend:
        stages.append(Stage("flux-suspend", (Step(Action.flux_suspend, "flux", timeout_s=4 * api_timeout),),
                            parallelism=1, deadline_s=stage_deadline, disruptive=False))
    if sd.scale_down:
        stages.append(Stage("scale-down", tuple(
            Step(Action.scale_down, tier.name, timeout_s=4 * api_timeout, wave=i,
                 params=ScaleParams(tier.selector, tier.namespace))
            for i, tier in enumerate(sd.scale_down)), parallelism=1, deadline_s=stage_deadline))
    if sd.storage_quiesce.enabled:
        quiesce = [Step(Action.wait_volumes, "volume-attachments", timeout_s=sd.storage_quiesce.timeout_s + api_timeout,
                        params=WaitParams(sd.storage_quiesce.timeout_s))]
        quiesce += [Step(Action.host_hook, f"hook-{i + 1}", timeout_s=command_timeout, wave=1 + i,
                         params=HostCommandParams(tuple(argv))) for i, argv in enumerate(sd.storage_quiesce.hooks)]
        stages.append(Stage("storage-quiesce", tuple(quiesce), parallelism=1,
                            deadline_s=sd.storage_quiesce.timeout_s + stage_deadline))
    if agents:
        stages.append(Stage("drain", tuple(
            Step(Action.drain, n.name, timeout_s=sd.drain_timeout_s + 2 * api_timeout,
                 params=DrainParams(sd.drain_timeout_s)) for n in agents),
            parallelism=width, deadline_s=sd.drain_timeout_s + stage_deadline))
        stages.append(Stage("stop-agents", tuple(
            Step(Action.stop_service, n.name, timeout_s=node_timeout, retries=2,
                 params=StopServiceParams("k3s-agent", command_timeout)) for n in agents),
            parallelism=width, deadline_s=stage_deadline))
    if servers:
        # One at a time in power-off order (even when orders tie: embedded etcd), or all at once.
        server_waves = {n.name: i if sd.stop_servers_one_by_one else 0 for i, n in enumerate(servers)}
        stages.append(Stage("stop-servers", tuple(
            Step(Action.stop_service, n.name, timeout_s=node_timeout, retries=2, wave=server_waves[n.name],
                 params=StopServiceParams("k3s", command_timeout)) for n in servers),
            parallelism=width, deadline_s=stage_deadline))
    if every:
        stages.append(Stage("killall", tuple(
            Step(Action.killall, n.name, timeout_s=node_timeout, retries=1,
                 params=NodeCommandParams(command_timeout)) for n in every),
            parallelism=width, deadline_s=stage_deadline))
        agent_waves = _waves_by_order(agents)
        server_wave_map = _waves_by_order(servers, start=len(set(agent_waves.values())))
        stages.append(Stage("poweroff", tuple(
            Step(Action.poweroff, n.name, timeout_s=node_timeout, retries=2,
                 wave={**agent_waves, **server_wave_map}[n.name],
                 params=PoweroffParams(sd.remote_poweroff_command, command_timeout)) for n in every),
            parallelism=width, deadline_s=stage_deadline))
    stages += _host_stages(config, node_timeout)
    if sd.ups_power_cycle:
        stages.append(Stage("ups-power-cycle", tuple(
            Step(Action.ups_power_cycle, u.name, timeout_s=10.0, retries=2) for u in config.ups if u.protects_cluster),
            parallelism=width, deadline_s=stage_deadline))
    stages.append(Stage("local-poweroff", (
        Step(Action.local_poweroff, "local", timeout_s=command_timeout,
             params=HostCommandParams(tuple(sd.local_poweroff_command))),), parallelism=1,
        deadline_s=stage_deadline))
    return Plan("shutdown", tuple(s for s in stages if s.steps))


def _host_stages(config: HecateConfig, node_timeout: float) -> list[Stage]:
    """``hosts-stop`` and ``hosts-poweroff``: after the nodes, before the coordinator; every failure ``continue``.

    A host's stop commands are one step (they run in order, each bounded by the command timeout);
    the hosts' power-offs go in waves by ``poweroff_order``, as the nodes' do.
    """
    sd, ssh = config.shutdown, config.ssh
    hosts = sorted(config.hosts, key=lambda h: (h.poweroff_order, h.name))
    command_timeout = ssh.command_timeout_s
    stop = tuple(
        Step(Action.host_stop, h.name, timeout_s=len(h.stop_commands) * command_timeout + 3 * ssh.connect_timeout_s + 1,
             retries=1, params=HostStopParams(tuple(tuple(a) for a in h.stop_commands), command_timeout))
        for h in hosts if h.stop_commands)
    off = [h for h in hosts if h.poweroff]
    waves = _waves_by_order(off)
    poweroff = tuple(
        Step(Action.poweroff, h.name, timeout_s=node_timeout, retries=2, wave=waves[h.name],
             params=PoweroffParams(sd.remote_poweroff_command, command_timeout)) for h in off)
    return [Stage("hosts-stop", stop, parallelism=sd.parallelism,
                  deadline_s=max((s.timeout_s for s in stop), default=0) + sd.stage_timeout_s),
            Stage("hosts-poweroff", poweroff, parallelism=sd.parallelism, deadline_s=sd.stage_timeout_s)]


def _host_wake(config: HecateConfig, hosts: list[Host], name: str) -> Stage:
    """Wake ``hosts`` whose sshd does not answer; wait for those with ``wait_ssh`` (nothing else runs on them)."""
    st, ssh = config.startup, config.ssh
    wake_timeout = ssh.connect_timeout_s + ssh.command_timeout_s + 1
    steps = tuple(
        Step(Action.wake, h.name, timeout_s=wake_timeout + (st.boot_timeout_s if h.wait_ssh else 0),
             params=WakeParams(h.wake, h.wake_mac, tuple(a.replace("{host}", h.name) for a in h.wake_command),
                               wait_s=st.boot_timeout_s if h.wait_ssh else 0.0))
        for h in hosts if h.wake is not Wake.none or h.wait_ssh)
    return Stage(name, steps, parallelism=st.parallelism,
                 deadline_s=max((s.timeout_s for s in steps), default=0) + 30.0)

def _ups_power_cycle(config: HecateConfig) -> Stage:
    return Stage("ups-power-cycle", tuple(
        Step(Action.ups_power_cycle, u.name, timeout_s=10.0, retries=2) for u in config.ups if u.protects_cluster),
        parallelism=config.shutdown.parallelism, deadline_s=config.shutdown.stage_timeout_s)


def _local_poweroff(config: HecateConfig) -> Stage:
    return Stage("local-poweroff", (
        Step(Action.local_poweroff, "local", timeout_s=config.ssh.command_timeout_s,
             params=HostCommandParams(tuple(config.shutdown.local_poweroff_command))),), parallelism=1,
        deadline_s=config.shutdown.stage_timeout_s)


def peer_plan(config: HecateConfig) -> Plan:
    """A peer's own shutdown, its fallback when forwarding failed: only this host's steps, no cluster.

    ``set-fsd`` on its own protecting UPSes with ``set_fsd``, ``ups-power-cycle`` of them (with
    ``shutdown.ups_power_cycle``), then ``local-poweroff`` with ``shutdown.local_poweroff_command``.
    """
    stages = _set_fsd(config)
    if config.shutdown.ups_power_cycle:
        stages.append(_ups_power_cycle(config))
    stages.append(_local_poweroff(config))
    return Plan("shutdown", tuple(s for s in stages if s.steps))


def _set_fsd(config: HecateConfig) -> list[Stage]:
    """``set-fsd`` on the protecting UPSes with ``set_fsd`` (none: no stage), first in a coordinator's or a
    peer's own shutdown: the other machines on those UPSes need their time."""
    fsd = [u for u in config.ups if u.protects_cluster and u.set_fsd]
    if not fsd:
        return []
    return [Stage("set-fsd", tuple(Step(Action.set_fsd, u.name, timeout_s=SET_FSD_TIMEOUT_S, retries=1) for u in fsd),
                  parallelism=len(fsd), deadline_s=2 * SET_FSD_TIMEOUT_S + 2)]


def first_disruptive(plan: Plan) -> int:
    """Index of the first stage that changes what the cluster serves (len(stages) if none)."""
    return next((i for i, s in enumerate(plan.stages) if s.disruptive), len(plan.stages))


def _reverse_ordered(nodes: Iterable[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: (-n.poweroff_order, n.name))


def startup_plan(config: HecateConfig, *, force_branch: str | None = None) -> Plan:
    st, ssh, flux = config.startup, config.ssh, config.flux
    api_timeout = config.cluster.api_timeout_s
    servers = _reverse_ordered(n for n in config.cluster.nodes if n.role is NodeRole.server)
    agents = _reverse_ordered(n for n in config.cluster.nodes if n.role is NodeRole.agent)
    every = servers + agents
    width = st.parallelism
    pad = 30.0  # a stage's deadline over its longest step: scheduling, journaling
    node_timeout = ssh.command_timeout_s + 3 * ssh.connect_timeout_s + 1
    start_timeout = st.boot_timeout_s + 2 * node_timeout
    stages: list[Stage] = []

    protecting = [u for u in config.ups if u.protects_cluster]
    if protecting:
        stages.append(Stage("preflight", tuple(
            Step(Action.preflight, u.name, timeout_s=st.preflight_timeout_s + 10, on_error=OnError.abort,
                 params=PreflightParams(st.min_charge_percent, st.preflight_timeout_s))
            for u in protecting), parallelism=len(protecting), deadline_s=st.preflight_timeout_s + pad))
    stages.append(_host_wake(config, [h for h in config.hosts if h.before_cluster], "hosts-wake"))
    if st.wake is not Wake.none and every:
        stages.append(Stage("wake", tuple(
            Step(Action.wake, n.name, timeout_s=ssh.connect_timeout_s + ssh.command_timeout_s + 1,
                 params=WakeParams(st.wake, n.wake_mac, tuple(a.replace("{node}", n.name) for a in st.wake_command)))
            for n in every),
            parallelism=width, deadline_s=ssh.connect_timeout_s + ssh.command_timeout_s + pad))
    if servers:
        stages.append(Stage("start-servers", tuple(
            Step(Action.start_service, n.name, timeout_s=start_timeout, wave=0 if i == 0 else 1,
                 params=StartServiceParams("k3s", st.boot_timeout_s, ssh.command_timeout_s))
            for i, n in enumerate(servers)), parallelism=width, deadline_s=start_timeout + pad))
    stages.append(Stage("wait-api", (
        Step(Action.wait_api, "api", timeout_s=st.api_timeout_s + api_timeout,
             params=WaitParams(st.api_timeout_s)),), parallelism=1, deadline_s=st.api_timeout_s + pad))
    if agents:
        stages.append(Stage("start-agents", tuple(
            Step(Action.start_service, n.name, timeout_s=start_timeout,
                 params=StartServiceParams("k3s-agent", st.boot_timeout_s, ssh.command_timeout_s))
            for n in agents), parallelism=width, deadline_s=start_timeout + pad))
    if every:
        stages.append(Stage("nodes-ready", tuple(
            Step(Action.wait_node, n.name, timeout_s=st.node_ready_timeout_s + api_timeout,
                 params=WaitParams(st.node_ready_timeout_s)) for n in every),
            parallelism=max(1, len(every)), deadline_s=st.node_ready_timeout_s + pad))
    stages.append(Stage("uncordon", (Step(Action.uncordon, "nodes", timeout_s=4 * api_timeout),),
                        parallelism=1, deadline_s=4 * api_timeout + pad))
    if st.foundation:
        stages.append(Stage("foundation", tuple(
            Step(Action.wait_workload, ref, timeout_s=st.foundation_timeout_s + api_timeout,
                 params=WorkloadParams(st.foundation_timeout_s, st.recovery_after_s, str(flux.fallback_manifests_dir)))
            for ref in st.foundation), parallelism=max(1, len(st.foundation)),
            deadline_s=st.foundation_timeout_s + pad))
    stages.append(Stage("flux-resume", (
        Step(Action.flux_resume, "flux", timeout_s=4 * api_timeout, params=FluxResumeParams(force_branch)),),
        parallelism=1, deadline_s=4 * api_timeout + pad))
    # Detection, then up to ready_timeout before and again after breaking the deadlock.
    bootstrap_timeout = flux.detection_window_s + 2 * flux.ready_timeout_s
    stages.append(Stage("flux-bootstrap", (
        Step(Action.flux_bootstrap, f"{flux.namespace}/{flux.git_repository}",
             timeout_s=bootstrap_timeout + api_timeout,
             params=FluxBootstrapParams(
                 fallback=flux.bootstrap_fallback, detection_window_s=flux.detection_window_s,
                 ready_timeout_s=flux.ready_timeout_s, gitea_workload=flux.gitea_workload,
                 branch=force_branch or flux.fallback_branch, manifests_dir=str(flux.fallback_manifests_dir))),),
        parallelism=1, deadline_s=bootstrap_timeout + pad))
    tiers = list(reversed(config.shutdown.scale_down))
    restore = [Step(Action.restore, t.name, timeout_s=4 * api_timeout, wave=i,
                    params=ScaleParams(t.selector, t.namespace)) for i, t in enumerate(tiers)]
    # Anything else Hecate scaled down (a tier since removed from the config): recorded on the object.
    restore.append(Step(Action.restore, "others", timeout_s=4 * api_timeout, wave=len(tiers),
                        params=ScaleParams("", None)))
    stages.append(Stage("restore", tuple(restore), parallelism=1, deadline_s=4 * api_timeout * len(restore) + pad))
    stages.append(Stage("verify", (
        Step(Action.verify, "cluster", timeout_s=st.verify_timeout_s + api_timeout,
             params=VerifyParams(st.verify_timeout_s, tuple(n.name for n in every), tuple(st.foundation),
                                 f"{flux.namespace}/{flux.git_repository}")),),
        parallelism=1, deadline_s=st.verify_timeout_s + pad))
    stages.append(_host_wake(config, [h for h in config.hosts if not h.before_cluster], "hosts-wake-late"))
    return Plan("startup", tuple(s for s in stages if s.steps))
