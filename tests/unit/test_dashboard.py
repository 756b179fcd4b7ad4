"""The Grafana dashboard: its JSON and ConfigMap are generated and in step, it has the structure Grafana
imports (ids, grid, targets, data source variable), and every query parses (promtool, PromQL's parser)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

import dashboard
from hecate_lab import prometheus

pytestmark = pytest.mark.timeout(60)
promtool_missing = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")

REPO = Path(__file__).resolve().parents[2]
BOARD = json.loads((REPO / "host" / "grafana" / "hecate-dashboard.json").read_text())
CONFIGMAP = yaml.safe_load((REPO / "manifests" / "grafana-dashboard.yaml").read_text())
VALUES = {"instance": ".*", "ups": ".*", "__interval": "15s", "__range": "1h", "__rate_interval": "1m"}
"""What Grafana puts in place of the dashboard's variables (all daemons, all UPSes) for Prometheus."""


def test_the_json_and_the_configmap_are_generated(update_docs: ModuleType) -> None:
    text = (REPO / "host" / "grafana" / "hecate-dashboard.json").read_text()
    assert text == update_docs.render_dashboard(), "host/grafana/hecate-dashboard.json is stale: run `make docs`"
    assert (REPO / "manifests" / "grafana-dashboard.yaml").read_text() == update_docs.render_dashboard_configmap(text)
    assert dashboard.definition() == BOARD


def test_the_configmap_carries_the_json_for_the_sidecar() -> None:
    assert CONFIGMAP["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert "namespace" not in CONFIGMAP["metadata"]  # the sidecar's namespace is the operator's choice
    [(key, text)] = CONFIGMAP["data"].items()
    assert key.endswith(".json")  # the sidecar writes each key as a file; Grafana loads *.json
    assert json.loads(text) == BOARD
    kubernetes_validate.validate(CONFIGMAP, "1.31", strict=True)


def test_variables_and_identity() -> None:
    assert BOARD["uid"] == "hecate-overview"
    assert BOARD["schemaVersion"] == 39
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["ups"]["query"]["query"] == "label_values(hecate_ups_on_battery, ups)"
    assert variables["instance"]["query"]["query"] == "label_values(hecate_build_info, instance)"
    for name in ("ups", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "__inputs" not in BOARD  # no import-time data source prompt: the variable chooses it


def cells(grid: dict[str, int]) -> Iterator[tuple[int, int]]:
    for x in range(grid["x"], grid["x"] + grid["w"]):
        for y in range(grid["y"], grid["y"] + grid["h"]):
            yield x, y


def test_panels_have_unique_ids_a_place_on_the_grid_and_queries_on_the_data_source_variable() -> None:
    panels: list[dict[str, Any]] = BOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}, panel["title"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for cell in cells(grid):
            assert cell not in taken, f"{panel['title']} overlaps {taken[cell]}"
            taken[cell] = panel["title"]
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), titles  # a title names one panel (the docs and the tests use them)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows[0] == "Overview"


def test_the_dashboard_is_not_part_of_the_product() -> None:
    """Only the docs generator and the tests use the layout: the installed package does not carry it."""
    assert Path(dashboard.__file__).parent == REPO / "scripts"
    assert importlib.util.find_spec("hecate.domain.dashboard") is None


def test_queries_substitute_every_variable_and_name_an_unknown_one() -> None:
    exprs = [expr for _, _, expr in dashboard.queries(BOARD, VALUES)]
    assert len(exprs) == sum(len(p.get("targets", [])) for p in BOARD["panels"])
    assert not [e for e in exprs if "$" in e]
    with pytest.raises(KeyError, match="ups"):
        list(dashboard.queries({"panels": [{"title": "t", "targets": [{"refId": "A", "expr": 'x{ups=~"$ups"}'}]}]},
                               {}))


def test_metric_names_of_an_expression() -> None:
    expr = ('sum by (ups) (rate(a_total{x="b{c}", ups=~"$u"}[5m])) / on (ups) group_left (flag) b offset 1h '
            "> bool 2e3 and max_over_time(c:rule[1h:1m]) unless ALERTS")
    assert prometheus.metric_names(expr) == {"a_total", "b", "c:rule", "ALERTS"}


def unparsed(queries: list[tuple[str, str]], directory: Path) -> list[str]:
    """The queries (name, expr) PromQL's parser rejects, with its message: each is a recording rule of one rules
    file for `promtool check rules` (one process, no server)."""
    records = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    path = directory / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30,
                           check=False)
    found = re.findall(r'"dashboard:query_(\d+)": (.*)', check.stdout + check.stderr)
    bad = [f"{queries[int(i)][0]}: {message}" for i, message in found]
    assert bad or check.returncode == 0, check.stdout + check.stderr  # a failure that names no query
    return bad


@promtool_missing
def test_every_query_parses(tmp_path: Path) -> None:
    queries = [(f"{title} {ref}", expr) for title, ref, expr in dashboard.queries(BOARD, VALUES)]
    bad = unparsed(queries, tmp_path)
    assert not bad, "\n".join(bad)


@promtool_missing
def test_the_parse_check_can_fail(tmp_path: Path) -> None:
    queries = [("good", "sum(hecate_ups_on_battery)"), ("bad", 'sum by (ups (hecate_ups_on_battery{ups=~".*"})'),
               ("mistyped", "rate(hecate_shutdown_triggered)")]
    bad = unparsed(queries, tmp_path)
    assert [b.split(":", 1)[0] for b in bad] == ["bad", "mistyped"], bad
    assert "parse error" in bad[0]


def test_the_alert_panel_selects_hecates_alerts_generically() -> None:
    exprs = [e for _, _, e in dashboard.queries(BOARD, VALUES) if "ALERTS" in e]
    assert exprs
    assert all(re.search(r'alertname=~"Hecate\.\*"', e) for e in exprs)
