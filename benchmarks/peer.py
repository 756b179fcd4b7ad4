"""Peer forwarding latency: a peer's decision to the coordinator's run, against the coordinator's own decision.

Two real ``hecate daemon`` processes on loopback, each on its own lab upsd + dummy-ups: the coordinator
(UPS pyrphoros, a peer listener, ``shutdown.execute: false`` so each decision records a dry-run run and
touches nothing) and the peer ``tethys`` (UPS statera). One result per path, :data:`REPS` repetitions each:

* **peer** -- statera goes ``OB LB``: from the peer's decision (``decided_at`` in its forward record) to the
  coordinator's dry-run run starting (``started_at`` of the run whose trigger is ``source: peer``): the
  signed ``POST /v1/trigger``, its checks, the latch and the start of the run.
* **local** (the baseline, same daemons, same run) -- pyrphoros goes ``OB LB``: from the coordinator's own
  decision (``trigger.decided_at``) to the same run starting.

Both are one machine's wall clock. After each repetition the UPS returns to ``OL`` and the benchmark waits
until both daemons have cleared their latch before the next one.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks import spread
from hecate_lab.procs import free_port, start_daemon, stop_daemon, wait_for
from hecate_lab.ups import LabUps, start_ups

REPS = 20
SECRET = b"benchmark-shared-secret-0123456789abcdef"
TRIGGER = {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.5, "debounce_polls": 1}


def progress(message: str) -> None:
    print(f"peer: {message}", file=sys.stderr, flush=True)


def _secret(path: Path) -> str:
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return str(path)


def _configs(work: Path, coordinator_ups: LabUps, peer_ups: LabUps) -> tuple[Path, Path, int]:
    port = free_port()
    for name in ("coordinator", "tethys"):
        (work / name / "state").mkdir(parents=True, mode=0o700)
    coordinator = work / "coordinator" / "hecate.yaml"
    coordinator.write_text(yaml.safe_dump({
        "host_name": "titan-db", "state_dir": str(work / "coordinator" / "state"),
        "ups": [{"name": coordinator_ups.name, "host": coordinator_ups.host, "port": coordinator_ups.port}],
        "trigger": TRIGGER, "shutdown": {"execute": False},
        "peer": {"listen": f"127.0.0.1:{port}", "trusted": [
            {"name": "tethys", "key_id": "tethys-1", "secret_file": _secret(work / "coordinator" / "tethys.key")}]},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(work / "coordinator" / "hecate.sock")},
    }))
    peer = work / "tethys" / "hecate.yaml"
    peer.write_text(yaml.safe_dump({
        "role": "peer", "host_name": "tethys", "state_dir": str(work / "tethys" / "state"),
        "ups": [{"name": peer_ups.name, "host": peer_ups.host, "port": peer_ups.port}],
        "trigger": TRIGGER, "shutdown": {"execute": False},
        "peer": {"coordinator_url": f"http://127.0.0.1:{port}", "key_id": "tethys-1",
                 "secret_file": _secret(work / "tethys" / "tethys.key"), "forward_for_s": 10},
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(work / "tethys" / "hecate.sock")},
    }))
    return coordinator, peer, port


def _runs(config: Path) -> list[dict[str, Any]]:
    path = config.parent / "state" / "runs.json"
    try:
        return [r for r in json.loads(path.read_text()) if r["kind"] == "shutdown"]
    except (OSError, ValueError):
        return []


def _forward(peer: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((peer.parent / "state" / "peer-forward.json").read_text()))
    except (OSError, ValueError):
        return {}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _serving(config: Path) -> bool:
    done = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=30, check=False)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        return False
    return doc.get("source") == "daemon" and bool(doc.get("polls"))


def _rep(ups: LabUps, coordinator: Path, latency: Callable[[dict[str, Any]], float]) -> float:
    before = len(_runs(coordinator))
    time.sleep(random.uniform(0, 0.5))  # spreads the change over the daemons' poll cycles
    ups.set(ups_status="OB LB", battery_runtime=40, battery_charge=8)
    wait_for(lambda: len(_runs(coordinator)) > before, 20, "the coordinator's dry-run run", interval=0.02)
    run = _runs(coordinator)[-1]
    ups.set(ups_status="OL", battery_runtime=1800, battery_charge=100)
    time.sleep(1.5)  # both latches clear on mains at their next poll
    return latency(run)


def run() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hecate-bench-peer-") as tmp:
        work = Path(tmp)
        pyrphoros = start_ups(work / "ups", "pyrphoros")
        statera = start_ups(work / "ups", "statera")
        daemons: list[subprocess.Popen[str]] = []
        try:
            coordinator, peer, _ = _configs(work, pyrphoros, statera)
            daemons = [start_daemon(c, log=c.with_suffix(".log")) for c in (coordinator, peer)]
            wait_for(lambda: _serving(coordinator) and _serving(peer), 60, "both daemons serving", interval=0.5)

            def via_peer(run: dict[str, Any]) -> float:
                if run["trigger"].get("source") != "peer":
                    raise RuntimeError(f"expected a peer-triggered run, got {run['trigger']}")
                forwarded = _forward(peer)
                return _ts(run["started_at"]) - _ts(forwarded["decided_at"])

            def local(run: dict[str, Any]) -> float:
                return _ts(run["started_at"]) - _ts(run["trigger"]["decided_at"])

            peer_s, local_s = [], []
            for i in range(REPS):
                peer_s.append(_rep(statera, coordinator, via_peer))
                local_s.append(_rep(pyrphoros, coordinator, local))
                progress(f"{i + 1}/{REPS}: peer {peer_s[-1] * 1000:.0f} ms, local {local_s[-1] * 1000:.0f} ms")
            yield {"result": "peer_decision_to_coordinator_run_ms", "reps": REPS, **(spread(peer_s, 1000) or {}),
                   "baseline": {"what": "the coordinator's own decision to its run", **(spread(local_s, 1000) or {})},
                   "added_ms_median": round((statistics.median(peer_s) - statistics.median(local_s)) * 1000, 1)}
        finally:
            for proc in daemons:
                stop_daemon(proc, timeout=15)
            statera.stop()
            pyrphoros.stop()
