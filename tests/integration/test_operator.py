"""The embedded operator and the policy in force, against the lab's emulated API with the real kopf.

The API is :mod:`hecate_lab.kubeapi` (kmock over real HTTP) with one k3s server node, so
taking the API away is what a power cut does: the node's k3s stops, every request
answers 503 and watches end; the objects survive. The CRD is created through the API
from ``crds/powerpolicy.yaml``. The daemon runs in-process (its real ``run``: HTTP
server, monitor, operator thread) with fast status/backoff intervals, except the
SIGTERM test, which runs ``hecate daemon`` as a process against a whole lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate import daemon as daemon_mod
from hecate.adapters import metrics, nut
from hecate.adapters.store import StateStore
from hecate.cli import render
from hecate.domain import policy_source
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot, from_variables
from hecate.operator import OperatorOptions
from hecate.operator.status import Snapshot as StatusSnapshot
from hecate.operator.status import rejection, status_body
from hecate.services import monitor as monitor_mod
from hecate.services import policy as policy_mod
from hecate.services import status as status_mod
from hecate_lab import nodes
from hecate_lab.kubeapi import api_url, kubectl, start_kubeapi, stop_kubeapi
from hecate_lab.nodestate import initial_state, write_state
from hecate_lab.procs import free_port, wait_for
from hecate_lab.testbed import Lab, LabSpec
from hecate_lab.ups import LabUps

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "powerpolicy.yaml").read_text())
POLICIES = "/apis/hecate.io/v1alpha1/powerpolicies"
FAST = OperatorOptions(status_interval_s=0.5, backoff_initial_s=0.2, backoff_max_s=1.0, stop_timeout_s=10)

integration = pytest.mark.integration


# -- the lab API ------------------------------------------------------------------------------------


@dataclass
class KubeLab:
    """The lab's emulated API with one k3s server: ``set_up(False)`` is the API going away."""

    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def node_dir(self) -> Path:
        return self.dir / "titan-s1"

    def start(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        write_state(self.node_dir, initial_state("server"))
        manifest = self.dir / "nodes.json"
        manifest.write_text(json.dumps({"nodes": [{"name": "titan-s1", "role": "server", "dir": str(self.node_dir)}],
                                        "flux": False, "delays": {"api": 0.2, "node": 0.1, "pod": 0.1}}))
        self.proc = start_kubeapi(manifest, self.kubeconfig, self.dir / "kubeapi.log", timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            stop_kubeapi(self.proc)
            self.proc = None

    def set_up(self, up: bool) -> None:
        write_state(self.node_dir, initial_state("server") if up else
                    {"power": "on", "services": {"k3s": "inactive"}})

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(api_url(self.kubeconfig) + path, data=data, method=method,  # noqa: S310 - http
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as rsp:  # noqa: S310 - the lab API, http://127.0.0.1
                raw = rsp.read()
                return rsp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        code, data = self.request(method, path, body, content_type)
        assert code < 300, f"{method} {path}: {code} {data}"
        return data

    def install_crd(self) -> None:
        self.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)

    def create_policy(self, spec: dict[str, Any], name: str = "titan") -> dict[str, Any]:
        body = {"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy", "metadata": {"name": name}, "spec": spec}
        return dict(self.ok("POST", POLICIES, body))

    def patch_spec(self, spec: dict[str, Any], name: str = "titan") -> dict[str, Any]:
        return dict(self.ok("PATCH", f"{POLICIES}/{name}", {"spec": spec}, "application/merge-patch+json"))

    def policy(self, name: str = "titan") -> dict[str, Any] | None:
        code, data = self.request("GET", f"{POLICIES}/{name}")
        return data if code == 200 else None

    def events(self) -> list[dict[str, Any]]:
        code, data = self.request("GET", "/api/v1/namespaces/default/events")
        return list(data.get("items") or []) if code == 200 and isinstance(data, dict) else []


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeLab]:
    lab = KubeLab(tmp_path / "kube")
    lab.dir.mkdir()
    lab.start()
    try:
        lab.install_crd()
        yield lab
    finally:
        lab.stop()


# -- the daemon, in-process --------------------------------------------------------------------------


class FakeReader:
    """UPS readings the test sets (no upsd): on mains, full, until told otherwise."""

    def __init__(self) -> None:
        self.variables = {"ups.status": "OL", "battery.runtime": "900", "battery.charge": "100"}

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, dict(self.variables), time.monotonic())


