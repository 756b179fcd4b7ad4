"""`hecate daemon` as a process on the real lab upsd: HTTP endpoints, metrics, sd_notify, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hecate_lab.procs import free_port, wait_for
from hecate_lab.ups import LabUps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def write_config(tmp_path: Path, ups: LabUps, port: int) -> Path:
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "host_name": "titan-db",
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "trigger": {"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2, "debounce_polls": 2},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }))
    return path


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()


def start_daemon(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hecate", "daemon", "--config", str(config)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


def test_daemon_serves_status_and_metrics_notifies_systemd_and_stops_on_sigterm(
    tmp_path: Path, ups: LabUps, notify_socket: socket.socket
) -> None:
    port = free_port()
    config = write_config(tmp_path, ups, port)
    proc = start_daemon(config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                 "WATCHDOG_USEC": "1000000"})
    try:
        assert notify_socket.recv(4096).startswith(b"READY=1")
        assert get(port, "/healthz") == (200, b"ok\n")
        assert get(port, "/readyz")[0] == 200
        assert notify_socket.recv(4096) == b"WATCHDOG=1"

        code, body = get(port, "/v1/status")
        doc = json.loads(body)
        assert code == 200
        assert doc["source"] == "daemon"
        assert doc["ups"][0]["status"] == "OL"
        assert doc["budget"]["threshold_s"] == pytest.approx(330.0)

        ups.set(ups_status="OB LB DISCHRG", battery_runtime=42, battery_charge=12)
        # The decision shows at once; its dry-run record is written by the handler just after.
        wait_for(lambda: (lambda d: d["trigger"]["shutdown_triggered"] and d["runs"]["count"] >= 1)(
            json.loads(get(port, "/v1/status")[1])), 5, "the daemon to decide and record the dry-run")
        code, metrics = get(port, "/metrics")
        text = metrics.decode()
        assert 'hecate_ups_on_battery{ups="pyrphoros"} 1.0' in text
        assert 'hecate_ups_battery_runtime_seconds{ups="pyrphoros"} 42.0' in text
        assert 'hecate_ups_battery_charge_ratio{ups="pyrphoros"} 0.12' in text
        assert 'hecate_ups_status_flag{flag="LB",ups="pyrphoros"} 1.0' in text
        assert "hecate_shutdown_triggered 1.0" in text
        assert 'hecate_runs_total{dry_run="true",kind="shutdown",result="success"} 1.0' in text
        promtool = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True,
                                  timeout=30, check=False)
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr

        # hecate status asks the daemon
        cli = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                             capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(cli.stdout)["source"] == "daemon"
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert "shutdown decided: UPS pyrphoros, low_battery" in output
    assert "dry-run: recorded shutdown run" in output
    runs = json.loads((tmp_path / "state" / "runs.json").read_text())
    assert [(r["kind"], r["dry_run"], r["trigger"]["reason"]) for r in runs] == [("shutdown", True, "low_battery")]


def test_status_without_a_daemon_polls_directly(tmp_path: Path, ups: LabUps) -> None:
    config = write_config(tmp_path, ups, free_port())
    ups.set(ups_status="OB DISCHRG", battery_runtime=250, battery_charge=61, ups_load=33)
    text = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "polled directly" in text
    row = next(line for line in text.splitlines() if line.startswith("pyrphoros"))
    assert row.split()[:5] == ["pyrphoros", "below", "(1/2)", "OB", "DISCHRG"]
    assert "250 s" in row
    assert "61 %" in row
    assert "Budget:    300 s (default, no measured shutdown yet); threshold = 1.1 x budget = 330 s" in text
    doc = json.loads(subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(config), "--json"],
                                    capture_output=True, text=True, timeout=30, check=True).stdout)
    assert doc["source"] == "direct"
    assert doc["ups"][0]["runtime_s"] == 250.0
    assert doc["trigger"]["shutdown_triggered"] is False  # one poll never decides a runtime trigger


def test_daemon_reports_a_taken_port_clearly(tmp_path: Path, ups: LabUps) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, ups, taken.getsockname()[1])
        proc = start_daemon(config)
        try:
            proc.wait(timeout=30)
        finally:
            output = stop(proc)
    assert proc.returncode == 1
    assert "daemon cannot start" in output
    assert "Traceback" not in output
