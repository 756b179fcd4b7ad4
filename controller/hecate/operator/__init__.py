"""The embedded kopf operator: the PowerPolicy named by ``policy.name``, reconciled from the daemon.

What it does. It watches that one cluster-scoped PowerPolicy (a field selector on
``metadata.name``, so no other object is ever touched). On create, update and on every
(re)connection (kopf's resume) it validates the object with the models of hecate.yaml and
the host's envelope (:meth:`hecate.services.policy.PolicyInForce.accept`): a valid one is
cached atomically and put in force at once (the daemon's monitor and its next shutdown plan use it); an invalid
one is reported (``Ready=False``/``Stalled=True`` naming the field, and one Kubernetes Event, reason
``PolicyRejected``) while the last valid policy stays in force from the cache. A deleted
object leaves the cache in force. The status (:mod:`hecate.operator.status`) is written
right after each of those and every ``status_interval_s`` (30 s) -- the UPS summary,
budget, threshold and last run change with every poll, the status does not need to.

How it is embedded -- three kopf behaviours, each taken care of (kopf 1.45, file:line):

1. **kopf gives up when the API is unreachable.** Its requests retry
   ``networking.error_backoffs`` times and then escalate (``_cogs/clients/api.py:121``);
   a root task that fails ends the whole operator (``_core/reactor/running.py:397-422``)
   -- at start (the resource scan) and when the API goes away later (the watcher). So
   kopf runs inside a supervisor loop: probe the API and the CRD (quietly, with the
   daemon's own client), start kopf, and when it ends for any reason back off (1 s
   doubling to 30 s) and start again. Meanwhile the daemon polls UPSes and acts on the
   cached policy; nothing waits for the operator.
2. **kopf takes SIGINT/SIGTERM and arms a SIGKILL.** ``spawn_tasks`` installs its own
   signal handlers whenever it runs in the main thread -- a ``stop_flag`` does not prevent
   that (``running.py:352-358``) -- and when cancelled without its stop-flag it arms
   ``SIGKILL`` after ``process.ultimate_exiting_timeout`` (600 s, ``running.py:471-479``).
   kopf therefore runs in **its own thread with its own event loop**: outside the main
   thread it installs no handler (``running.py:360-361``), so SIGTERM stays the daemon's,
   which never cuts a shutdown short. The timeout is set to ``None`` anyway (a
   ``pthread_kill(SIGKILL)`` from any thread kills the whole process).
3. **kopf cancels tasks created after it started.** When it exits it cancels every task
   of its event loop that did not exist when it started (``running.py:384-419``,
   ``aiotasks.all_tasks`` is ``asyncio.all_tasks()`` of the running loop); in the daemon's
   loop that would include a shutdown started later and every step task of it. In its
   own loop kopf can only cancel its own tasks. The daemon still starts the HTTP server
   and the monitor before the operator. The supervisor and the status writer exist
   before each kopf run, so kopf leaves them alone too.

kopf reads the kubeconfig in ``cluster.kubeconfig`` through a login handler (never
in-cluster config or ``~/.kube``), keeps its handler progress and last-handled
configuration under Hecate's own annotation prefix (``hecate.io/``), runs standalone (no
peering objects), does not scan CRDs (no RBAC for them) and posts Events only at
warning level (the rejection). It needs ``patch`` on ``powerpolicies`` for those
annotations, and ``patch`` on ``powerpolicies/status``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from hecate.adapters.kube import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.powerpolicy import CrdMissing, PolicyApi
from hecate.domain import policy as policy_mod
from hecate.domain.config import HecateConfig
from hecate.domain.policy_source import ClusterObject, OperatorLink
from hecate.operator.status import Snapshot, rejection, status_body
from hecate.services.policy import PolicyInForce, PolicyRejected

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "hecate.io"


@dataclass(frozen=True)
class OperatorOptions:
    status_interval_s: float = 30.0
    """How often the status (UPS summary, budget, threshold, last run) is written."""
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    """Restarts of kopf (and probes of an unreachable API) back off up to this."""
    stop_timeout_s: float = 10.0
    """How long :meth:`Operator.stop` waits for kopf to finish (plus one status write)."""
    kopf_log_level: int = logging.WARNING
    """kopf logs every handler run at INFO; the daemon keeps its warnings and errors."""


def kopf_settings(config: HecateConfig, name: str, options: OperatorOptions) -> kopf.OperatorSettings:
    """kopf's settings for one run (see the module docstring for why each is set)."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"  # unused: no deletion handlers
    settings.process.ultimate_exiting_timeout = None
    settings.peering.standalone = True
    settings.scanning.disabled = True
    timeout = config.cluster.api_timeout_s
    settings.networking.request_timeout = timeout
    settings.networking.connect_timeout = timeout
    settings.networking.error_backoffs = [1, 2, 4]  # then give up: the supervisor restarts kopf
    settings.watching.connect_timeout = timeout
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.field_selectors[policy_mod.GROUP, policy_mod.PLURAL] = f"metadata.name={name}"
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "hecate"
    settings.posting.reporting_instance = config.host_name or "hecate"
    settings.posting.event_name_prefix = "hecate-event-"
    return settings


