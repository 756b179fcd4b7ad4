"""The coordinator's trigger listener (``peer.listen``, ``POST /v1/trigger``) in a real ``hecate daemon`` on a
real lab upsd: every refusal with its status and nothing decided, an accepted trigger latched and recorded
(dry-run, and executed on the lab nodes), replays refused across a restart, and a burst of bad requests
that does not delay the UPS polls."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate import daemon as daemon_mod
from hecate.adapters import nut
from hecate.domain import peer
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot
from hecate_lab import nodes
from hecate_lab.procs import free_port, start_daemon, stop_daemon, wait_for
from hecate_lab.testbed import Lab, LabSpec
from hecate_lab.ups import start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = b"tethys-secret-0123456789abcdef0123"
WRONG = b"not-the-secret-0123456789abcdef012"
NAS_SECRET = b"nas-secret-0123456789abcdef0123456"


def write_secret(path: Path, secret: bytes) -> Path:
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


def peer_section(directory: Path, port: int) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{port}", "replay_window_s": 30, "trusted": [
        {"name": "tethys", "key_id": "tethys-1", "secret_file": str(write_secret(directory / "tethys.key", SECRET))},
        {"name": "nas", "key_id": "nas-1", "secret_file": str(write_secret(directory / "nas.key", NAS_SECRET))},
        {"name": "ghost", "key_id": "ghost-1", "secret_file": str(directory / "missing.key")},
    ]}


def body(peer_name: str = "tethys", **extra: Any) -> bytes:
    return json.dumps({"peer": peer_name, "reason": "low_battery", "detail": "Statera on battery, LB",
                       "decided_at": datetime.now(UTC).isoformat(),
                       "ups": [{"name": "statera", "status": "OB LB", "runtime_s": 42, "charge_pct": 9}],
                       **extra}).encode()


def signed(data: bytes, *, secret: bytes = SECRET, key_id: str = "tethys-1", skew_s: float = 0.0,
           nonce: str | None = None) -> dict[str, str]:
    return peer.sign(secret, key_id, data, now=time.time() + skew_s,
                     nonce=nonce or secrets.token_urlsafe(18)).headers()


def send(port: int, data: bytes = b"", headers: dict[str, str] | None = None, *, method: str = "POST",
         path: str = peer.PATH) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def status_doc(config: Path) -> dict[str, Any]:
    done = status(config, "--json")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def listening(port: int) -> bool:
    try:
        return send(port, method="GET", path="/")[0] == 404
    except OSError:
        return False


@dataclass
class Coordinator:
    dir: Path
    config: Path
    port: int
    proc: subprocess.Popen[str]

    def restart(self) -> str:
        out = stop_daemon(self.proc)
        self.proc = start_daemon(self.config)
        wait_for(lambda: listening(self.port), 20, "the restarted daemon's trigger listener")
        return out


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    directory = tmp_path_factory.mktemp("coordinator")
    ups = start_ups(directory, "pyrphoros")
    port = free_port()
    config = directory / "hecate.yaml"
    config.write_text(yaml.safe_dump({
        "host_name": "titan-db", "state_dir": str(directory / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(directory / "run" / "hecate.sock")},
        "peer": peer_section(directory, port),
    }))
    coord = Coordinator(directory, config, port, start_daemon(config))
    try:
        wait_for(lambda: listening(port), 20, "the trigger listener")
        yield coord
    finally:
        stop_daemon(coord.proc)
        ups.stop()


def req(data: bytes, **kw: Any) -> tuple[bytes, dict[str, str]]:
    return data, signed(data, **kw)


REFUSALS: list[tuple[str, Any, int, str]] = [
    ("no signature", lambda: (body(), {}), 401, "unsigned"),
    ("wrong secret", lambda: req(body(), secret=WRONG), 401, "bad_signature"),
    ("wrong key id", lambda: req(body(), key_id="tethys-9"), 401, "unknown_key"),
    ("key whose secret is missing", lambda: req(body("ghost"), key_id="ghost-1"), 401,
     "unknown_key"),
    ("timestamp too old", lambda: req(body(), skew_s=-120), 401, "stale"),
    ("timestamp in the future", lambda: req(body(), skew_s=120), 401, "stale"),
    ("oversized body", lambda: req(b" " * 5000), 413, "too_large"),
    ("malformed JSON", lambda: req(b"{not json"), 400, "malformed"),
    ("extra field", lambda: req(body(extra=1)), 400, "malformed"),
    ("another peer than the key's", lambda: req(body("nas")), 401, "wrong_peer"),
]


def test_every_refusal_answers_its_status_and_decides_nothing(coordinator: Coordinator) -> None:
    port = coordinator.port
    for what, make, code, reason in REFUSALS:
        data, headers = make()
        assert send(port, data, headers) == (code, {"accepted": False, "reason": reason}), what
    data = body()
    assert send(port, data, signed(data), method="GET")[0] == 405
    assert send(port, data, signed(data), method="PUT")[0] == 405
    assert send(port, data, signed(data), path="/v1/status")[0] == 404
    assert send(port, method="GET", path="/metrics")[0] == 404  # only the trigger is served here

    doc = status_doc(coordinator.config)
    assert doc["trigger"]["shutdown_triggered"] is False
    assert doc["runs"]["count"] == 0
    requests = doc["peer_listener"]["requests"]
    assert requests["accepted"] == 0
    assert requests["unknown_key"] == 2
    assert requests["stale"] == 2
    assert requests["malformed"] == 2
    assert requests["not_found"] >= 2
    assert requests["bad_method"] == 2
    assert set(requests) == set(peer.RESULTS)
    assert any(a["kind"] == "peer_key" and "ghost-1" in a["message"] for a in doc["alerts"])
    keys = {k["key_id"]: k for k in doc["peer_listener"]["keys"]}
    assert keys["ghost-1"]["key_ok"] is False
    assert keys["tethys-1"]["key_ok"] is True
    assert doc["peer_listener"]["last_trigger"]["tethys"]["result"] == "wrong_peer"
    metrics = http.client.HTTPConnection(*doc["listeners"][0]["address"].split(":"), timeout=5)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    assert 'hecate_peer_requests_total{result="stale"} 2.0' in text
    assert [line for line in text.splitlines() if "hecate_http_listening{" in line and '"peer"' in line] == [
        f'hecate_http_listening{{address="127.0.0.1:{port}",listener="peer"}} 1.0']


def test_an_accepted_trigger_is_recorded_and_its_replay_refused_also_after_a_restart(
        coordinator: Coordinator) -> None:
    data = body()
    headers = signed(data)
    assert send(coordinator.port, data, headers) == (202, {"accepted": True, "run": "dry-run"})
    assert send(coordinator.port, data, headers) == (409, {"accepted": False, "reason": "replayed"})

    doc = status_doc(coordinator.config)
    [run] = [r for r in doc["runs"]["recent"] if r["trigger"].get("source") == "peer"]
    assert run["dry_run"] is True
    trig = run["trigger"]
    assert (trig["peer"], trig["key_id"], trig["reason"]) == ("tethys", "tethys-1", "low_battery")
    assert trig["ups"][0] == {"name": "statera", "status": "OB LB", "runtime_s": 42, "charge_pct": 9,
                              "load_pct": None}
    assert doc["peer_listener"]["last_trigger"]["tethys"]["result"] == "replayed"  # the last one it sent
    assert doc["peer_listener"]["requests"]["accepted"] == 1
    text = status(coordinator.config).stdout
    assert f"trigger listener 127.0.0.1:{coordinator.port} listening; 1 accepted" in text
    assert "tethys" in text
    assert "replayed" in text
    assert "(peer tethys: low_battery)" in text

    output = coordinator.restart()
    assert "trigger accepted" in output
    assert send(coordinator.port, data, headers) == (409, {"accepted": False, "reason": "replayed"})
    nonces = json.loads((coordinator.dir / "state" / "peer-nonces.json").read_text())["nonces"]
    assert headers[peer.HEADER_NONCE] in nonces


def test_the_burst_does_not_delay_the_polls(tmp_path: Path) -> None:
    """1,000 bad requests against the daemon's own asyncio objects (in-process, to see every poll's time)."""
    lab_ups = start_ups(tmp_path, "pyrphoros")
    port = free_port()
    interval = 0.2
    config = HecateConfig.model_validate({
        "host_name": "titan-db", "state_dir": str(tmp_path / "state"),
        "ups": [{"name": lab_ups.name, "host": lab_ups.host, "port": lab_ups.port}],
        "trigger": {"poll_interval_s": interval, "poll_interval_on_battery_s": 0.2},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(tmp_path / "run" / "hecate.sock")},
        "peer": peer_section(tmp_path, port),
    })
    polls: list[float] = []

    class Recording:
        def __init__(self) -> None:
            self.inner = nut.NutReader()

        async def read(self, ups: Ups, timeout: float) -> Snapshot:
            polls.append(time.monotonic())
            return await self.inner.read(ups, timeout)

    async def scenario() -> tuple[float, float, str]:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon_mod.run(config, stop, reader=Recording()))
        try:
            while not await asyncio.to_thread(listening, port):
                await asyncio.sleep(0.1)
            await asyncio.sleep(2 * interval)
            began = time.monotonic()
            burst = await asyncio.create_subprocess_exec(sys.executable, "-c", BURST, str(port), "1000",
                                                         stdout=asyncio.subprocess.PIPE)
            out, _ = await burst.communicate()
            ended = time.monotonic()
            await asyncio.sleep(2 * interval)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        return began, ended, out.decode()

    try:
        began, ended, out = asyncio.run(scenario())
    finally:
        lab_ups.stop()
    codes = json.loads(out)
    assert sum(codes.values()) == 1000
    assert set(codes) <= {"401", "413"}, codes
    during = [t for t in polls if began - interval <= t <= ended + interval]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    print(f"burst: 1000 requests in {ended - began:.2f} s; {len(gaps)} polls meanwhile, "
          f"max gap {max(gaps):.3f} s (interval {interval} s)")
    assert gaps  # at least one poll was due during the burst
    assert max(gaps) <= 2 * interval  # no poll later than one interval after it was due


BURST = f"""
import http.client, json, secrets, sys, threading, time
port, total = int(sys.argv[1]), int(sys.argv[2])
codes, lock = {{}}, threading.Lock()
def one(conn, i):
    body = b'{{"peer": "tethys"}}' if i % 5 else b"x" * 6000
    ts = f"{{time.time():.3f}}"
    headers = {{"X-Hecate-Key-Id": "tethys-1", "X-Hecate-Timestamp": ts,
               "X-Hecate-Nonce": secrets.token_urlsafe(18), "X-Hecate-Signature": "0" * 64}}
    conn.request("POST", "{peer.PATH}", body=body, headers=headers)
    resp = conn.getresponse(); resp.read()
    return resp.status
