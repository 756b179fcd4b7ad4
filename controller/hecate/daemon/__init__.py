"""``hecate daemon``: one asyncio loop with the UPS monitor, the HTTP server and the shutdown.

Start order matters for what comes later (the embedded kopf operator cancels tasks
created after it starts): the HTTP server and the monitor start first. The HTTP server
(TCP for Prometheus, a root-only unix socket for ``hecate status``) binds in the
background: a port or socket another process holds is retried with an alert, never a
reason to stop watching the UPSes (:mod:`hecate.adapters.http`). systemd is told
``READY=1`` once every UPS has been polled once, whether or not the server listens yet,
and gets watchdog keep-alives while polls keep happening.

On a shutdown decision with ``shutdown.execute: true`` the shutdown runs as its own task
while the monitor keeps polling (it tells the run when mains is back); otherwise the
decision is recorded as a dry-run. A shutdown a killed daemon left in the journal is
resumed at start. With ``flux.bootstrap_objects`` set, the daemon keeps the bootstrap
cache (what startup applies to break the Flux/Gitea deadlock) fresh while Flux is Ready.
With ``peer.listen`` set, a separate listener takes signed triggers from trusted peer hosts
(:mod:`hecate.adapters.peer_listener`): an accepted one is latched and acted on at once like a UPS's
decision (executed or recorded as a dry-run), without waiting for a poll; the local UPSes being
on mains never aborts the shutdown a peer triggered. SIGTERM/SIGINT only set a flag: the loop
stops after its poll, but a shutdown in progress is never cut short -- the daemon waits for it to finish.

Bookkeeping never stops the shutdown: the run shares the daemon's state store, whose
failed writes (journal, run record, lock on a full or read-only disk) are counted and shown
in status while the run goes on in memory, and it is the *armed* shutdown, which goes on
without the cross-process run lock if the lock file cannot be opened. A run that crashes
(any exception) is started again from the plan after a short backoff, for as long as it
takes: the decision stays latched while the shutdown task lives.

The policy in force (:mod:`hecate.services.policy`): at start, hecate.yaml with the
cached PowerPolicy laid over it (if any); with ``policy.name`` set, the embedded operator
(:mod:`hecate.operator`, kopf in its own thread, started after the monitor and the HTTP
server) puts the cluster's PowerPolicy in force while the API is up. Every change of
the effective configuration goes through :meth:`Daemon.apply` on the daemon's loop into
the monitor, which owns it (:meth:`Monitor.apply <hecate.services.monitor.Monitor.apply>`):
the poll interval, the UPS read timeout, the watchdog's staleness and the thresholds all
follow it at once (a sleeping monitor wakes), and the next shutdown plans with it (a
running shutdown keeps the plan it started with). The operator stops after the shutdown,
last.

On a peer (``role: peer``) a decision is not a shutdown: it is forwarded to the coordinator
(:mod:`hecate.services.forward`) as its own task while the monitor keeps polling. Accepted, the
peer does nothing else; not accepted within ``peer.forward_for_s`` (or refused), the peer falls
back to its own local shutdown (:func:`hecate.domain.plan.peer_plan`) when
``peer.fallback_local_shutdown`` is true -- executed with ``shutdown.execute``, a dry-run record
otherwise -- unless mains is back by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hecate.adapters import http, nut, peer_client, peer_listener, systemd
from hecate.adapters.store import RunInProgress, StateStore, new_run_id
from hecate.domain import forward, trigger
from hecate.domain.budget import Budget
from hecate.domain.config import HecateConfig, Role
from hecate.domain.runs import PEER_FALLBACK, RunKind, RunRecord, RunResult, RunTally
from hecate.services import bootstrap_cache, shutdown, status
from hecate.services import forward as forward_mod
from hecate.services import monitor as monitor_mod
from hecate.services import policy as policy_mod
from hecate.services.executor import in_flight
from hecate.services.progress import JsonLines

if TYPE_CHECKING:
    from hecate.operator import Operator, OperatorOptions
    from hecate.operator.status import Snapshot

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
"""Waits before starting a crashed shutdown run again; the last one repeats, never giving up."""


class Daemon:
    def __init__(self, config: HecateConfig, reader: monitor_mod.UpsReader | None = None) -> None:
        self.baseline = config
        self.store = StateStore(config.state_dir)
        self.loop: asyncio.AbstractEventLoop | None = None
        """The daemon's loop, once running: policy changes from the operator's thread are applied on it."""
        self.policy = policy_mod.PolicyInForce(config, self.store, on_change=self._policy_changed)
        self.policy.load()  # the cache (if any) is in force from the first poll
        self.operator: Operator | None = None
        self.shutdown_task: asyncio.Task[None] | None = None
        self.http: http.Server | None = None
        """The HTTP server, once started: where it listens is part of the status."""
        self.peers: peer_listener.PeerListener | None = None
        """The trigger listener for peer hosts, when ``peer.listen`` is set."""
        self.shutdown_restarts = 0
        """Shutdown runs started again after a crash, since the daemon started (status, metrics)."""
        self.dry_run = monitor_mod.dry_run_recorder(self.store)
        self.monitor = monitor_mod.Monitor(self.policy.config, reader or nut.NutReader(), self.store,
                                           self.on_shutdown, unlatch_on_mains=True)
        self.forwarder = forward_mod.Forwarder(self.store) if config.role is Role.peer else None
        """A peer's forwards to its coordinator (None on the coordinator)."""
        self.forward_task: asyncio.Task[None] | None = None
        self.monitor.busy = self.busy
        self.run_tally = RunTally(self.monitor.view.runs)
        """Finished runs recorded since the daemon started (``hecate_runs_total``): the history only goes up to
        ``MAX_RUNS_KEPT``."""
        self.cache_refresh: bootstrap_cache.RefreshState | None = None
        """How the bootstrap cache's refreshes went, while the daemon keeps it fresh."""

    @property
    def config(self) -> HecateConfig:
        """The configuration in force (the monitor's)."""
        return self.monitor.config

    def shutting_down(self) -> bool:
        return self.shutdown_task is not None and not self.shutdown_task.done()

    def forwarding(self) -> bool:
        return self.forward_task is not None and not self.forward_task.done()

    def busy(self) -> bool:
        """A run or a forward the decision started is in progress: the decision stays latched."""
        return self.shutting_down() or self.forwarding()

    # -- the policy in force -------------------------------------------------------------------

    def apply(self, config: HecateConfig) -> None:
        """Put an effective configuration in force (on the daemon's loop).

        The monitor decides with it from its next poll (thresholds, debounce, deadtime,
        which UPSes protect the cluster; the budget is re-estimated with its trigger
        settings), polls and reads at its intervals and timeout from now on, and the next
        shutdown plans with it. A shutdown already running keeps its plan. The UPS list
        and ``shutdown.execute`` never change this way (a policy cannot set them).
        """
        if self.peers is not None:
            self.peers.load_keys(config)  # a rotated secret takes effect with the next configuration applied
        if config == self.config:
            return
        if self.shutting_down():
            # Not in the middle of a shutdown: a new set of protecting UPSes could make the run think
            # mains is back and abort it. The newest policy is applied when the run ends.
            log.warning("policy change received during a shutdown: applied when the shutdown ends")
            return
        self.monitor.apply(config)
        log.info("policy applied: threshold %.0f s (budget %g s x %g), debounce %d polls, protecting %s",
                 self.monitor.budget.threshold_s, self.monitor.budget.seconds, config.trigger.safety_factor,
                 config.trigger.debounce_polls, ", ".join(u.name for u in config.ups if u.protects_cluster) or "none")

    def _policy_changed(self, _config: HecateConfig) -> None:
        """Called by the policy state from any thread: apply the newest policy on the daemon's loop."""
        loop = self.loop
        if loop is None:  # not running yet: __init__ and run() read policy.config themselves
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
            loop.call_soon_threadsafe(lambda: self.apply(self.policy.config))

    def status_document(self) -> dict[str, Any]:
        listeners = [lst.as_dict() for lst in self.http.listeners] if self.http else None
        if self.peers is not None:
            listeners = [*(listeners or []), self.peers.listener.as_dict()]
        doc = status.document(self.monitor, "daemon", self.policy.view, listeners)
        if self.peers is not None:
            doc["peer_listener"] = self.peers.status()
            doc["alerts"] += self.peers.alerts()
        doc["shutdown_task"] = {"running": self.shutting_down(), "restarts": self.shutdown_restarts}
        self.run_tally.observe(self.monitor.view.runs)
        doc["runs"]["recorded"] = self.run_tally.as_rows()
        if self.cache_refresh is not None:
            doc["bootstrap_cache"] = self.cache_refresh.as_dict()
        if self.forwarder is not None:
            doc["peer_forward"] = status.peer_forward(self.config, self.forwarder.last, self.forwarding(),
                                                      self.forwarder.counts)
        return doc

    def operator_snapshot(self) -> Snapshot:
        """What the operator writes into the PowerPolicy's status (called on the daemon's loop)."""
        from hecate.operator.status import Snapshot

        return Snapshot(document=self.status_document(), shutting_down=self.shutting_down(),
                        starting_up=in_flight(self.store, RunKind.startup) is not None, policy=self.policy.view)

    async def on_shutdown(self, decision: trigger.Decision, budget: Budget) -> None:
        if self.forwarder is not None:
            self.on_peer_decision(decision, budget)
            return
        if not self.config.shutdown.execute:
            await self.dry_run(decision, budget)
            return
        if self.shutting_down():
            log.warning("a shutdown is already running; this decision joins it")
            return
        self.start_shutdown(monitor_mod.trigger_info(decision, budget))

    async def on_peer_trigger(self, decision: trigger.Decision) -> tuple[int, dict[str, Any]]:
        """An accepted peer trigger: latched and acted on now (202), or joined to the shutdown already
        decided (200)."""
        already = (200, {"accepted": True, "already": "shutting down"})
        if self.shutting_down() or self.monitor.view.state.latched is not None:
            return already
        if not await self.monitor.decide_external(decision):
            return already
        return 202, {"accepted": True, "run": "shutdown" if self.config.shutdown.execute else "dry-run"}

    # -- a peer's decision: forward it, fall back to the local shutdown --------------------------

    def on_peer_decision(self, decision: trigger.Decision, budget: Budget) -> None:
        if self.forwarding() or self.shutting_down():
            log.warning("a forward or local shutdown is already in progress; this decision joins it")
            return
        self.forward_task = asyncio.create_task(self._forward(decision, budget), name="forward")

    async def _forward(self, decision: trigger.Decision, budget: Budget) -> None:
        assert self.forwarder is not None
        config = self.config
        settings = config.peer
        decided_at = monitor_mod.wall_time(decision.at)
        host = config.host_name or "?"
        started = forward.ForwardRecord(coordinator_url=settings.coordinator_url or "", peer=host,
                                        reason=decision.reason.value, detail=decision.detail,
                                        decided_at=decided_at, started_at=datetime.now(UTC))
        try:
            body = forward.trigger_body(host, decision, decided_at, self.monitor.view.snapshots.values())
        except ValueError as err:
            body, started = None, started.model_copy(update={"error": str(err)})
        log.warning("forwarding the shutdown decision to the coordinator %s for at most %g s",
                    settings.coordinator_url, settings.forward_for_s)
        try:
            record = await self.forwarder.forward(settings, body, started)
        except Exception as err:  # whatever went wrong, the decision stands: the fallback must still follow
            log.exception("forwarding the trigger crashed; counting it as failed")
            record = started.model_copy(update={"result": forward.ForwardResult.failed, "error": f"crashed: {err}",
                                                "finished_at": datetime.now(UTC)})
        if record.result is forward.ForwardResult.accepted:
            return
        fallback, run_id = await self._fallback(decision, budget, record)
        self.forwarder.last = record.model_copy(update={"fallback": fallback, "fallback_run": run_id})
        await peer_client.save_forward(self.store, self.forwarder.last)

    async def _fallback(self, decision: trigger.Decision, budget: Budget,
                        record: forward.ForwardRecord) -> tuple[forward.Fallback, str | None]:
        """The local shutdown after a forward that was not accepted: what became of it, and its run id."""
        config = self.config
        if not config.peer.fallback_local_shutdown:
            log.error("peer.fallback_local_shutdown is false: this host does NOT shut itself down")
            return forward.Fallback.disabled, None
        if self.monitor.power_restored():
            log.warning("mains is back on the protecting UPSes: no local shutdown")
            return forward.Fallback.power_back, None
        info = {**monitor_mod.trigger_info(decision, budget), "source": PEER_FALLBACK,
                "forward": record.result.value}
        if not config.shutdown.execute:
            at = datetime.now(UTC)
            run = RunRecord(id=new_run_id(at), kind=RunKind.shutdown, dry_run=True, started_at=at, finished_at=at,
                            duration_s=0.0, result=RunResult.success, trigger=info)
            await asyncio.to_thread(self.store.append_run, run)
            log.warning("dry-run: recorded the local shutdown %s; nothing was touched", run.id)
            return forward.Fallback.dry_run, run.id
        log.critical("falling back to the local shutdown of this host")
        self.start_shutdown(info)
        return forward.Fallback.ran, None

    def start_shutdown(self, trigger_info: dict[str, Any]) -> None:
        self.shutdown_task = asyncio.create_task(self._shutdown(trigger_info), name="shutdown")
        if self.operator is not None:
            self.operator.poke()  # ShutdownInProgress now, not at the next status interval

    async def _shutdown(self, trigger_info: dict[str, Any]) -> None:
        # Resuming needs to know whether mains is back: wait for the first poll.
        while not self.monitor.ready:
            await asyncio.sleep(0.05)
        crashes = 0
        # The local UPSes being on mains says nothing about the peer's: its shutdown is never aborted for it.
        restored = None if trigger_info.get("source") == "peer" else self.monitor.power_restored
        try:
            while True:
                try:
                    record = await shutdown.run(self.config, trigger_info, JsonLines(),
                                                power_restored=restored, store=self.store,
                                                armed=True)
                    break
                except RunInProgress as err:  # e.g. a startup or a manual run: the shutdown waits its turn
                    log.warning("shutdown waiting: %s", err)
                    await asyncio.sleep(1)
                except Exception:  # whatever killed it, the decision stands: run it again from the plan
                    crashes += 1
                    self.shutdown_restarts += 1
                    delay = RESTART_BACKOFF_S[min(crashes, len(RESTART_BACKOFF_S)) - 1]
                    log.exception("shutdown run crashed (%d time(s)); starting it again from the plan in %g s",
                                  crashes, delay)
                    trigger_info = {**trigger_info, "restarted": crashes}  # it never teaches the budget
                    await asyncio.sleep(delay)
            log.warning("shutdown run %s ended: %s", record.id, record.result)
        finally:
            self.monitor.refresh_budget()
            self.shutdown_task = None  # not "shutting down" any more: a deferred policy change may apply
            self.apply(self.policy.config)
            if self.operator is not None:
                self.operator.poke()