def make_config(tmp_path: Path, kubeconfig: Path, *, ups: LabUps | None = None, **extra: Any) -> HecateConfig:
    data: dict[str, Any] = {
        "host_name": "titan-db",
        "state_dir": str(tmp_path / "state"),
        "cluster": {"kubeconfig": str(kubeconfig), "api_timeout_s": 2},
        "ups": [{"name": "pyrphoros", "host": ups.host if ups else "127.0.0.1", "port": ups.port if ups else 1},
                {"name": "statera", "host": "127.0.0.1", "port": 1, "protects_cluster": False}],
        "trigger": {"poll_interval_s": 0.2, "poll_interval_on_battery_s": 0.2, "debounce_polls": 1},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(tmp_path / "hecate.sock")},
        "policy": {"name": "titan"},
    }
    data.update(extra)
    return HecateConfig.model_validate(data)


@dataclass
class Running:
    config: HecateConfig
    task: asyncio.Task[None]

    async def status(self) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            url = self.config.metrics.local_url("/v1/status")
            with urllib.request.urlopen(url, timeout=2) as rsp:  # noqa: S310 - http://127.0.0.1
                doc: dict[str, Any] = json.loads(rsp.read())
                return doc
        if self.task.done():
            self.task.result()  # the daemon died: say why
        return await asyncio.to_thread(get)

    async def metrics(self) -> str:
        def get() -> str:
            with urllib.request.urlopen(self.config.metrics.local_url("/metrics"), timeout=2) as rsp:  # noqa: S310
                return str(rsp.read().decode())
        return await asyncio.to_thread(get)


@contextlib.asynccontextmanager
async def running(config: HecateConfig, reader: Any = None) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    task = asyncio.create_task(daemon_mod.run(config, stop, reader, operator_options=FAST))
    daemon = Running(config, task)
    try:
        await until(lambda: _ready(daemon), 20, "the daemon to serve")
        yield daemon
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _ready(daemon: Running) -> bool:
    try:
        return bool((await daemon.status())["polls"])
    except OSError:
        return False


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for row in ((obj or {}).get("status") or {}).get("conditions") or []:
        if row["type"] == type_:
            return dict(row)
    return {}


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's generic rules (cli-utils ``checkGenericProperties``), what Flux health checks compute for a custom
    resource: a generation not yet observed is in progress, ``Reconciling=True`` too, ``Stalled=True`` failed."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed is not None and observed != obj["metadata"].get("generation"):
        return "InProgress"
    for row in (obj.get("status") or {}).get("conditions") or []:
        if row["type"] == "Reconciling" and row["status"] == "True":
            return "InProgress"
        if row["type"] == "Stalled" and row["status"] == "True":
            return "Failed"
    return "Current"


def cache_of(config: HecateConfig) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((config.state_dir / "policy-cache.yaml").read_text())
    return data


# -- create, update, invalid, delete --------------------------------------------------------------------


