"""`hecate daemon` with `role: peer` as a process on a real lab upsd, forwarding its decision over loopback to a
real HTTP server that checks every request as the coordinator does (`peer.authenticate`, `peer.parse_body`):
accepted; the coordinator down (the local fallback runs); and a 401 answer (no endless retries). The real
coordinator coming back mid-retry is tests/integration/test_two_hosts.py."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate.domain import forward, peer
from hecate_lab.procs import free_port, http_get, start_daemon, stop_daemon, wait_for
from hecate_lab.ups import LabUps, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SECRET = b"integration-test-shared-secret-0123456789"


@pytest.fixture(scope="module")
def peer_ups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUps]:
    """One lab UPS for the module (upsd takes seconds to start): statera, back on mains before each test."""
    lab_ups = start_ups(tmp_path_factory.mktemp("peer-ups"), "statera")
    try:
        yield lab_ups
    finally:
        lab_ups.stop()


@pytest.fixture
def ups(peer_ups: LabUps) -> LabUps:
    peer_ups.set(ups_status="OL", battery_runtime=1800, battery_charge=100)
    return peer_ups


class Coordinator:
    """A threaded HTTP server on loopback: each ``POST /v1/trigger`` is authenticated and parsed as the coordinator
    does; an authentic one is answered ``answer``, a refused one with the refusal's status."""

    def __init__(self, port: int, answer: int = 202, secret: bytes = SECRET) -> None:
        self.port, self.answer, self.secret = port, answer, secret
        self.requests: list[peer.TriggerBody | peer.Refusal] = []
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Coordinator:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = peer.authenticate("POST", self.path, dict(self.headers.items()), body, now=time.time(),
                                         keys={"tethys-1": peer.PeerKey("tethys", outer.secret)}, window_s=30)
                parsed = auth if isinstance(auth, peer.Refusal) else peer.parse_body(body, auth)
                outer.requests.append(parsed)
                status = parsed.status if isinstance(parsed, peer.Refusal) else outer.answer
                reply = json.dumps({"result": parsed.value if isinstance(parsed, peer.Refusal) else "accepted"})
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *_: Any) -> None: ...

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(5)


@pytest.fixture
def coordinators() -> Iterator[list[Coordinator]]:
    """Every coordinator a test starts, closed after it."""
    started: list[Coordinator] = []
    try:
        yield started
    finally:
        for coordinator in started:
            coordinator.close()


def write_config(tmp_path: Path, ups: LabUps, coordinator_port: int, port: int, forward_for_s: float) -> Path:
    secret = tmp_path / "peer.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "role": "peer",
        "host_name": "tethys",
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2, "debounce_polls": 2},
        "shutdown": {"execute": True, "local_poweroff_command": ["sh", "-c", f"date >> {tmp_path / 'MARKER'}"]},
        "peer": {"coordinator_url": f"http://127.0.0.1:{coordinator_port}", "key_id": "tethys-1",
                 "secret_file": str(secret), "forward_for_s": forward_for_s},
        "metrics": {"listen": f"127.0.0.1:{port}", "socket": str(tmp_path / "run" / "hecate.sock")},
    }))
    return path


def forward_state(port: int) -> dict[str, Any]:
    doc = json.loads(http_get(port, "/v1/status")[1])
    assert doc["role"] == "peer"
    return doc["peer_forward"]


def last_result(port: int) -> str | None:
    try:
        last = forward_state(port)["last"]
    except OSError:
        return None
    return last["result"] if last else None


def serving(port: int) -> bool:
    """The daemon answers, as a peer that has sent nothing yet."""
    try:
        return forward_state(port)["last"] is None
    except OSError:
        return False


def on_battery(ups: LabUps) -> float:
    ups.set(ups_status="OB LB DISCHRG", battery_runtime=40, battery_charge=8)
    return time.monotonic()


