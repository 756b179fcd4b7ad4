"""`hecate daemon` as a process on the real lab upsd: HTTP endpoints, metrics, sd_notify, signals,
the root-only status socket, and a metrics port another process holds."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate_lab.procs import free_port, http_get, start_daemon, stop_daemon, wait_for
from hecate_lab.ups import LabUps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def write_config(tmp_path: Path, ups: LabUps, port: int, **extra: Any) -> Path:
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "host_name": "titan-db",
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2, "debounce_polls": 2},
        "metrics": {"listen": f"127.0.0.1:{port}", "socket": str(socket_path(tmp_path))},
        **extra,
    }))
    return path


def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "hecate.sock"  # the daemon creates run/


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=2)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(str(self.unix_path))


def get_unix(path: Path, url: str) -> tuple[int, bytes]:
    conn = _UnixConnection(path)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def hecate_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def answers(port: int, path: str) -> int | None:
    """The HTTP status on ``port``, or None while nothing listens there."""
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()


def test_daemon_serves_status_and_metrics_notifies_systemd_and_stops_on_sigterm(
    tmp_path: Path, ups: LabUps, notify_socket: socket.socket
) -> None:
    port = free_port()
    # A bootstrap cache with no cluster behind it: every refresh fails, and is counted.
    config = write_config(tmp_path, ups, port, cluster={"kubeconfig": str(tmp_path / "no-kubeconfig")},
                          flux={"bootstrap_objects": ["/namespace/gitea"],
                                "fallback_manifests_dir": str(tmp_path / "bootstrap")})
    proc = start_daemon(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                 "WATCHDOG_USEC": "1000000"})
    try:
        assert notify_socket.recv(4096).startswith(b"READY=1")
        assert http_get(port, "/healthz") == (200, b"ok\n")
        assert http_get(port, "/readyz")[0] == 200
        assert notify_socket.recv(4096) == b"WATCHDOG=1"

        code, body = http_get(port, "/v1/status")
        doc = json.loads(body)
        assert code == 200
        assert doc["source"] == "daemon"
        assert doc["ups"][0]["status"] == "OL"
        assert doc["budget"]["threshold_s"] == pytest.approx(330.0)

        ups.set(ups_status="OB LB DISCHRG", battery_runtime=42, battery_charge=12)
        # The decision shows at once; its dry-run record is written by the handler just after.
        wait_for(lambda: (lambda d: d["trigger"]["shutdown_triggered"] and d["runs"]["count"] >= 1)(
            json.loads(http_get(port, "/v1/status")[1])), 5, "the daemon to decide and record the dry-run")
        code, metrics = http_get(port, "/metrics")
        text = metrics.decode()
        assert 'hecate_ups_on_battery{ups="pyrphoros"} 1.0' in text
        assert 'hecate_ups_battery_runtime_seconds{ups="pyrphoros"} 42.0' in text
        assert 'hecate_ups_battery_charge_ratio{ups="pyrphoros"} 0.12' in text
        assert 'hecate_ups_status_flag{flag="LB",ups="pyrphoros"} 1.0' in text
        assert "hecate_shutdown_triggered 1.0" in text
        assert 'hecate_runs_total{dry_run="true",kind="shutdown",result="success"} 1.0' in text
        doc = json.loads(http_get(port, "/v1/status")[1])
        assert doc["armed"] is False
        assert doc["bootstrap_cache"]["errors"] >= 1, doc["bootstrap_cache"]
        assert doc["bootstrap_cache"]["last_refresh_at"] is None
        assert "hecate_bootstrap_cache_refresh_errors_total " in text
        assert "hecate_bootstrap_cache_last_refresh_timestamp_seconds" not in text  # never refreshed
        assert 'hecate_build_info{version="' in text
        assert "hecate_armed 0.0" in text  # shutdown.execute is false here
        assert 'hecate_ups_last_success_timestamp_seconds{ups="pyrphoros"} ' in text
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     "process_start_time_seconds"):
            assert f"\n{name} " in text
        promtool = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True,
                                  timeout=30, check=False)
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr
        # OpenMetrics for a scraper that asks for it (as Prometheus does)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            resp = conn.getresponse()
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            assert resp.read().endswith(b"# EOF\n")
        finally:
            conn.close()

        # hecate status asks the daemon, on its root-only socket
        sock = socket_path(tmp_path)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(sock.stat().st_mode)
        cli = hecate_status(config, "--json")
        assert cli.returncode == 2, cli.stderr  # CRITICAL: a shutdown is decided (a dry-run here)
        doc = json.loads(cli.stdout)
        assert doc["source"] == "daemon"
        assert [(lst["kind"], lst["listening"]) for lst in doc["listeners"]] == [("tcp", True), ("unix", True)]
        assert (doc["armed"], doc["check"]["state"], doc["check"]["code"]) == (False, "critical", 2)
        assert doc["check"]["reasons"][0]["message"] == "shutdown decided (UPS pyrphoros, low_battery): a dry-run, " \
                                                        "only recorded"
        assert get_unix(sock, "/readyz") == (200, b"ready\n")
    finally:
        output = stop_daemon(proc, timeout=10)
    assert proc.returncode == 0, output
    assert not socket_path(tmp_path).exists()  # removed on the way out
    assert "shutdown decided: UPS pyrphoros, low_battery" in output
    assert "dry-run: recorded shutdown run" in output
    runs = json.loads((tmp_path / "state" / "runs.json").read_text())
    assert [(r["kind"], r["dry_run"], r["trigger"]["reason"]) for r in runs] == [("shutdown", True, "low_battery")]


def test_status_without_a_daemon_polls_directly(tmp_path: Path, ups: LabUps) -> None:
    config = write_config(tmp_path, ups, free_port())
    ups.set(ups_status="OB DISCHRG", battery_runtime=250, battery_charge=61, ups_load=33)
    shown = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 2, shown.stderr  # CRITICAL: on battery at or below the threshold (debouncing)
    text = shown.stdout
    assert "polled directly" in text
    assert text.splitlines()[0].startswith("Check:     CRITICAL (exit 2): UPS pyrphoros: on battery at or below "
                                           "the threshold (runtime 250 s <= 330 s, 1 of 2 polls)")
    row = next(line for line in text.splitlines() if line.startswith("pyrphoros"))
    assert row.split()[:5] == ["pyrphoros", "below", "(1/2)", "OB", "DISCHRG"]
    assert "250 s" in row
    assert "61 %" in row
    assert "Budget:    300 s (default, no measured shutdown yet); threshold = 1.1 x budget = 330 s" in text
    shown = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 2, shown.stderr  # the same with --json
    doc = json.loads(shown.stdout)
    assert doc["check"]["state"] == "critical"
    assert doc["source"] == "direct"
    assert doc["ups"][0]["runtime_s"] == 250.0
    assert doc["trigger"]["shutdown_triggered"] is False  # one poll never decides a runtime trigger


FORGED = {"host": "forged", "source": "daemon", "ups": [{"name": "pyrphoros", "status": "OL", "on_battery": False}]}


class _ForgedStatus(http.server.BaseHTTPRequestHandler):
    """What a local user squatting the metrics port could serve: "all on mains"."""

    def do_GET(self) -> None:
        body = json.dumps(FORGED).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[http.server.HTTPServer]:
    """Another process's server on a port before the daemon starts (a thread here: the daemon cannot tell)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _ForgedStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_squatted_port_neither_stops_the_daemon_nor_fools_hecate_status(
    tmp_path: Path, ups: LabUps, notify_socket: socket.socket, squatter: http.server.HTTPServer
) -> None:
    port = squatter.server_address[1]
    address = f"127.0.0.1:{port}"
    config = write_config(tmp_path, ups, port)
    sock = socket_path(tmp_path)
    proc = start_daemon(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        # The monitor runs without the port: READY=1 does not wait for it.
        assert notify_socket.recv(4096).startswith(b"READY=1")
        code, body = get_unix(sock, "/readyz")
        assert code == 503
        assert f"not listening on {address} (tcp): address already in use (EADDRINUSE)".encode() in body

        ups.set(ups_status="OB LB DISCHRG", battery_runtime=42, battery_charge=12)
        wait_for(lambda: (lambda d: d["trigger"]["shutdown_triggered"] and d["runs"]["count"] >= 1)(
            json.loads(get_unix(sock, "/v1/status")[1])), 10, "the daemon to decide and record the dry-run")

        cli = hecate_status(config, "--json")
        assert cli.returncode == 2, cli.stderr  # CRITICAL: the (dry-run) shutdown decided
        doc = json.loads(cli.stdout)
        assert doc["host"] == "titan-db"  # not the squatter's forged "on mains"
        assert doc["source"] == "daemon"
        assert doc["ups"][0]["status"] == "OB LB DISCHRG"
        assert doc["trigger"]["decision"]["reason"] == "low_battery"
        tcp = doc["listeners"][0]
        assert (tcp["kind"], tcp["address"], tcp["listening"]) == ("tcp", address, False)
        assert tcp["bind_failures"] >= 1
        assert [a["kind"] for a in doc["alerts"]] == ["not_listening"]
        text = hecate_status(config).stdout
        assert f"Alert:     not listening on {address} (tcp): address already in use" in text
        metrics = get_unix(sock, "/metrics")[1].decode()
        assert f'hecate_http_listening{{address="{address}",listener="tcp"}} 0.0' in metrics

        squatter.shutdown()
        squatter.server_close()  # the squatter goes: the daemon takes the port at its next retry (<= 30 s)
        wait_for(lambda: answers(port, "/readyz") == 200, 40, "the daemon to bind the freed port")
        metrics = http_get(port, "/metrics")[1].decode()
        assert f'hecate_http_listening{{address="{address}",listener="tcp"}} 1.0' in metrics
        assert f'hecate_http_bind_failures_total{{address="{address}",listener="tcp"}}' in metrics
    finally:
        output = stop_daemon(proc, timeout=10)
    assert proc.returncode == 0, output
    assert output.count(f"cannot listen on {address}") == 1  # logged once, not at every retry
    assert f"now listening on {address} (tcp), after" in output
    assert "dry-run: recorded shutdown run" in output
