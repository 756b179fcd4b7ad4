"""The cluster simulator's loop: it applies :mod:`hecate_lab.cluster_sim`'s rules to the emulator.

Every ``POLL_INTERVAL`` (and at once after a client's write) it reads each node's
``state.json`` and the objects in the emulator's store, and writes back only what changed,
through the store, as a client's write would: Nodes, the API gate, a cold start, workloads,
Flux. The contract, rule by rule: docs/lab-kubeapi.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from hecate_lab import cluster_sim as sim
from hecate_lab.kubeapi.emulator import LabKubernetesEmulator
from hecate_lab.kubeapi.errors import LabKubeApiError
from hecate_lab.kubeapi.events import EventLog
from hecate_lab.kubeapi.manifest import LabManifest, LabNode
from hecate_lab.kubeapi.node_objects import (
    HEARTBEAT_PERIOD,
    NODE_LEASE_NAMESPACE,
    format_micro_time,
    lease_object,
    node_ready_condition,
    read_node_state,
)
from hecate_lab.kubeapi.resources import (
    GITREPOSITORIES,
    HELMRELEASES,
    KUSTOMIZATIONS,
    LEASES,
    NODES,
    PODS,
    REPLICASETS,
    WORKLOAD_RESOURCES,
)
from hecate_lab.nodestate import k3s_running

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2  # seconds between two reads of every node's state.json


async def sync_node(emulator: LabKubernetesEmulator, node: LabNode, now: dt.datetime,
                    heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD, *, ready: bool | None = None,
                    state: Mapping[str, Any] | None = None) -> bool:
    """One simulator step for one node; True when the Node was written.

    ``ready=False`` holds a running node NotReady (rule 3's delay); ``state`` is the
    node's state.json when the caller has read it already. The write goes to the
    emulator's store as a client's merge patch of the ``status`` subresource would (a
    kubelet's post): new resourceVersion, history, a MODIFIED watch event.
    """
    state = dict(state) if state is not None else read_node_state(node)
    stored = emulator.stored(NODES, None, node.name)
    if state is None or stored is None:  # the Node was deleted: k3s would re-register, the lab does not
        return False
    current = stored.raw
    conditions = list(current.get("status", {}).get("conditions") or [])
    previous = next((c for c in conditions if c.get("type") == "Ready"), None)
    condition = node_ready_condition(state, previous, now, heartbeat_period=heartbeat_period, ready=ready)
    if condition == previous:
        return False
    if previous is None:
        conditions.append(condition)
    else:
        conditions = [condition if c.get("type") == "Ready" else c for c in conditions]
    if previous is None or previous.get("status") != condition["status"]:
        log.info("node %s: Ready=%s (%s)", node.name, condition["status"], condition["reason"])
    await emulator.internal_patch(NODES, None, node.name, {"status": {"conditions": conditions}},
                                  subresource="status")
    return True


async def renew_lease(emulator: LabKubernetesEmulator, node: LabNode, now: dt.datetime) -> None:
    """A kubelet's Lease renewal: ``spec.renewTime`` now (the Lease is created again if it was deleted)."""
    renewed = await emulator.internal_patch(LEASES, NODE_LEASE_NAMESPACE, node.name,
                                            {"spec": {"renewTime": format_micro_time(now)}})
    if renewed is None:
        await emulator.internal_create(LEASES, lease_object(node, now))


def _pod_key(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))


class ClusterSimulator:
    """Applies the rules of :mod:`hecate_lab.cluster_sim` to the emulator, one :meth:`step` at a time.

    It keeps in memory only what the objects cannot say: since when each node's k3s has
    run, when its kubelet last renewed its Lease, since when each pod's inputs have held, the
    API's state (and since when it serves), and the last reported availability of each
    workload and Flux object (for the timeline).
    """

    CONTROLLER_ROUNDS = 3  # passes per step while the previous one wrote something

    def __init__(self, emulator: LabKubernetesEmulator, manifest: LabManifest, events: EventLog, *,
                 heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD) -> None:
        self.emulator = emulator
        self.nodes = manifest.nodes
        self.delays = manifest.delays
        self.events = events
        self.heartbeat_period = heartbeat_period
        self.servers = [n for n in manifest.nodes if n.role == "server"]
        self.running_since: dict[str, float | None] = {}
        self.api: sim.ApiState | None = None
        self.pod_since: dict[tuple[str, str, str], float] = {}
        self.workload_up: dict[sim.ObjRef, bool] = {}
        self.flux_ready: dict[sim.ObjRef, tuple[str, str]] = {}
        self.unreadable: set[str] = set()
        self.warned: set[str] = set()
        self.renewed: dict[str, float] = {}
        """When each node's kubelet last renewed its Lease (the node controller's grace counts from it)."""
        self.serving_since: float | None = None
        """When the API last came back (a restarted node controller grants every node a full grace period)."""
        self.lost: set[str] = set()
        """Nodes the node controller has marked NotReady (reported once on the timeline)."""
        self.silent: set[str] = set()
        """Nodes whose kubelet did not post in the last step: nobody updates their pods."""

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning("%s", message)

    async def step(self) -> float | None:
        """The API gate, then the Nodes (kubelets and the node controller), then a cold start and
        the controllers; the seconds until a delay runs out (when the next step is due at the
        latest), or None."""
        now = time.time()
        due: list[float] = []
        states: dict[str, dict[str, Any] | None] = {}
        first = self.api is None
        for node in self.nodes:
            state = states[node.name] = read_node_state(node)
            if state is None:
                if node.name not in self.unreadable:
                    log.warning("node %s: %s/state.json is missing or unreadable", node.name, node.dir)
                    self.unreadable.add(node.name)
                continue
            self.unreadable.discard(node.name)
            running = k3s_running(state)
            if first or node.name not in self.running_since:
                since = -math.inf if running else None  # running when the simulator starts: long since
            else:
                since = sim.held_since(running, self.running_since[node.name], now)
            self.running_since[node.name] = since

        running_servers = sum(1 for n in self.servers if (st := states.get(n.name)) and k3s_running(st))
        api = sim.api_state(self.api, running_servers, len(self.servers), now, self.delays.api)
        was = self.api
        self.api = api
        if api.available and (was is None or not was.available):
            self.serving_since = now
        await self.nodes_step(states, now, due, api.available)
        if not api.available:
            if was is None or was.available:
                self.events.emit("api", api.message)
                self.pod_since.clear()  # nobody watches the pods while the API is down
            self.emulator.set_available(False, api.message)
            if api.quorum_since is not None:
                due.append(api.quorum_since + self.delays.api - now)
            return min(due) if due else None
        if was is not None and not was.available:
            await self.cold_start()
        await self.controllers(now, due)
        if was is None or not was.available:
            self.events.emit("api", f"lab API serving: {running_servers} of {len(self.servers)} "
                                    f"k3s servers running")
        self.emulator.set_available(True)
        return min(due) if due else None

    async def nodes_step(self, states: Mapping[str, Mapping[str, Any] | None], now: float, due: list[float],
                         serving: bool) -> None:
        """Rule 3: a node's kubelet posts its Node and renews its Lease while its k3s runs and the
        API serves; the node controller marks a silent one NotReady after the grace period; while
        the API is down nobody writes."""
        when = dt.datetime.fromtimestamp(now, tz=dt.UTC)
        self.silent = set()
        for node in self.nodes:
            state = states.get(node.name)
            running = state is not None and k3s_running(dict(state))
            if not sim.kubelet_posts(running, serving):
                self.silent.add(node.name)
            if state is None or not serving:
                continue
            since = self.running_since.get(node.name)
            try:
                if sim.kubelet_posts(running, serving):
                    ready = sim.node_ready(running, since, now, self.delays.node)
                    if (wait := sim.due_in(since, now, self.delays.node)) is not None:
                        due.append(wait)
                    await sync_node(self.emulator, node, when, self.heartbeat_period, ready=ready, state=state)
                    if sim.lease_due(self.renewed.get(node.name), now, self.delays.lease):
                        await renew_lease(self.emulator, node, when)
                        self.renewed[node.name] = now
                    due.append(self.renewed[node.name] + self.delays.lease - now)
                    self.lost.discard(node.name)
                    continue
                start = sim.lost_since(self.renewed.get(node.name), self.serving_since)
                if sim.node_lost(self.renewed.get(node.name), self.serving_since, now, self.delays.grace):
                    if await sync_node(self.emulator, node, when, self.heartbeat_period, state=state) \
                            and node.name not in self.lost:
                        self.events.emit("node", f"kubelet silent for {self.delays.grace:g} s: NotReady",
                                         sim.ref_text(("Node", None, node.name)))
                    self.lost.add(node.name)
                elif (wait := sim.due_in(start, now, self.delays.grace)) is not None:
                    due.append(wait)  # until then the Node keeps its last status, maybe from before an outage
            except (LabKubeApiError, OSError) as e:
                log.warning("node %s: cannot update the Node: %s", node.name, e)

    async def cold_start(self) -> None:
        """Rule 2: delete what the outage lost, before the API serves again."""
        objects = self.emulator.live_all()
        resource = {sim.ref_of(raw): res for res, raw in objects}
        annotated = {sim.ref_of(raw) for _, raw in objects
                     if sim.is_true(sim.annotations_of(raw).get(sim.LOST_ON_COLD_START))}
        victims = sim.cold_start_victims([raw for _, raw in objects])
        dependents: list[str] = []
        for ref in victims:
            _, namespace, name = ref
            if not await self.emulator.internal_delete(resource[ref], namespace, name):
                continue
            if ref in annotated:
                self.events.emit("cold-start", f"lost in the outage (annotated {sim.LOST_ON_COLD_START}): deleted",
                                 sim.ref_text(ref))
            else:
                dependents.append(sim.ref_text(ref))
        if dependents:
            self.events.emit("cold-start", "deleted with what it belongs to: " + ", ".join(dependents))
        if not victims:
            self.events.emit("cold-start", f"cold start: nothing annotated {sim.LOST_ON_COLD_START}")

    async def controllers(self, now: float, due: list[float]) -> None:
        for _ in range(self.CONTROLLER_ROUNDS):
            if not await self._reconcile(now, due):
                break

    async def _reconcile(self, now: float, due: list[float]) -> bool:
        """One pass of every controller; True when it wrote something."""
        em = self.emulator
        wrote = await self._collect_garbage()
        if wrote:
            return True
        nodes = sorted(em.live(NODES), key=lambda n: self._node_order(n))
        node_ready = {str(n["metadata"]["name"]): sim.condition_true(n) for n in nodes}
        pods = em.live(PODS)
        load: dict[str, int] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and not sim.terminating(pod):
                load[node] = load.get(node, 0) + 1
        workloads: dict[sim.ObjRef, dict[str, Any]] = {}
        for res in WORKLOAD_RESOURCES.values():
            for obj in em.live(res):
                workloads[sim.ref_of(obj)] = obj
        replicasets = {sim.ref_of(rs): rs for rs in em.live(REPLICASETS)}
        computed: dict[sim.ObjRef, dict[str, Any]] = dict(workloads)

        for ref in sim.dependency_order(workloads):
            workload = workloads[ref]
            owner: dict[str, Any] = workload
            if ref[0] == "Deployment":
                rs = await self._replicaset(workload, replicasets)
                if rs is None:
                    continue
                if rs is not replicasets.get(sim.ref_of(rs)):
                    wrote = True
                owner = rs
            owned = [p for p in pods if sim.owned_by(p, owner) and not sim.terminating(p)]
            plan = sim.plan_pods(workload, owner, owned, nodes, load)

            def count(pod: Mapping[str, Any], delta: int) -> None:  # the next workload's placement sees it
                node = (pod.get("spec") or {}).get("nodeName")
                if node:
                    load[node] = load.get(node, 0) + delta

            for name in plan.delete:
                if await em.internal_delete(PODS, ref[1], name):
                    wrote = True
            for pod in owned:
                if pod["metadata"]["name"] in plan.delete:
                    count(pod, -1)
            owned = [p for p in owned if p["metadata"]["name"] not in plan.delete]
            for name, node in plan.bind:
                bound = await em.internal_patch(PODS, ref[1], name, {"spec": {"nodeName": node}},
                                                subresource="binding")
                if bound is not None:
                    wrote = True
                    count(bound, +1)
                    owned = [bound if p["metadata"]["name"] == name else p for p in owned]
            for manifest in plan.create:
                created = await em.internal_create(PODS, manifest)
                if created is not None:
                    wrote = True
                    count(created, +1)
                    owned.append(created)
                    pods.append(created)
            for name in plan.delete:
                pods = [p for p in pods if not (p["metadata"].get("namespace") == ref[1]
                                                and p["metadata"]["name"] == name)]

            waiting = sim.blockers(workload, computed)
            ready_count = 0
            for pod in owned:
                key = _pod_key(pod)
                node = (pod.get("spec") or {}).get("nodeName")
                if node in self.silent and node_ready.get(node):
                    # Its kubelet does not post and the node controller has not given up on it yet: the pod
                    # keeps its status -- after a cold start, the one from before the outage (rule 4).
                    ready_count += sim.condition_true(pod)
                    continue
                verdict = sim.pod_status(pod, node_ready=bool(node and node_ready.get(node)), waiting_for=waiting,
                                         since=self.pod_since.get(key), now=now, delay=self.delays.pod)
                if verdict.since is None:
                    self.pod_since.pop(key, None)
                else:
                    self.pod_since[key] = verdict.since
                if verdict.due is not None:
                    due.append(verdict.due)
                ready_count += verdict.ready
                if sim.status_changed(pod, verdict.status):
                    await em.internal_patch(PODS, ref[1], pod["metadata"]["name"], {"status": verdict.status},
                                            subresource="status")
                    wrote = True
            desired = None
            if ref[0] == "DaemonSet":
                template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
                desired = sum(1 for n in nodes if sim.node_fits(n, template))
            status = sim.workload_status(workload, len(owned), ready_count, now, desired)
            if sim.status_changed(workload, status):
                await em.internal_patch(WORKLOAD_RESOURCES[ref[0]], ref[1], ref[2], {"status": status},
                                        subresource="status")
                wrote = True
            if owner is not workload:
                rs_status = sim.workload_status(owner, len(owned), ready_count, now)
                if sim.status_changed(owner, rs_status):
                    await em.internal_patch(REPLICASETS, ref[1], owner["metadata"]["name"], {"status": rs_status},
                                            subresource="status")
                    wrote = True
            computed[ref] = {**workload, "status": sim.merge_patch(workload.get("status") or {}, status)}
            self._report_workload(ref, computed[ref], waiting)

        self._forget_pods(pods)
        return await self._flux(now, computed) or wrote

    @staticmethod
    def _node_order(node: Mapping[str, Any]) -> tuple[int, str]:
        spec = node.get("spec") or {}
        cidr = str(spec.get("podCIDR") or "")
        index = cidr.split(".")[2] if cidr.count(".") == 3 else ""
        return (int(index) if index.isdigit() else 1 << 30, str(node["metadata"]["name"]))

    def _forget_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        alive = {_pod_key(p) for p in pods}
        for key in [k for k in self.pod_since if k not in alive]:
            del self.pod_since[key]

    async def _replicaset(self, deployment: dict[str, Any],
                          replicasets: Mapping[sim.ObjRef, dict[str, Any]]) -> dict[str, Any] | None:
        """The Deployment's ReplicaSet, created or its ``spec.replicas`` followed."""
        wanted = sim.replicaset_for(deployment)
        ref = sim.ref_of(wanted)
        rs = replicasets.get(ref)
        if rs is None or not sim.owned_by(rs, deployment):
            if rs is not None:  # a stranger with the name: leave it, the Deployment gets no pods
                self._warn_once(f"rs:{ref}", f"{sim.ref_text(ref)} exists but is not owned by its Deployment")
                return None
            return await self.emulator.internal_create(REPLICASETS, wanted)
        if (rs.get("spec") or {}).get("replicas") != sim.replicas(deployment):
            return await self.emulator.internal_patch(REPLICASETS, ref[1], ref[2],
                                                      {"spec": {"replicas": sim.replicas(deployment)}})
        return rs

    async def _collect_garbage(self) -> bool:
        """Delete ReplicaSets and pods whose controlling owner is gone (as Kubernetes' GC does)."""
        em = self.emulator
        owners: set[tuple[str, str | None, str]] = set()
        uids: set[str] = set()
        for res in (*WORKLOAD_RESOURCES.values(), REPLICASETS):
            for obj in em.live(res):
                owners.add(sim.ref_of(obj))
                if obj["metadata"].get("uid"):
                    uids.add(str(obj["metadata"]["uid"]))
        wrote = False
        for res in (REPLICASETS, PODS):
            for obj in em.live(res):
                meta = obj.get("metadata") or {}
                for owner in meta.get("ownerReferences") or []:
                    if not isinstance(owner, Mapping) or owner.get("kind") not in (*WORKLOAD_RESOURCES, "ReplicaSet"):
                        continue
                    gone = str(owner.get("uid")) not in uids if owner.get("uid") else \
                        (owner.get("kind"), meta.get("namespace"), owner.get("name")) not in owners
                    if gone and await em.internal_delete(res, meta.get("namespace"), meta["name"]):
                        log.info("%s: its owner %s/%s is gone: deleted", sim.ref_text(sim.ref_of(obj)),
                                 owner.get("kind"), owner.get("name"))
                        wrote = True
                        break
        return wrote

    def _report_workload(self, ref: sim.ObjRef, workload: Mapping[str, Any], waiting: list[str]) -> None:
        up = sim.available(workload)
        before = self.workload_up.get(ref)
        self.workload_up[ref] = up
        if up == before or (before is None and not up):
            return
        status = workload.get("status") or {}
        if ref[0] == "DaemonSet":
            counts = f"{status.get('numberReady', 0)}/{status.get('desiredNumberScheduled', 0)} ready"
        else:
            counts = f"{status.get('readyReplicas', 0)}/{sim.replicas(workload)} ready"
        why = f"; waiting for {', '.join(waiting)}" if waiting and not up else ""
        self.events.emit("workload", f"{'available' if up else 'unavailable'} ({counts}{why})", sim.ref_text(ref))

    async def _flux(self, now: float, workloads: Mapping[sim.ObjRef, Mapping[str, Any]]) -> bool:
        """Rule 5: GitRepositories, then Kustomizations and HelmReleases, then their renders."""
        em = self.emulator
        wrote = False
        sources: dict[sim.ObjRef, dict[str, Any]] = {}
        for repo in em.live(GITREPOSITORIES):
            ref = sim.ref_of(repo)
            try:
                server = sim.served_by(repo)
            except ValueError as e:
                self._warn_once(f"served:{ref}", f"{sim.ref_text(ref)}: {e}")
                server, reachable = None, False
            else:
                reachable = server is None or sim.available(workloads.get(server))
            status = sim.gitrepository_status(repo, reachable, now)
            if sim.status_changed(repo, status):
                await em.internal_patch(GITREPOSITORIES, ref[1], ref[2], {"status": status}, subresource="status")
                wrote = True
            sources[ref] = {**repo, "status": sim.merge_patch(repo.get("status") or {}, status)}
            self._report_flux(ref, sources[ref])

        existing = {sim.ref_of(raw) for _, raw in em.live_all()}
        for res in (KUSTOMIZATIONS, HELMRELEASES):
            for obj in em.live(res):
                ref = sim.ref_of(obj)
                chart = (((obj.get("spec") or {}).get("chart") or {}).get("spec") or {}).get("version") or ""
                fstatus = sim.flux_status(obj, sim.source_view(sim.source_ref(obj), sources, str(chart)), now)
                current: dict[str, Any] = obj
                if fstatus is not None:
                    if sim.status_changed(obj, fstatus):
                        await em.internal_patch(res, ref[1], ref[2], {"status": fstatus}, subresource="status")
                        wrote = True
                    current = {**obj, "status": sim.merge_patch(obj.get("status") or {}, fstatus)}
                self._report_flux(ref, current)
                try:
                    missing = sim.renders_to_create(current, existing)
                except ValueError as e:
                    self._warn_once(f"renders:{ref}", f"{sim.ref_text(ref)}: {e}")
                    continue
                for manifest in missing:
                    wrote = await self._render(ref, manifest, existing) or wrote
        return wrote

    async def _render(self, by: sim.ObjRef, manifest: dict[str, Any], existing: set[sim.ObjRef]) -> bool:
        target = sim.ref_of(manifest)
        res = self.emulator.resource_for(str(manifest["apiVersion"]), str(manifest["kind"]))
        if res is None:
            self._warn_once(f"render:{by}:{target}", f"{sim.ref_text(by)} renders {manifest['apiVersion']} "
                                                     f"{manifest['kind']}, which the lab API does not serve")
            return False
        if self.emulator.resources[res].namespaced is False:
            manifest["metadata"].pop("namespace", None)
            target = sim.ref_of(manifest)
        created = await self.emulator.internal_create(res, manifest)
        existing.add(target)
        if created is None:
            return False
        self.events.emit("flux", f"re-created {sim.ref_text(target)} (it renders it)", sim.ref_text(by))
        return True

    def _report_flux(self, ref: sim.ObjRef, obj: Mapping[str, Any]) -> None:
        cond = sim.condition(obj, "Ready")
        if cond is None:
            return
        now = (str(cond.get("status")), str(cond.get("reason")))
        before = self.flux_ready.get(ref)
        self.flux_ready[ref] = now
        if now == before:
            return
        text = f"Ready={now[0]} ({now[1]})"
        if now[0] != "True":
            text += f": {cond.get('message')}"
        self.events.emit("flux", text, sim.ref_text(ref))


async def run_simulator(simulator: ClusterSimulator, *, interval: float = POLL_INTERVAL) -> None:
    """Step the simulator forever: every ``interval`` seconds, sooner when a delay runs out or
    a client wrote something."""
    emulator = simulator.emulator
    while True:
        emulator.changed.clear()
        try:
            due = await simulator.step()
        except Exception:  # the lab API must outlive a bug in one rule; it is logged with its traceback
            log.exception("simulator step failed")
            due = None
        timeout = interval if due is None else min(interval, max(0.01, due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(emulator.changed.wait(), timeout)