def test_a_peer_forwards_a_signed_trigger_and_is_accepted(tmp_path: Path, ups: LabUps,
                                                          coordinators: list[Coordinator]) -> None:
    coordinator = Coordinator(free_port()).start()
    coordinators.append(coordinator)
    port = free_port()
    config = write_config(tmp_path, ups, coordinator.port, port, forward_for_s=10)
    proc = start_daemon(config)
    try:
        wait_for(lambda: serving(port), 15, "the peer daemon")
        on_battery(ups)
        wait_for(lambda: last_result(port) == "accepted", 10, "the coordinator to accept the trigger")
        state = forward_state(port)
        assert state["forwards"] == {"accepted": 1, "refused": 0, "failed": 0}
        assert (state["last"]["attempts"], state["last"]["status"], state["last"]["fallback"]) == (1, 202, None)
        [body] = coordinator.requests
        assert isinstance(body, peer.TriggerBody)
        assert (body.peer, body.reason) == ("tethys", "low_battery")
        assert [(u.name, u.status, u.runtime_s) for u in body.ups] == [("statera", "OB LB DISCHRG", 40.0)]
        metrics = http_get(port, "/metrics")[1].decode()
        assert 'hecate_peer_forwards_total{result="accepted"} 1.0' in metrics
        assert 'hecate_peer_last_forward{result="accepted"} 1.0' in metrics
        promtool = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True,
                                  timeout=30, check=False)
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    finally:
        output = stop_daemon(proc, timeout=10)
    assert not (tmp_path / "MARKER").exists(), output
    # The daemon is gone: `hecate status` polls directly and still shows the last forward, from the state dir.
    shown = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert "Peer:      forwards to http://127.0.0.1:" in shown.stdout, shown.stderr
    assert "ACCEPTED after 1 attempt(s) (HTTP 202" in shown.stdout


def test_the_coordinator_down_the_peer_shuts_itself_down(tmp_path: Path, ups: LabUps) -> None:
    port = free_port()
    config = write_config(tmp_path, ups, free_port(), port, forward_for_s=2)  # nothing listens there
    proc = start_daemon(config)
    try:
        wait_for(lambda: serving(port), 15, "the peer daemon")
        on_battery(ups)
        wait_for(lambda: (tmp_path / "MARKER").exists(), 2 + 3, "the local fallback's power-off")
        wait_for(lambda: forward_state(port)["last"]["fallback"] == "ran", 2, "the fallback in status")
        last = forward_state(port)["last"]
        assert (last["result"], last["status"]) == ("failed", None)
        assert last["attempts"] >= 2
        assert "cannot connect" in last["error"]
        forwarded_for = datetime.fromisoformat(last["finished_at"]) - datetime.fromisoformat(last["started_at"])
        wait_for(lambda: json.loads(http_get(port, "/v1/status")[1])["runs"]["count"] == 1, 5, "the run record")
    finally:
        output = stop_daemon(proc, timeout=10)
    assert forwarded_for.total_seconds() >= 2 - forward.MIN_ATTEMPT_S, output  # it tried for its whole time first
    runs = json.loads((tmp_path / "state" / "runs.json").read_text())
    assert [(r["trigger"]["source"], r["trigger"]["forward"], r["dry_run"], r["result"]) for r in runs] == [
        ("peer-fallback", "failed", False, "success")]


def test_a_refused_trigger_is_not_retried_and_falls_back(tmp_path: Path, ups: LabUps,
                                                         coordinators: list[Coordinator]) -> None:
    coordinator = Coordinator(free_port(), secret=b"the-coordinator-has-another-secret").start()
    coordinators.append(coordinator)
    port = free_port()
    config = write_config(tmp_path, ups, coordinator.port, port, forward_for_s=30)
    proc = start_daemon(config)
    try:
        wait_for(lambda: serving(port), 15, "the peer daemon")
        on_battery(ups)
        wait_for(lambda: (tmp_path / "MARKER").exists(), 5, "the local fallback, long before forward_for_s")
        last = forward_state(port)["last"]
        assert (last["result"], last["attempts"], last["status"]) == ("refused", 1, 401)
        assert last["answer"] == '{"result": "bad_signature"}'
    finally:
        stop_daemon(proc, timeout=10)
    assert coordinator.requests == [peer.Refusal.bad_signature]