async def run(config: HecateConfig, stop: asyncio.Event | None = None,
              reader: monitor_mod.UpsReader | None = None, *,
              operator_options: OperatorOptions | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon = Daemon(config, reader)
    daemon.loop = loop
    if config.role is Role.peer:
        _announce_peer(config)
    elif not config.shutdown.execute:
        log.warning("shutdown.execute is false: shutdown decisions are recorded as dry-runs only")
    server = daemon.http = http.Server(daemon.status_document, lambda: daemon.monitor.ready, config.metrics)
    await server.start()  # binds in the background: returns at once, even when the port is taken
    if config.peer.listen:
        daemon.peers = peer_listener.PeerListener(daemon.config, daemon.store, daemon.on_peer_trigger)
        await daemon.peers.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The monitor and watchdog stop on `halt`, which follows `stop` only once no shutdown is running:
    # the run needs the monitor (is mains back?) and systemd must keep seeing keep-alives.
    halt = asyncio.Event()
    tasks = [asyncio.create_task(daemon.monitor.run(halt), name="monitor")]
    if daemon.config.flux.bootstrap_objects or config.policy.name:  # a policy may add bootstrap objects later
        daemon.cache_refresh = bootstrap_cache.RefreshState.from_snapshot(daemon.config.flux.fallback_manifests_dir)
        tasks.append(asyncio.create_task(bootstrap_cache.keep_fresh(lambda: daemon.config, halt,
                                                                    daemon.shutting_down, daemon.store,
                                                                    daemon.cache_refresh),
                                         name="bootstrap-cache"))
    if config.policy.name:  # after the monitor and the HTTP server; kopf lives in its own thread and loop
        from hecate.operator import Operator

        daemon.operator = Operator(config, daemon.policy, daemon.operator_snapshot, operator_options)
        daemon.operator.start()
        log.info("operator: watching PowerPolicy %s (kubeconfig %s)", config.policy.name, config.cluster.kubeconfig)
    pending = shutdown.in_flight_shutdown(daemon.store)
    if pending is not None:
        log.warning("a shutdown (%s) was in flight when Hecate stopped: resuming it", pending)
        daemon.start_shutdown({"source": "resume"})
    try:
        while not daemon.monitor.ready and not stop.is_set():
            await asyncio.sleep(0.05)
        systemd.notify("READY=1\nSTATUS=monitoring " + ", ".join(u.name for u in config.ups))
        interval = systemd.watchdog_interval()
        if interval:
            # Keep-alives only while polls happen: a wedged monitor must let systemd restart us. How
            # long counts as wedged follows the policy in force (a PowerPolicy may poll more slowly).
            tasks.append(asyncio.create_task(_watchdog(interval, halt, daemon.monitor.polling), name="watchdog"))
        await stop.wait()
        if daemon.forwarding():
            log.warning("stop requested during a forward: finishing it (and its fallback) first")
            assert daemon.forward_task is not None
            await asyncio.shield(daemon.forward_task)
        if daemon.shutting_down():
            log.warning("stop requested during a shutdown: finishing the shutdown first")
            systemd.notify("STATUS=finishing the shutdown before stopping")
            assert daemon.shutdown_task is not None
            await asyncio.shield(daemon.shutdown_task)
        log.info("stopping")
        systemd.notify("STOPPING=1")
    finally:
        halt.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*tasks, return_exceptions=True)
        if daemon.forward_task is not None:
            await asyncio.gather(daemon.forward_task, return_exceptions=True)
        if daemon.shutdown_task is not None:  # decided in the very last poll: still finish it
            await asyncio.gather(daemon.shutdown_task, return_exceptions=True)
        if daemon.operator is not None:  # last: it reports the shutdown until it is over
            await daemon.operator.stop()
        daemon.loop = None
        if daemon.peers is not None:
            await daemon.peers.stop()
        await server.stop()


def _announce_peer(config: HecateConfig) -> None:
    """Say what a peer does with a decision, and whether it can sign (a missing secret fails every forward)."""
    settings = config.peer
    fallback = ("off" if not settings.fallback_local_shutdown
                else "executed" if config.shutdown.execute else "recorded as a dry-run")
    log.info("role peer: shutdown decisions are forwarded to %s (key %s) for at most %g s; local fallback %s",
             settings.coordinator_url, settings.key_id, settings.forward_for_s, fallback)
    if settings.secret_file is not None:
        try:
            peer_client.read_secret(settings.secret_file)
        except peer_client.SecretError as err:
            log.error("%s: every forward will fail (and fall back to the local shutdown)", err)


async def _watchdog(interval: float, stop: asyncio.Event, healthy: Callable[[], bool]) -> None:
    while not stop.is_set():
        if healthy():
            systemd.notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