@integration
@pytest.mark.timeout(60)
async def test_create_update_invalid_delete(tmp_path: Path, kube: KubeLab) -> None:
    config = make_config(tmp_path, kube.kubeconfig)
    async with running(config, FakeReader()) as daemon:
        doc = await daemon.status()
        assert doc["policy"]["source"] == "host"  # nothing cached yet, no object yet
        assert doc["budget"]["threshold_s"] == pytest.approx(330)

        # create -> Ready, cached, in force
        await asyncio.to_thread(kube.create_policy, {"trigger": {"safety_factor": 2.0}, "ups": ["pyrphoros"]})

        async def accepted(generation: int) -> dict[str, Any] | None:
            obj = await asyncio.to_thread(kube.policy)
            ok = (condition(obj, "Ready").get("status") == "True"
                  and (obj or {}).get("status", {}).get("observedGeneration") == generation)
            return obj if ok else None

        obj = await until(lambda: accepted(1), 15, "Ready=True for generation 1")
        assert kstatus(obj) == "Current"
        cached = cache_of(config)
        assert cached["spec"] == obj["spec"]
        assert cached["metadata"]["name"] == "titan"
        assert cached["metadata"]["uid"] == obj["metadata"]["uid"]
        assert cached["metadata"]["generation"] == 1
        assert int(cached["metadata"]["resourceVersion"]) <= int(obj["metadata"]["resourceVersion"])
        assert (config.state_dir / "policy-cache.yaml").stat().st_mode & 0o777 == 0o600
        status = obj["status"]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True", "Stalled": "False", "Cached": "True", "Armed": "False", "ShutdownInProgress": "False"}
        assert status["phase"] == "Active"
        assert status["source"] == "cluster"
        assert status["thresholdSeconds"] == pytest.approx(600)
        assert status["budgetSource"] == "default"
        assert status["ups"]["name"] == "pyrphoros"
        assert status["ups"]["state"] == "on_mains"
        assert [m["name"] for m in status["ups"]["members"]] == ["pyrphoros", "statera"]
        # kopf's bookkeeping lives under Hecate's prefix only
        annotations = obj["metadata"].get("annotations") or {}
        assert annotations
        assert all(k.startswith("hecate.io/") for k in annotations), annotations
        # the real kubectl: Hecate's columns with their values; Ready is met
        got = await asyncio.to_thread(kubectl, kube.kubeconfig, "get", "pp", "titan", "--no-headers")
        cells = got.stdout.split()
        assert cells[:6] == ["titan", "Active", "on_mains", "900", "600", "300"], got  # runtime, threshold, budget
        assert len(cells) == 7, got  # no run yet: blank last run and dry run, then the age
        done = await asyncio.to_thread(kubectl, kube.kubeconfig, "wait", "--for=condition=Ready", "pp/titan",
                                       "--timeout=10s")
        assert done.returncode == 0, done.stderr
        doc = await until(daemon.status, 5, "status")
        assert doc["policy"]["source"] == "cluster"
        assert doc["policy"]["generation"] == 1
        assert doc["budget"]["threshold_s"] == pytest.approx(600)  # the monitor decides with it
        assert doc["policy"]["age_s"] is not None

        # update -> cache follows, observedGeneration follows
        assert kstatus(await asyncio.to_thread(kube.patch_spec, {"trigger": {"safety_factor": 3.0}})) == "InProgress"
        obj = await until(lambda: accepted(2), 15, "Ready=True for generation 2")
        assert cache_of(config)["metadata"]["generation"] == 2
        assert cache_of(config)["spec"]["trigger"]["safety_factor"] == 3.0
        assert obj["status"]["thresholdSeconds"] == pytest.approx(900)
        assert all(c["observedGeneration"] == 2 for c in obj["status"]["conditions"])

        # invalid -> Ready=False naming the field, cache unchanged, still monitoring
        before = (config.state_dir / "policy-cache.yaml").read_bytes()
        await asyncio.to_thread(kube.patch_spec, {"ups": ["ghost"]})

        async def rejected() -> dict[str, Any] | None:
            obj = await asyncio.to_thread(kube.policy)
            return obj if condition(obj, "Ready").get("status") == "False" else None

        obj = await until(rejected, 15, "Ready=False")
        message = condition(obj, "Ready")["message"]
        assert "spec.ups" in message
        assert "ghost" in message
        assert message.endswith("; generation 2 stays in force from Hecate's cache")
        assert condition(obj, "Stalled")["status"] == "True"
        assert kstatus(obj) == "Failed"
        assert condition(obj, "Stalled")["message"] == message
        done = await asyncio.to_thread(kubectl, kube.kubeconfig, "wait", "--for=condition=Ready", "pp/titan",
                                       "--timeout=500ms")
        assert done.returncode != 0, done
        assert "timed out" in done.stderr, done
        assert obj["status"]["phase"] == "Invalid"
        assert obj["status"]["observedGeneration"] == 3
        assert obj["status"]["source"] == "cache"
        assert condition(obj, "Cached")["reason"] == "PreviousGenerationCached"
        assert (config.state_dir / "policy-cache.yaml").read_bytes() == before
        polls = (await daemon.status())["polls"]
        doc = await until(lambda: _polled_since(daemon, polls), 5, "more polls")
        assert doc["policy"]["source"] == "cache"
        assert "rejected" in doc["policy"]["detail"]
        assert "cache in force" in doc["policy"]["detail"]
        assert doc["budget"]["threshold_s"] == pytest.approx(900)  # the last valid policy still decides
        events = await asyncio.to_thread(kube.events)
        assert [e["reason"] for e in events if e.get("involvedObject", {}).get("name") == "titan"] == \
            ["PolicyRejected"]

        # delete -> the cache stays in force: the host is not disarmed
        await asyncio.to_thread(kube.ok, "DELETE", f"{POLICIES}/titan")
        doc = await until(lambda: _detail(daemon, "cluster object deleted; cache in force"), 10, "deletion seen")
        assert doc["policy"]["source"] == "cache"
        assert doc["policy"]["generation"] == 2
        assert doc["budget"]["threshold_s"] == pytest.approx(900)
        text = await daemon.metrics()
        assert 'hecate_policy_source{source="cache"} 1.0' in text
        assert "hecate_policy_age_seconds" in text
        assert "Policy:    cache — PowerPolicy titan generation 2" in render.status_text(doc)


async def _polled_since(daemon: Running, polls: int) -> dict[str, Any] | None:
    doc = await daemon.status()
    return doc if doc["polls"] > polls else None


async def _detail(daemon: Running, text: str) -> dict[str, Any] | None:
    doc = await daemon.status()
    return doc if text in doc["policy"]["detail"] else None


# -- the host's envelope: a policy outside it is rejected; a good one takes effect at the next poll ------------