def worker(n, offset):
    conn = None
    for i in range(n):
        for _ in range(3):
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                status = one(conn, offset + i)
                break
            except (OSError, http.client.HTTPException):
                conn = None
        with lock:
            codes[str(status)] = codes.get(str(status), 0) + 1
threads = [threading.Thread(target=worker, args=(total // 8, k * 1000)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(codes))
"""


def test_an_accepted_trigger_runs_the_shutdown_on_the_lab_nodes_in_order(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", LabSpec(servers=1, agents=2))
    try:
        port = free_port()
        data = lab.hecate_config()
        data["ssh"].update({"connect_timeout_s": 2, "command_timeout_s": 10})
        data["cluster"]["api_timeout_s"] = 2
        data["shutdown"].update({"execute": True, "drain_timeout_s": 1})
        data["trigger"] = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.5}
        data["peer"] = peer_section(lab.dir, port)
        config = lab.dir / "hecate-peer.yaml"
        config.write_text(yaml.safe_dump(data))
        proc = start_daemon(config)
        try:
            wait_for(lambda: listening(port), 20, "the trigger listener")
            first = body()
            assert send(port, first, signed(first)) == (202, {"accepted": True, "run": "shutdown"})
            second = body()
            assert send(port, second, signed(second)) == (200, {"accepted": True, "already": "shutting down"})
            wait_for(lambda: (lab.dir / "coordinator-poweroff").exists(), 90, "the coordinator's power-off")
            # The run is recorded once before the power-off step (nothing reports after it on a real host) and
            # again when the step ends: wait for that second record, or stopping the daemon kills the step.
            wait_for(lambda: any(r["stages"] and r["stages"][-1]["name"] == "local-poweroff" for r in executed(lab)),
                     30, "the run record after the power-off step")
        finally:
            output = stop_daemon(proc)
        [record] = executed(lab)
        assert record["result"] == "success", output
        assert (record["trigger"]["source"], record["trigger"]["peer"]) == ("peer", "tethys")
        assert all(nodes.read_state(n.dir)["power"] == "off" for n in lab.nodes)
        stages = [s["name"] for s in record["stages"]]
        assert stages[-1] == "local-poweroff"
        # Servers go off after the agents, as for a UPS's decision (the plan's order, not the peer's).
        off = [i for i, s in enumerate(stages) if "poweroff" in s]
        assert off == sorted(off)
        assert len(off) >= 2, stages
    finally:
        lab.down()


def executed(lab: Lab) -> list[dict[str, Any]]:
    path = lab.state_dir / "runs.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text()) if r["kind"] == "shutdown" and not r["dry_run"]]