class _ExpectedNoSignals(logging.Filter):
    """kopf warns that it installs no signal handlers outside the main thread: that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OS signals are ignored" not in record.getMessage()


def _plain(body: Any) -> dict[str, Any]:
    """A kopf body as plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(dict(body), default=dict))
    return data


class Operator:
    """kopf in its own thread, supervised; the policy state and the status writer around it.

    ``snapshot`` is called on the daemon's loop (the thread the operator was started
    from) whenever the status is written.
    """

    def __init__(self, config: HecateConfig, state: PolicyInForce, snapshot: Callable[[], Snapshot],
                 options: OperatorOptions | None = None) -> None:
        if config.policy.name is None:
            raise ValueError("the operator needs policy.name")
        self.config = config
        self.name: str = config.policy.name
        self.state = state
        self.snapshot = snapshot
        self.options = options or OperatorOptions()
        self.api = PolicyApi(config.cluster.kubeconfig, config.cluster.api_timeout_s)
        self.kopf_runs = 0
        self._host_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._stop = asyncio.Event()  # both live in the operator's loop
        self._poked = asyncio.Event()
        self._conditions: dict[str, dict[str, Any]] = {}
        self._warned: tuple[str | None, int | None] | None = None

    # -- the daemon's side ------------------------------------------------------------------

    def start(self) -> None:
        """Start the operator's thread (call from the daemon's loop)."""
        self._host_loop = asyncio.get_running_loop()
        logging.getLogger("kopf").setLevel(self.options.kopf_log_level)
        running = logging.getLogger("kopf._core.reactor.running")
        if not any(isinstance(f, _ExpectedNoSignals) for f in running.filters):
            running.addFilter(_ExpectedNoSignals())
        self._thread = threading.Thread(target=self._thread_main, name="hecate-operator", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop kopf and the thread; waits up to ``stop_timeout_s`` (a daemon thread cannot hold the exit)."""
        with self._lock:
            self._stopping = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            timeout = self.options.stop_timeout_s + self.config.cluster.api_timeout_s  # + the last status write
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                log.warning("the operator did not stop within %gs; leaving it", timeout)

    def poke(self) -> None:
        """Write the status soon (thread-safe), e.g. when a shutdown starts or ends."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._poked.set)

    # -- the operator's thread ------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        with self._lock:
            self._loop = loop
            stopping = self._stopping
        try:
            if not stopping:
                loop.run_until_complete(self._supervise())
        except Exception as err:
            log.exception("the operator failed; the policy cache stays in force")
            with contextlib.suppress(Exception):
                self.state.unavailable(f"operator stopped: {err!r}")  # status must not claim a live watch
        finally:
            with self._lock:
                self._loop = None
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or return early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _supervise(self) -> None:
        """Probe, run kopf, back off, again -- until stopped."""
        backoff = self.options.backoff_initial_s
        last_problem: str | None = None
        while not self._stop.is_set():
            try:
                found = await self.api.probe(self.name)
            except (ApiUnavailable, CrdMissing) as err:
                problem = str(err)
                if problem != last_problem:
                    log.warning("operator: cannot watch PowerPolicy %s: %s; retrying (backoff up to %gs); "
                                "policy in force: %s", self.name, problem, self.options.backoff_max_s,
                                self.state.view.source.value)
                    last_problem = problem
                self.state.unavailable(problem)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            except KubeError as err:  # 401/403...: the same backoff
                self.state.unavailable(str(err))
                log.warning("operator: %s; retrying in %gs", err, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            except Exception as err:  # a bug must not end the supervision for good: back off and retry
                log.exception("operator: probing PowerPolicy %s failed", self.name)
                self.state.unavailable(f"operator error: {err!r}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            last_problem = None
            if not found:
                self.state.missing()
            self.state.connected()
            started = time.monotonic()
            outcome = await self._run_kopf()
            if self._stop.is_set():
                break
            self.state.unavailable(f"operator stopped: {outcome}")
            if time.monotonic() - started > self.options.backoff_max_s:
                backoff = self.options.backoff_initial_s  # it had been running fine
            log.warning("operator: kopf stopped (%s); restarting in %gs; policy in force: %s", outcome, backoff,
                        self.state.view.source.value)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.options.backoff_max_s)

    async def _run_kopf(self) -> str:
        """One kopf run (with the status writer beside it); what ended it."""
        self.kopf_runs += 1
        writer = asyncio.create_task(self._write_status_loop(), name="policy-status")
        try:
            await kopf.operator(registry=self._registry(), settings=kopf_settings(self.config, self.name, self.options),
                                stop_flag=self._stop, standalone=True, clusterwide=True)
            return "stopped"
        except asyncio.CancelledError:
            raise
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if self._stop.is_set():  # the daemon is stopping: leave the status current (e.g. the shutdown's end)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._write_status(), timeout=self.config.cluster.api_timeout_s)

    # -- kopf's handlers ----------------------------------------------------------------------

    def _registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()  # not the global one: no fallback logins (in-cluster, ~/.kube)
        resource = (policy_mod.GROUP, policy_mod.VERSION, policy_mod.PLURAL)

        def ours(name: str, **_: Any) -> bool:
            return name == self.name

        @kopf.on.login(registry=registry, errors=kopf.ErrorsMode.IGNORED)
        def login(**_: Any) -> kopf.ConnectionInfo | None:
            try:
                return self.api.connection_info()
            except ApiUnavailable as err:  # no credentials: kopf stops, the supervisor retries
                log.warning("operator: %s", err)
                return None

        @kopf.on.resume(*resource, registry=registry, when=ours)
        @kopf.on.create(*resource, registry=registry, when=ours)
        @kopf.on.update(*resource, registry=registry, when=ours)
        async def reconcile(body: kopf.Body, **_: Any) -> None:
            await self._reconcile(body)

        @kopf.on.event(*resource, registry=registry, when=ours)
        async def watched(type: str, **_: Any) -> None:
            if type == "DELETED":
                view = self.state.deleted()
                log.warning("PowerPolicy %s deleted from the cluster; %s", self.name, view.detail)

        return registry

    async def _reconcile(self, body: kopf.Body) -> None:
        obj = _plain(body)
        meta = obj.get("metadata") or {}
        if not self._conditions:  # keep lastTransitionTime across daemon restarts
            for row in (obj.get("status") or {}).get("conditions") or []:
                if isinstance(row, dict) and row.get("type"):
                    self._conditions[row["type"]] = row
        try:
            await asyncio.to_thread(self.state.accept, obj)
        except PolicyRejected:
            message = rejection(self.state.view)
            log.warning("PowerPolicy %s %s", self.name, message)
            key = (meta.get("uid"), meta.get("generation"))
            if key != self._warned:
                self._warned = key
                kopf.warn(body, reason="PolicyRejected", message=message)
        except OSError as err:
            self._poked.set()
            raise kopf.TemporaryError(f"the policy is in force but could not be cached: {err}", delay=30) from err
        self._poked.set()

    # -- the status -------------------------------------------------------------------------------

    async def _write_status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), timeout=self.options.status_interval_s)
            self._poked.clear()
            try:
                await self._write_status()
            except Exception:  # the writer must outlive any one failure
                log.exception("operator: writing the PowerPolicy status failed")

    async def _take_snapshot(self) -> Snapshot:
        host = self._host_loop
        if host is None:
            raise RuntimeError("the operator was not started from a loop")
        done: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(self.snapshot())
            except BaseException as err:
                done.set_exception(err)

        host.call_soon_threadsafe(take)
        return await asyncio.wrap_future(done)

    async def _write_status(self) -> None:
        view = self.state.view
        if view.cluster not in (ClusterObject.valid, ClusterObject.invalid):
            return  # nothing to write to (yet)
        snap = await self._take_snapshot()
        body = status_body(snap, self._conditions, datetime.now(UTC), str(self.state.store.policy_cache_path))
        try:
            await self.api.patch_status(self.name, body)
        except KubeNotFound:
            if self.state.view.cluster in (ClusterObject.valid, ClusterObject.invalid):
                view = self.state.deleted()
                log.warning("PowerPolicy %s is gone; %s", self.name, view.detail)
            return
        except ApiUnavailable as err:
            self.state.unavailable(str(err))
            return
        except KubeError as err:
            log.warning("operator: cannot write the status of PowerPolicy %s: %s", self.name, err)
            return
        self._conditions = {c["type"]: c for c in body["conditions"]}
        if self.state.view.operator is not OperatorLink.connected:  # the API is back: say so in the status at once
            self.state.connected()
            self._poked.set()