async def _accepted(kube: KubeLab, generation: int) -> dict[str, Any] | None:
    obj = await asyncio.to_thread(kube.policy)
    ok = (condition(obj, "Ready").get("status") == "True"
          and (obj or {}).get("status", {}).get("observedGeneration") == generation)
    return obj if ok else None


async def _rejected(kube: KubeLab, generation: int) -> dict[str, Any] | None:
    obj = await asyncio.to_thread(kube.policy)
    ok = (condition(obj, "Ready").get("status") == "False"
          and (obj or {}).get("status", {}).get("observedGeneration") == generation)
    return obj if ok else None


@integration
@pytest.mark.timeout(60)
async def test_a_policy_outside_the_envelope_is_rejected_naming_the_field_and_the_limit(tmp_path: Path,
                                                                                      kube: KubeLab) -> None:
    config = make_config(tmp_path, kube.kubeconfig)
    async with running(config, FakeReader()) as daemon:
        await asyncio.to_thread(kube.create_policy, {"trigger": {"safety_factor": 2.0, "poll_interval_s": 4}})
        await until(lambda: _accepted(kube, 1), 15, "Ready=True for generation 1")
        cached = (config.state_dir / "policy-cache.yaml").read_bytes()

        # the API server takes it (the CRD allows a day), the host's envelope does not
        await asyncio.to_thread(kube.patch_spec, {"trigger": {"poll_interval_s": 86400}})
        obj = await until(lambda: _rejected(kube, 2), 15, "Ready=False for generation 2")
        why = "spec.trigger.poll_interval_s: 86400 is above the host's limit 5 (policy.envelope.max_poll_interval_s)"
        assert condition(obj, "Ready")["message"] == \
            f"generation 2 rejected: {why}; generation 1 stays in force from Hecate's cache"
        assert obj["status"]["phase"] == "Invalid"
        assert obj["status"]["source"] == "cache"
        events = [e for e in await asyncio.to_thread(kube.events)
                  if e.get("involvedObject", {}).get("name") == "titan"]
        assert [e["reason"] for e in events] == ["PolicyRejected"]
        assert events[0]["message"] == f"generation 2 rejected: {why}; generation 1 stays in force from Hecate's cache"

        # the previous policy stays in force and cached
        assert (config.state_dir / "policy-cache.yaml").read_bytes() == cached
        doc = await daemon.status()
        assert doc["policy"]["source"] == "cache"
        assert doc["policy"]["generation"] == 1
        assert doc["policy"]["rejected"] == why
        assert doc["budget"]["threshold_s"] == pytest.approx(600)  # generation 1's safety factor 2.0


