"""The host alert rules in a real Prometheus scraping a real daemon on the lab's upsd: the UPS goes on battery
and HecateUpsOnBattery fires within its `for:` plus two scrape intervals; mains back, it resolves. Then the
daemon (not armed) decides a shutdown: HecateShutdownDecidedDryRun fires, HecateShutdownDecided does not.

The rules are loaded as shipped except for one thing: in the test's copy HecateUpsOnBattery waits
``FOR_S`` rather than 30 s, so the test takes seconds. Everything else (expressions, labels,
annotations, the other rules) is the file operators load.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import scraped_daemon
from hecate_lab import prometheus
from hecate_lab.procs import wait_for
from hecate_lab.ups import LabUps, start_ups

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90),
              pytest.mark.skipif(not prometheus.available(), reason="prometheus is not installed")]

RULES = Path(__file__).resolve().parents[2] / "host" / "prometheus" / "hecate-alerts.rules.yaml"
ALERT = "HecateUpsOnBattery"
FOR_S = 2.0
SCRAPE_S = 1.0  # scraped_daemon: Prometheus scrapes and evaluates every second
POLL_S = 0.2  # the daemon's poll on mains and on battery: what upsd says reaches /metrics within it


@dataclass
class Stack:
    ups: LabUps
    prom: prometheus.Prometheus
    rules: dict[str, Any]


def short_for(directory: Path) -> Path:
    """A copy of the host rules where only ALERT's `for:` is FOR_S."""
    rules = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == ALERT]
    assert rule["for"] == "30s"
    rule["for"] = f"{FOR_S:g}s"
    path = directory / "hecate-alerts.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """upsd + dummy-ups, a daemon polling it, and Prometheus scraping the daemon with the rules; all stopped."""
    root = tmp_path_factory.mktemp("alerts")
    ups = start_ups(root, "pyrphoros")
    try:
        rules = short_for(root)
        with scraped_daemon(root, ups, [rules], trigger={"poll_interval_s": POLL_S,
                                                         "poll_interval_on_battery_s": POLL_S}) as (_, prom):
            yield Stack(ups, prom, yaml.safe_load(rules.read_text()))
    finally:
        ups.stop()


def alerts(prom: prometheus.Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == name]


def test_the_rules_are_loaded_and_quiet_on_mains(stack: Stack) -> None:
    groups = stack.prom.api("rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {r["alert"] for g in stack.rules["groups"] for r in g["rules"]}
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    # The daemon of this test is not armed (shutdown.execute false): that one is pending, nothing fires.
    wait_for(lambda: alerts(stack.prom, "HecateNotArmed"), 10, "HecateNotArmed to be pending")
    assert [a["state"] for a in alerts(stack.prom, "HecateNotArmed")] == ["pending"]
    assert [a for a in stack.prom.alerts() if a["state"] == "firing"] == []


def test_on_battery_fires_within_for_plus_two_scrapes_and_resolves_on_mains(stack: Stack) -> None:
    assert alerts(stack.prom, ALERT) == []
    went_ob = time.time()
    stack.ups.set(ups_status="OB DISCHRG", battery_runtime=1800, battery_charge=90)  # far above the threshold
    wait_for(lambda: [a for a in alerts(stack.prom, ALERT) if a["state"] == "firing"], 20, f"{ALERT} to fire")
    seen_firing = time.time()
    [alert] = alerts(stack.prom, ALERT)
    assert alert["labels"] == {"alertname": ALERT, "severity": "warning", "job": "hecate",
                               "instance": alert["labels"]["instance"], "ups": "pyrphoros"}
    assert alert["annotations"]["summary"] == f"UPS pyrphoros is on battery (Hecate on {alert['labels']['instance']})"
    assert alert["annotations"]["runbook_url"].endswith("docs/alerts.md#hecateupsonbattery")
    # Prometheus' own clock: pending from the first evaluation after a scrape saw OB; firing FOR_S later.
    active_at = datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()
    assert active_at - went_ob <= POLL_S + 2 * SCRAPE_S, (active_at - went_ob, alert)
    assert seen_firing - went_ob <= FOR_S + 2 * SCRAPE_S + POLL_S + 1.0, seen_firing - went_ob  # + test's own poll
    assert [a["labels"]["alertname"] for a in stack.prom.alerts() if a["state"] == "firing"] == [ALERT]

    stack.ups.set(ups_status="OL CHRG", battery_runtime=2400, battery_charge=92)
    wait_for(lambda: not alerts(stack.prom, ALERT), 10, f"{ALERT} to resolve")
    assert stack.prom.query('hecate_ups_on_battery{ups="pyrphoros"}')[0]["value"][1] == "0"


def test_a_decision_of_a_host_not_armed_warns_and_does_not_page(stack: Stack) -> None:
    """Last (the decision is latched): the daemon, not armed, decides on OB LB and records a dry-run. The
    real series (one scrape's job and instance on both metrics) match: the dry-run warning fires, the page not."""
    stack.ups.set(ups_status="OB LB DISCHRG", battery_runtime=60, battery_charge=8)
    dry_run = "HecateShutdownDecidedDryRun"
    wait_for(lambda: [a for a in alerts(stack.prom, dry_run) if a["state"] == "firing"], 20, f"{dry_run} to fire")
    [alert] = alerts(stack.prom, dry_run)
    assert alert["labels"] == {"alertname": dry_run, "severity": "warning", "job": "hecate",
                               "instance": alert["labels"]["instance"]}
    assert stack.prom.query("hecate_shutdown_triggered")[0]["value"][1] == "1"
    assert stack.prom.query("hecate_armed")[0]["value"][1] == "0"
    assert alerts(stack.prom, "HecateShutdownDecided") == []
