"""The alert rules: both copies pass `promtool check rules` and the unit tests of `promtool test rules`, every
alert has a case that fires and one that stays silent, a runbook paragraph, and the labels the docs promise."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from hecate.domain.trigger import Reason

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "host" / "prometheus" / "hecate-alerts.rules.yaml"
MANIFEST = REPO / "manifests" / "hecate-alerts.yaml"
CASES = REPO / "tests" / "fixtures" / "alerts" / "hecate-alerts.test.yaml"
PAGE = REPO / "docs" / "alerts.md"
RUNBOOKS = "https://github.com/hecate/hecate/blob/main/docs/alerts.md"

pytestmark = pytest.mark.timeout(60)
promtool_missing = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def rules_of(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


HOST = yaml.safe_load(RULES.read_text())
ALERTS = rules_of(HOST["groups"])


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=30, check=False)


def spec_rules(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain rules file, beside a copy of the unit tests that loads it."""
    [manifest] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    path = tmp_path / "spec.rules.yaml"
    path.write_text(yaml.safe_dump(manifest["spec"]))
    return path


def test_the_manifest_is_a_prometheusrule_generated_from_the_host_file(update_docs: ModuleType) -> None:
    assert MANIFEST.read_text() == update_docs.render_prometheus_rule(), "manifests/hecate-alerts.yaml is stale"
    [manifest] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert manifest["spec"] == {"groups": HOST["groups"]}
    assert PAGE.read_text() == update_docs.render_alerts_page(PAGE.read_text()), "docs/alerts.md's table is stale"


def test_the_kustomization_leaves_the_prometheusrule_out() -> None:
    # `kubectl apply -k manifests/` must work on a cluster without the Prometheus Operator's CRDs.
    [kustomization] = yaml.safe_load_all((REPO / "manifests" / "kustomization.yaml").read_text())
    assert MANIFEST.name not in kustomization["resources"]


def test_every_alert_has_for_severity_summary_and_its_runbook_paragraph() -> None:
    headings = re.findall(r"^### (\w+)$", PAGE.read_text(), re.M)
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names))
    assert set(headings) == set(names), "one runbook paragraph per alert, and no other"
    runbooks = PAGE.read_text().split("## Runbooks", 1)[1]
    for rule in ALERTS:
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert set(rule["annotations"]) == {"summary", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}#{name.lower()}", name
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"] or "absent(" in rule["expr"], name
        if "hecate_ups_" in rule["expr"]:
            assert "{{ $labels.ups }}" in rule["annotations"]["summary"], name
        paragraph = runbooks.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert len(paragraph.split()) >= 30, f"{name}: the runbook says what it means, what to check, what to do"


def test_every_alert_has_a_case_that_fires_and_one_that_stays_silent() -> None:
    cases = yaml.safe_load(CASES.read_text())
    assert cases["rule_files"] == ["../../../host/prometheus/hecate-alerts.rules.yaml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for group in cases["tests"]:
        for case in group["alert_rule_test"]:
            (fires if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in ALERTS}
    assert names - fires == set(), "alerts never seen firing"
    assert names - silent == set(), "alerts never seen silent"
    assert (fires | silent) - names == set(), "cases for alerts that do not exist"


@promtool_missing
def test_promtool_checks_both_copies(tmp_path: Path) -> None:
    for path in (RULES, spec_rules(tmp_path)):
        check = promtool("check", "rules", str(path))
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout


@promtool_missing
def test_promtool_runs_the_unit_tests_on_both_copies(tmp_path: Path) -> None:
    run = promtool("test", "rules", str(CASES))
    assert run.returncode == 0, run.stdout + run.stderr
    copy = tmp_path / "cases.yaml"
    copy.write_text(yaml.safe_dump({**yaml.safe_load(CASES.read_text()), "rule_files": [str(spec_rules(tmp_path))]}))
    run = promtool("test", "rules", str(copy))
    assert run.returncode == 0, run.stdout + run.stderr


@promtool_missing
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """A rule that fires later, or on something else, fails the cases: they test the rules, not themselves."""
    for old, new in (("for: 30s", "for: 40s"), ("< 86400", "< 90000")):
        text = RULES.read_text()
        assert old in text
        broken = tmp_path / new.replace(" ", "").replace(":", "").replace("<", "lt")
        broken.mkdir()
        (broken / "rules.yaml").write_text(text.replace(old, new))
        copy = broken / "cases.yaml"
        copy.write_text(yaml.safe_dump({**yaml.safe_load(CASES.read_text()), "rule_files": ["rules.yaml"]}))
        run = promtool("test", "rules", str(copy))
        assert run.returncode != 0, f"{old} -> {new} went unnoticed"


def test_the_decision_runbooks_name_every_trigger_reason() -> None:
    """An operator paged for a decision looks its reason up here: every reason the trigger can give is listed."""
    runbooks = PAGE.read_text().split("## Runbooks", 1)[1]
    for name in ("HecateShutdownDecided", "HecateShutdownDecidedDryRun"):
        paragraph = runbooks.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        missing = [reason.value for reason in Reason if f"`{reason.value}`" not in paragraph]
        assert missing == [], f"{name}'s runbook does not name {missing}"


def test_only_an_armed_decision_pages() -> None:
    """A dry-run decision is a warning of its own: HecateNotArmed already covers a host that is not armed."""
    rules = {rule["alert"]: rule for rule in ALERTS}
    assert rules["HecateShutdownDecided"]["labels"]["severity"] == "critical"
    assert "hecate_armed == 1" in rules["HecateShutdownDecided"]["expr"]
    assert rules["HecateShutdownDecidedDryRun"]["labels"]["severity"] == "warning"
    assert "hecate_armed == 0" in rules["HecateShutdownDecidedDryRun"]["expr"]