@integration
@pytest.mark.timeout(60)
async def test_a_good_policy_after_a_long_poll_takes_effect_at_the_next_poll(
        tmp_path: Path, kube: KubeLab, ups: LabUps, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: a policy with a long poll (5 s, the envelope's longest) followed by a good one (1 s): the
    monitor polls at the new interval within one old short interval, not after the rest of the long one."""
    reads: list[float] = []
    polled = asyncio.Event()
    applied: list[float] = []

    class Timed(nut.NutReader):
        async def read(self, ups: Ups, timeout: float | None = None) -> Snapshot:
            if ups.name == "pyrphoros":
                reads.append(time.monotonic())
                polled.set()
            return await super().read(ups, timeout)

    original_apply = monitor_mod.Monitor.apply

    def timed_apply(self: monitor_mod.Monitor, config: HecateConfig) -> None:
        applied.append(time.monotonic())
        original_apply(self, config)

    monkeypatch.setattr(monitor_mod.Monitor, "apply", timed_apply)
    short = {"poll_interval_s": 1.0, "poll_interval_on_battery_s": 1.0, "debounce_polls": 2}
    config = make_config(tmp_path, kube.kubeconfig, ups=ups, trigger=short)

    async def read_after(moment: float, count: int = 1) -> list[float]:
        """The first ``count`` polls after ``moment`` (waiting for them)."""
        while len(later := [t for t in reads if t > moment]) < count:
            polled.clear()
            await asyncio.wait_for(polled.wait(), 10)
        return later[:count]

    async with running(config, Timed()) as daemon:
        await asyncio.to_thread(kube.create_policy, {"trigger": {"poll_interval_s": 5}})
        await until(lambda: _accepted(kube, 1), 15, "the long poll accepted")
        assert (await daemon.status())["policy"]["generation"] == 1
        _, after_long = await read_after(applied[-1], 2)  # the first may still be on the old schedule
        gap = after_long - reads[reads.index(after_long) - 1]
        assert gap >= 4.5, f"the long poll was not in force: {gap:.2f} s between polls"

        # right after a poll: the monitor now sleeps ~5 s; the good policy must not wait for that
        await asyncio.to_thread(kube.patch_spec, {"trigger": {"poll_interval_s": 1}})
        await until(lambda: _accepted(kube, 2), 15, "the good poll accepted")
        good_applied = applied[-1]
        assert after_long < good_applied < after_long + 4, "the operator took too long to test the wake"
        first, *following = await read_after(good_applied, 3)
        assert first - good_applied <= 1.3, f"first poll {first - good_applied:.2f} s after the policy took effect"
        gaps = [b - a for a, b in zip([first, *following], following, strict=False)]
        assert all(0.8 <= g <= 1.5 for g in gaps), f"polls at {gaps} s, not the new 1 s"


# -- no API at start; the API going away --------------------------------------------------------------


@integration
@pytest.mark.timeout(60)
async def test_api_unreachable_at_start_decides_from_cache_then_connects(tmp_path: Path, ups: LabUps) -> None:
    kube = KubeLab(tmp_path / "kube")
    kube.dir.mkdir()
    config = make_config(tmp_path, kube.kubeconfig, ups=ups)  # the kubeconfig does not exist yet
    store = StateStore(config.state_dir)
    cached = policy_source.CachedPolicy(name="titan", uid="u-1", resource_version="7", generation=4,
                                     spec={"trigger": {"safety_factor": 2.0}}, cached_at=datetime.now(UTC))
    store.write_policy_cache(cached)
    try:
        async with running(config) as daemon:
            doc = await until(lambda: _operator(daemon, "unavailable"), 10, "the operator to find no API")
            assert doc["policy"]["source"] == "cache"
            assert "does not exist" in doc["policy"]["operator_detail"]  # cluster.kubeconfig, nothing else
            assert doc["policy"]["generation"] == 4
            assert doc["budget"]["threshold_s"] == pytest.approx(600)  # 2.0 x 300, not hecate.yaml's 1.1

            # 500 s of runtime: above hecate.yaml's threshold (330), below the cached policy's (600)
            await asyncio.to_thread(ups.set, ups_status="OB DISCHRG", battery_runtime=500, battery_charge=70)
            doc = await until(lambda: _decided(daemon), 15, "a decision from the cached policy")
            decision = doc["trigger"]["decision"]
            assert decision["ups"] == "pyrphoros"
            assert decision["threshold_s"] == pytest.approx(600)

            # the API appears: the operator connects and the cluster's policy takes over
            await asyncio.to_thread(kube.start)
            await asyncio.to_thread(kube.install_crd)
            await asyncio.to_thread(kube.create_policy, {"trigger": {"safety_factor": 2.5}})
            doc = await until(lambda: _source(daemon, "cluster"), 20, "the operator to connect")
            assert doc["budget"]["threshold_s"] == pytest.approx(750)
            obj = await asyncio.to_thread(kube.policy)
            assert condition(obj, "Ready")["status"] == "True"
            assert cache_of(config)["metadata"]["generation"] == 1
        runs = store.load_runs()
        assert [(r.dry_run, r.trigger["threshold_s"]) for r in runs] == [(True, pytest.approx(600))]
    finally:
        kube.stop()


async def _decided(daemon: Running) -> dict[str, Any] | None:
    doc = await daemon.status()
    return doc if doc["trigger"]["shutdown_triggered"] else None


async def _operator(daemon: Running, state: str) -> dict[str, Any] | None:
    doc = await daemon.status()
    return doc if doc["policy"]["operator"] == state else None


async def _source(daemon: Running, source: str) -> dict[str, Any] | None:
    doc = await daemon.status()
    return doc if doc["policy"]["source"] == source else None


@integration
@pytest.mark.timeout(60)
async def test_api_lost_mid_run_keeps_the_cache_and_status_resumes(tmp_path: Path, kube: KubeLab) -> None:
    kube.create_policy({"trigger": {"safety_factor": 2.0}})
    config = make_config(tmp_path, kube.kubeconfig)
    reader = FakeReader()
    async with running(config, reader) as daemon:
        await until(lambda: _source(daemon, "cluster"), 15, "the cluster's policy")

        await asyncio.to_thread(kube.set_up, False)  # k3s stops: 503 everywhere, watches end
        doc = await until(lambda: _source(daemon, "cache"), 15, "the cache to take over")
        assert doc["policy"]["operator"] == "unavailable"
        assert doc["budget"]["threshold_s"] == pytest.approx(600)
        reader.variables = {"ups.status": "OL CHRG", "battery.runtime": "777", "battery.charge": "90"}
        polls = doc["polls"]
        await until(lambda: _polled_since(daemon, polls + 3), 5, "polls while the API is down")
        code, _ = await asyncio.to_thread(kube.request, "GET", f"{POLICIES}/titan")
        assert code == 503

        await asyncio.to_thread(kube.set_up, True)
        await until(lambda: _source(daemon, "cluster"), 20, "the cluster's policy again")

        async def resumed() -> dict[str, Any] | None:
            obj = await asyncio.to_thread(kube.policy)
            ups = ((obj or {}).get("status") or {}).get("ups") or {}
            fresh = ups.get("runtimeSeconds") == 777 and obj["status"]["source"] == "cluster"  # type: ignore[index]
            return obj if fresh else None

        obj = await until(resumed, 15, "the status written again")
        assert obj["status"]["source"] == "cluster"
        assert condition(obj, "Ready")["status"] == "True"


# -- SIGTERM during an executing shutdown, with the operator running ---------------------------------


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[Lab]:
    running_lab = Lab.up(tmp_path / "lab", LabSpec(servers=0, agents=1))  # no servers: the API stays up
    try:
        yield running_lab
    finally:
        running_lab.down()




@integration
@pytest.mark.timeout(90)
def test_sigterm_during_a_shutdown_with_the_operator_running_does_not_cut_it_short(small_lab: Lab) -> None:
    lab = small_lab
    kube = KubeLab(lab.kubeconfig.parent)
    kube.install_crd()
    kube.create_policy({"trigger": {"safety_factor": 1.5}})
    data = lab.hecate_config()
    data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 10})
    data["cluster"]["api_timeout_s"] = 2
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1})
    data["trigger"] = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.5}
    data["policy"] = {"name": "titan"}
    config = lab.dir / "hecate-operator.yaml"
    config.write_text(yaml.safe_dump(data))
    for node in lab.nodes:  # a slow shutdown: every emulated command takes 1 s
        nodes.set_fault(node.dir, "*", delay_s=1)
    proc = subprocess.Popen([sys.executable, "-m", "hecate", "daemon", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: condition(kube.policy(), "Armed").get("status") == "True", 30, "the policy armed")
        assert condition(kube.policy(), "Ready")["status"] == "True"
        lab.ups["pyrphoros"].set(ups_status="OB LB DISCHRG", battery_runtime=60)
        wait_for(lambda: condition(kube.policy(), "ShutdownInProgress").get("status") == "True", 20,
                 "ShutdownInProgress=True")
        assert kube.policy()["status"]["phase"] == "ShuttingDown"  # type: ignore[index]
        os.killpg(proc.pid, signal.SIGTERM)  # while the shutdown runs
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, output
    assert "stop requested during a shutdown: finishing the shutdown first" in output
    assert all(nodes.read_state(n.dir)["power"] == "off" for n in lab.nodes)
    assert (lab.dir / "coordinator-poweroff").exists()
    runs = [r for r in json.loads((lab.state_dir / "runs.json").read_text()) if not r["dry_run"]]
    assert [r["result"] for r in runs] == ["success"]
    assert runs[0]["trigger"]["threshold_s"] == pytest.approx(450)  # 1.5 x 300: the cluster's policy
    final = kube.policy()
    assert final is not None
    assert condition(final, "ShutdownInProgress")["status"] == "False"  # the operator outlived the shutdown
    assert final["status"]["lastRun"]["result"] == "success"
    assert final["status"]["lastRun"]["dryRun"] is False


# -- the parts, without processes ----------------------------------------------------------------------


def _spec_doc(spec: dict[str, Any], generation: int = 1, uid: str = "u-1") -> dict[str, Any]:
    return {"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy",
            "metadata": {"name": "titan", "uid": uid, "generation": generation, "resourceVersion": str(generation)},
            "spec": spec}


def _baseline(tmp_path: Path, **extra: Any) -> HecateConfig:
    return make_config(tmp_path, tmp_path / "no-kubeconfig", **extra)


@pytest.mark.parametrize("content", ["{ not: yaml", "- a list\n", "apiVersion: hecate.io/v1alpha1\nkind: Nope\n",
                                     "apiVersion: hecate.io/v1alpha1\nkind: PowerPolicy\nmetadata: {name: titan}\n"
                                     "cachedAt: 2026-01-01T00:00:00Z\nspec: {trigger: {safety_factor: 99}}\n"])
def test_a_corrupt_cache_is_moved_aside_and_hecate_yaml_is_in_force(tmp_path: Path, content: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    config = _baseline(tmp_path)
    store = StateStore(config.state_dir)
    store.policy_cache_path.write_text(content)
    view = policy_mod.PolicyInForce(config, store).load()
    assert view.source is policy_source.Source.host
    assert view.config == config
    assert not store.policy_cache_path.exists()
    [aside] = list(config.state_dir.glob("policy-cache.yaml.corrupt-*"))
    assert aside.read_text() == content
    assert any("is corrupt" in w and "hecate.yaml's policy is in force" in w for w in store.warnings)
    assert "is corrupt" in caplog.text


def test_a_cache_that_no_longer_fits_hecate_yaml_is_kept_but_not_used(tmp_path: Path) -> None:
    config = _baseline(tmp_path)
    store = StateStore(config.state_dir)
    store.write_policy_cache(policy_source.CachedPolicy.from_object(_spec_doc({"ups": ["ghost"]}), datetime.now(UTC)))
    view = policy_mod.PolicyInForce(config, store).load()
    assert view.source is policy_source.Source.host
    assert store.policy_cache_path.exists()
    assert any("does not fit hecate.yaml" in w and "spec.ups" in w for w in store.warnings)


def test_precedence_cluster_over_cache_over_hecate_yaml(tmp_path: Path) -> None:
    config = _baseline(tmp_path)
    store = StateStore(config.state_dir)
    changes: list[HecateConfig] = []
    state = policy_mod.PolicyInForce(config, store, on_change=changes.append)
    assert state.load().source is policy_source.Source.host
    state.connected()
    view = state.accept(_spec_doc({"trigger": {"safety_factor": 2.0}}))
    assert (view.source, view.config.trigger.safety_factor) == (policy_source.Source.cluster, 2.0)
    assert changes[-1].trigger.safety_factor == 2.0
    first_cached_at = view.policy.cached_at if view.policy else None
    assert state.accept(_spec_doc({"trigger": {"safety_factor": 2.0}})).policy.cached_at == first_cached_at  # type: ignore[union-attr]
    with pytest.raises(policy_mod.PolicyRejected, match=r"spec\.trigger\.safety_factor"):
        state.accept(_spec_doc({"trigger": {"safety_factor": 11}}, generation=2))
    view = state.view
    assert (view.source, view.config.trigger.safety_factor) == (policy_source.Source.cache, 2.0)
    assert view.detail.startswith("cluster object generation 2 rejected (spec.trigger.safety_factor = 11")
    state.unavailable("connection refused")
    state.accept(_spec_doc({"trigger": {"safety_factor": 2.5}}, generation=3))
    assert state.view.source is policy_source.Source.cache  # valid, but the API is gone: the cache (now gen 3)
    assert state.view.config.trigger.safety_factor == 2.5
    state.connected()
    assert state.view.source is policy_source.Source.cluster
    assert state.deleted().detail == "cluster object deleted; cache in force"
    assert state.view.config.trigger.safety_factor == 2.5
    # a restarted daemon starts from that cache
    again = policy_mod.PolicyInForce(config, store).load()
    assert (again.source, again.config.trigger.safety_factor, again.policy.generation) == (  # type: ignore[union-attr]
        policy_source.Source.cache, 2.5, 3)
    assert again.detail == "not connected to the cluster yet; cache in force"
    # no policy.name: hecate.yaml alone, the cache is not read
    plain = _baseline(tmp_path, policy={})
    assert policy_mod.PolicyInForce(plain, store).load().source is policy_source.Source.host


async def test_daemon_apply_puts_a_policy_in_force_for_the_next_poll(tmp_path: Path) -> None:
    """Daemon.apply is the one way a policy reaches the monitor (and the next shutdown's plan)."""
    config = make_config(tmp_path, tmp_path / "no-kubeconfig", policy={})
    reader = FakeReader()
    daemon = daemon_mod.Daemon(config, reader)
    reader.variables = {"ups.status": "OB DISCHRG", "battery.runtime": "500", "battery.charge": "60"}
    outcome = await daemon.monitor.poll_once()
    assert outcome.shutdown is None  # 500 s > 330 s
    effective = config.model_copy(update={"trigger": config.trigger.model_copy(update={"safety_factor": 2.0})})
    daemon.apply(effective)
    assert daemon.config is effective
    assert daemon.monitor.config is effective
    assert daemon.monitor.budget.threshold_s == pytest.approx(600)
    outcome = await daemon.monitor.poll_once()
    assert outcome.shutdown is not None
    assert outcome.shutdown.threshold_s == pytest.approx(600)
    doc = status_mod.document(daemon.monitor, "daemon", daemon.policy.view)
    assert doc["policy"]["source"] == "host"
    assert 'hecate_policy_source{source="host"} 1.0' in metrics.render(metrics.registry_for(lambda: doc)).decode()


async def test_a_policy_arriving_during_a_shutdown_waits_for_its_end(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A new policy must not change what a running shutdown sees (e.g. which UPSes say mains is back)."""
    config = make_config(tmp_path, tmp_path / "no-kubeconfig", policy={})
    daemon = daemon_mod.Daemon(config, FakeReader())
    await daemon.monitor.poll_once()
    release = asyncio.Event()
    seen: list[HecateConfig] = []

    async def fake_run(cfg: HecateConfig, *_: Any, **__: Any) -> Any:
        seen.append(cfg)
        await release.wait()
        return types.SimpleNamespace(id="r", result="success")

    monkeypatch.setattr(daemon_mod.shutdown, "run", fake_run)
    daemon.start_shutdown({"source": "test"})
    await asyncio.sleep(0.1)
    newer = config.model_copy(update={"trigger": config.trigger.model_copy(update={"safety_factor": 2.0})})
    monkeypatch.setattr(type(daemon.policy), "config", property(lambda _self: newer))
    daemon.apply(newer)
    assert daemon.monitor.config is config  # deferred: the shutdown is running
    release.set()
    assert daemon.shutdown_task is not None
    await daemon.shutdown_task
    assert daemon.monitor.config is newer  # applied as the shutdown ended
    assert seen == [config]


def test_conditions_keep_their_transition_time_and_the_status_fits_the_crd(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    config = _baseline(tmp_path)
    state = policy_mod.PolicyInForce(config, StateStore(config.state_dir))
    state.connected()
    state.accept(_spec_doc({"trigger": {"safety_factor": 2.0}}))
    doc = {"ups": [{"name": "pyrphoros", "protects_cluster": True, "phase": "on_battery", "reachable": True,
                    "stale": False, "on_battery": True, "runtime_s": 500.0, "charge_pct": 60.0},
                   {"name": "statera", "protects_cluster": False, "phase": "critical", "reachable": True,
                    "stale": False, "on_battery": True, "runtime_s": 10.0, "charge_pct": 5.0}],
           "budget": {"seconds": 300.0, "source": "default", "threshold_s": 600.0},
           "runs": {"recent": [{"id": "r1", "kind": "shutdown", "dry_run": True, "result": "success",
                                "started_at": "2026-11-27T03:50:00.123456+00:00", "duration_s": 0.0}]}}
    t1, t2 = datetime(2026, 11, 27, 4, tzinfo=UTC), datetime(2026, 11, 27, 5, tzinfo=UTC)
    snap = StatusSnapshot(document=doc, shutting_down=False, starting_up=False, policy=state.view)
    first = status_body(snap, {}, t1, "/var/lib/hecate/policy-cache.yaml")
    previous = {c["type"]: c for c in first["conditions"]}
    busy = StatusSnapshot(document=doc, shutting_down=True, starting_up=False, policy=state.view)
    second = status_body(busy, previous, t2, "/var/lib/hecate/policy-cache.yaml")
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Ready"] == "2026-11-27T04:00:00Z"  # unchanged status: unchanged time
    assert times["ShutdownInProgress"] == "2026-11-27T05:00:00Z"
    assert second["phase"] == "ShuttingDown"
    assert second["ups"]["name"] == "pyrphoros"  # the summary is about the protecting UPSes
    assert second["ups"]["onBattery"] is True
    assert second["lastRun"]["startedAt"] == "2026-11-27T03:50:00Z"
    assert second["lastRun"]["dryRun"] is True
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    clean = {k: v for k, v in second.items() if v is not None}
    jsonschema.validate(clean, _openapi_to_jsonschema(schema))


def test_a_rejected_generation_is_not_ready_and_stalled_saying_once_what_stays_in_force(tmp_path: Path) -> None:
    config = _baseline(tmp_path)
    state = policy_mod.PolicyInForce(config, StateStore(config.state_dir))
    state.connected()
    doc: dict[str, Any] = {"ups": [], "budget": {}, "runs": {"recent": []}}
    with pytest.raises(policy_mod.PolicyRejected):
        state.accept(_spec_doc({"ups": ["ghost"]}))
    snap = StatusSnapshot(document=doc, shutting_down=False, starting_up=False, policy=state.view)
    rows = {c["type"]: c for c in status_body(snap, {}, datetime(2026, 11, 27, tzinfo=UTC), "cache")["conditions"]}
    assert (rows["Ready"]["status"], rows["Ready"]["reason"]) == ("False", "Invalid")
    assert (rows["Stalled"]["status"], rows["Stalled"]["reason"]) == ("True", "Invalid")
    message = rows["Ready"]["message"]
    assert message.startswith("generation 1 rejected: spec.ups")
    assert message.endswith("; hecate.yaml's policy stays in force")
    assert message.count("rejected") == 1, message
    assert message.count("ghost") == 1, message
    assert all(c["observedGeneration"] == 1 for c in rows.values())

    state.accept(_spec_doc({"trigger": {"safety_factor": 2.0}}, generation=2))
    with pytest.raises(policy_mod.PolicyRejected):
        state.accept(_spec_doc({"ups": ["ghost"]}, generation=3))
    assert rejection(state.view).endswith("; generation 2 stays in force from Hecate's cache")


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI's ``nullable`` as JSON Schema (the rest is the same vocabulary)."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node
