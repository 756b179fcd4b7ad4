"""The Grafana dashboard against real data: a real Prometheus scrapes a real daemon on the lab's upsd every
second, after the UPS went OB LB and the daemon decided a (dry-run) shutdown and recorded it. Every query of
the dashboard returns data, except the few listed below with the situation they need, and names only
metrics that daemon exports. One set-up for the module."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dashboard
from conftest import scraped_daemon
from hecate.adapters.store import StateStore
from hecate.domain.runs import RunKind, RunRecord, RunResult
from hecate_lab import prometheus
from hecate_lab.procs import free_port, http_get, wait_for
from hecate_lab.ups import start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

VALUES = {"instance": ".*", "ups": ".*", "__interval": "1s", "__range": "5m", "__rate_interval": "4s"}
"""The dashboard's variables as Grafana would fill them for this Prometheus (1 s scrapes, a 5 min range)."""

NO_DATA_HERE = {
    ("Policy age", "A"): "only while a PowerPolicy (or its cache) is in force; this daemon runs on hecate.yaml alone",
    ("Peer triggers", "B"): "hecate_peer_forwards_total exists only on a peer (role: peer); this is the coordinator",
    ("State writes", "B"): "only while a state write fails (== 1); this state dir is healthy",
}
NOT_EXPORTED_HERE = {
    "hecate_peer_forwards_total": "only on a peer; this daemon is the coordinator",
    "hecate_policy_age_seconds": "only while a PowerPolicy (or its cache) is in force",
}
"""Metrics the dashboard reads that this daemon cannot export (each documented in docs/metrics.md)."""
PROMETHEUS_OWN = {"ALERTS", "up"}

PROBE_RULES = """\
groups:
  - name: dashboard-probe
    rules:
      - alert: HecateDashboardProbe
        expr: hecate_ups_on_battery == 1
        labels: {severity: info}
        annotations: {summary: "the dashboard's alert panel reads any Hecate* alert"}
"""
"""A stand-in for Hecate's alert rules: the alert panel reads ``ALERTS{alertname=~"Hecate.*"}`` generically."""


@dataclass
class Scraped:
    server: prometheus.Prometheus
    metrics_text: str


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    if not prometheus.available():
        pytest.skip("prometheus is not installed (the setup installs the Debian package 'prometheus')")
    tmp = tmp_path_factory.mktemp("dashboard")
    ups = start_ups(tmp, "pyrphoros")
    try:
        # An executed startup already in the history: hecate_last_run_duration_seconds covers executed runs only.
        started = datetime.now(UTC) - timedelta(hours=1)
        StateStore(tmp / "state").append_run(RunRecord(
            id="startup-seeded", kind=RunKind.startup, dry_run=False, started_at=started,
            finished_at=started + timedelta(seconds=95), duration_s=95.0, result=RunResult.success))
        rules = tmp / "probe-rules.yaml"
        rules.write_text(PROBE_RULES)
        with scraped_daemon(tmp, ups, [rules], peer={"listen": f"127.0.0.1:{free_port()}"},
                            trigger={"poll_interval_s": 0.5, "poll_interval_on_battery_s": 0.2,
                                     "debounce_polls": 2}) as (port, server):
            ups.set(ups_status="OB LB DISCHRG", battery_runtime=42, battery_charge=12)
            wait_for(lambda: server.query('hecate_runs_total{kind="shutdown", dry_run="true"}'), 20,
                     "the daemon to decide, record the dry-run and prometheus to scrape it", tmp / "daemon.log")
            wait_for(lambda: server.query('ALERTS{alertname="HecateDashboardProbe", alertstate="firing"}'), 10,
                     "the probe alert to fire")
            wait_for(lambda: not empty_queries(server), 10, "every query to return data")
            yield Scraped(server, http_get(port, "/metrics")[1].decode())
    finally:
        ups.stop()


def empty_queries(server: prometheus.Prometheus) -> list[tuple[str, str, str]]:
    return [(title, ref, expr) for title, ref, expr in dashboard.queries(dashboard.definition(), VALUES)
            if (title, ref) not in NO_DATA_HERE and not server.query(expr)]


def test_every_query_returns_data_after_a_shutdown_decision(scraped: Scraped) -> None:
    assert empty_queries(scraped.server) == []
    board = dashboard.definition()
    targets = {(p["title"], t["refId"]) for p in board["panels"] for t in p.get("targets", [])}
    assert set(NO_DATA_HERE) <= targets, "an exception names a query the dashboard no longer has"


def values(scraped: Scraped, title: str, ref: str = "A") -> list[tuple[dict[str, Any], float]]:
    [expr] = [e for t, r, e in dashboard.queries(dashboard.definition(), VALUES) if (t, r) == (title, ref)]
    return [(row["metric"], float(row["value"][1])) for row in scraped.server.query(expr)]


def test_the_data_says_what_happened(scraped: Scraped) -> None:
    assert values(scraped, "UPS state") == [({"ups": "pyrphoros"}, 3.0)]  # OB LB
    assert values(scraped, "Shutdown decided")[0][1] == 1.0
    assert values(scraped, "Armed")[0][1] == 0.0  # dry-run
    [(labels, at_ms)] = values(scraped, "Last run")
    assert (labels["kind"], labels["result"], labels["dry_run"]) == ("shutdown", "success", "true")
    assert abs(at_ms / 1000 - datetime.now(UTC).timestamp()) < 60
    assert [(m["kind"], v) for m, v in values(scraped, "Last run duration")] == [("startup", 95.0)]
    assert [m["source"] for m, _ in values(scraped, "Policy source")] == ["host"]
    assert {m["alertname"] for m, _ in values(scraped, "Hecate alerts firing")} == {"HecateDashboardProbe"}


def test_the_runs_panel_counts_the_first_run_of_a_kind(scraped: Scraped) -> None:
    """The dry-run created its series at 1: the panel shows that run, where increase() shows nothing."""
    [expr] = [e for t, _, e in dashboard.queries(dashboard.definition(), VALUES) if t == "Runs"]
    end = datetime.now(UTC).timestamp()
    data = scraped.server.api("query_range", query=expr, start=str(end - 120), end=str(end), step="1")
    [series] = [s for s in data["result"] if s["metric"].get("kind") == "shutdown"]
    assert sum(float(v) for _, v in series["values"]) >= 1
    plain = scraped.server.query('sum(increase(hecate_runs_total{kind="shutdown"}[2m]))')
    assert not plain or float(plain[0]["value"][1]) == 0.0


def exported_names(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_queries_and_variables_name_only_metrics_the_daemon_exports(scraped: Scraped) -> None:
    exported = exported_names(scraped.metrics_text) | set(NOT_EXPORTED_HERE) | PROMETHEUS_OWN
    board = dashboard.definition()
    named = set().union(*(prometheus.metric_names(e) for _, _, e in dashboard.queries(board, VALUES)))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), \w+\)", variable["query"]["query"])
            assert match, variable
            named.add(match.group(1))
    assert named - exported == set()
    assert "hecate_build_info" in named
    documented = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert all(f"`{name}`" in documented for name in NOT_EXPORTED_HERE)
    assert json.loads(json.dumps(board)) == board  # plain JSON all the way down
