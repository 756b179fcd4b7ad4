"""Hecate's Grafana dashboard, generated (``host/grafana/hecate-dashboard.json`` and its ConfigMap).

Kept as data built here rather than a hand-edited JSON file, so panel ids, grid positions and data
source references cannot drift apart, and without a dashboard SDK as a dependency.
``scripts/update-docs.py`` writes :func:`definition` as JSON under ``host/grafana/`` and, from that
JSON, the ConfigMap the Grafana sidecar loads (``manifests/grafana-dashboard.yaml``); ``make lint``
fails when either is stale. Every query names only metrics of docs/metrics.md (tests check each one
parses and returns data from a live daemon). Pure. A module of the repository beside update-docs.py,
not of the product: an install has no use for a dashboard's layout (mypy checks it strictly).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

UID: Final = "hecate-overview"
TITLE: Final = "Hecate"
SCHEMA_VERSION: Final = 39
"""Grafana 10.3 to 11.x read it as is (newer versions migrate it on load)."""
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
UPS_QUERY: Final = "label_values(hecate_ups_on_battery, ups)"
INSTANCE_QUERY: Final = "label_values(hecate_build_info, instance)"
WIDTH: Final = 24

DAEMONS: Final = 'instance=~"$instance"'
"""Every Hecate series is filtered by the daemons chosen (the coordinator and its peers each export theirs)."""
UPSES: Final = f'{DAEMONS}, ups=~"$ups"'


def delta(metric: str, by: str) -> str:
    """How much the counter ``metric`` grew in each interval, summed ``by`` labels.

    Not ``increase()``: Hecate creates a labelled series (``hecate_runs_total{kind="shutdown",…}``) when the
    first such event happens, so it appears at 1 and ``increase()`` never sees that first event. A series with
    no sample one interval earlier counts whole; a counter reset (daemon restart) counts 0."""
    sel = f"{metric}{{{DAEMONS}}}"
    return f"sum by ({by}) (clamp_min({sel} - ({sel} offset $__interval or {sel} * 0), 0))"


def _panel(kind: str, title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
           **extra: Any) -> dict[str, Any]:
    instant = kind in ("stat", "gauge")  # one value now; time series panels ask for a range
    panel: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "datasource": dict(DATASOURCE),
        "targets": [{"datasource": dict(DATASOURCE), "refId": chr(ord("A") + i), "expr": expr,
                     "legendFormat": legend, "range": not instant, "instant": instant}
                    for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})},
                        "overrides": extra.pop("overrides", [])},
        "options": extra.pop("options", {}),
    }
    panel.update(extra)
    return panel


def _mappings(*texts: tuple[str, str, str]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {value: {"text": text, "color": color, "index": i}
                                          for i, (value, text, color) in enumerate(texts)}}]


def _stat(title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
          mappings: list[dict[str, Any]] | None = None, text_mode: str = "value_and_name",
          thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "text")])]
    return _panel("stat", title, description, targets, unit,
                  defaults={"mappings": mappings or [], "thresholds": {"mode": "absolute", "steps": steps},
                            "color": {"mode": "thresholds"}},
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "textMode": text_mode, "colorMode": "background" if mappings else "value",
                           "graphMode": "none", "justifyMode": "auto", "orientation": "auto"})


def _gauge(title: str, description: str, expr: str, maximum: float, red_below: float | None = None,
           red_above: float | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"value": None, "color": "red" if red_below is not None else "green"}]
    if red_below is not None:
        steps.append({"value": red_below, "color": "green"})
    if red_above is not None:
        steps.append({"value": red_above, "color": "red"})
    return _panel("gauge", title, description, [(expr, "{{ups}}")], "percentunit",
                  defaults={"min": 0, "max": maximum, "thresholds": {"mode": "absolute", "steps": steps}},
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "showThresholdMarkers": True})


def _series(title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
            bars: bool = False, overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 10,
              "showPoints": "never", "spanNulls": False, "lineInterpolation": "stepAfter"}
    return _panel("timeseries", title, description, targets, unit, defaults={"custom": custom},
                  overrides=overrides or [],
                  options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "none"}})


def _dashed(name: str) -> dict[str, Any]:
    """An override drawing the series ``name`` as a dashed red line (a threshold next to what it limits)."""
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


RUNS_BY = "kind, result, dry_run"
LAST_RUN = (f"topk by (kind) (1, max by ({RUNS_BY}) (last_over_time(timestamp({delta('hecate_runs_total', RUNS_BY)}"
            f" > 0)[$__range:$__interval])) * 1000)")
UPS_STATE = (f"(max by (ups) (hecate_ups_on_battery{{{UPSES}}}) + 2 * max by (ups) "
             f"(hecate_ups_status_flag{{{UPSES}, flag=\"LB\"}})) * max by (ups) (hecate_ups_reachable{{{UPSES}}}) "
             f"- (1 - max by (ups) (hecate_ups_reachable{{{UPSES}}}))")


def _overview() -> list[tuple[dict[str, Any], int, int]]:
    """(panel, width, height) of the first row, laid out left to right."""
    return [
        (_stat("UPS state", "OL on mains, OB on battery, LB low battery (upsd's ups.status); UNREACHABLE when "
               "upsd gives no current data.", [(UPS_STATE, "{{ups}}")],
               mappings=_mappings(("-1", "UNREACHABLE", "purple"), ("0", "OL", "green"), ("1", "OB", "orange"),
                                  ("2", "OL LB", "yellow"), ("3", "OB LB", "red"))), 4, 5),
        (_stat("Runtime vs threshold", "Runtime each UPS reports, and the threshold at or below which Hecate "
               "shuts down while on battery (safety factor x budget).",
               [(f"hecate_ups_battery_runtime_seconds{{{UPSES}}}", "{{ups}}"),
                (f"hecate_shutdown_threshold_seconds{{{DAEMONS}}}", "threshold {{instance}}")], "s"), 5, 5),
        (_gauge("Charge", "Battery charge (battery.charge).", f"hecate_ups_battery_charge_ratio{{{UPSES}}}", 1,
                red_below=0.3), 3, 5),
        (_gauge("Load", "Output load (ups.load); above 100 % the UPS is overloaded.",
                f"hecate_ups_load_ratio{{{UPSES}}}", 1.2, red_above=0.8), 3, 5),
        (_stat("Budget", "Estimated shutdown duration: measured from past runs, else the configured default.",
               [(f"hecate_shutdown_budget_seconds{{{DAEMONS}}}", "{{instance}}")], "s", text_mode="value"), 3, 5),
        (_stat("Armed", "Armed: a decision runs the shutdown (shutdown.execute). Dry-run: decisions are only "
               "recorded.", [(f"hecate_armed{{{DAEMONS}}}", "{{instance}}")],
               mappings=_mappings(("0", "DRY-RUN", "orange"), ("1", "ARMED", "green")), text_mode="value"), 3, 5),
        (_stat("Shutdown decided", "Latched once a shutdown is decided, until the daemon restarts.",
               [(f"hecate_shutdown_triggered{{{DAEMONS}}}", "{{instance}}")],
               mappings=_mappings(("0", "no", "green"), ("1", "DECIDED", "red")), text_mode="value"), 3, 5),
        (_stat("Last run", "The latest result of each kind of run in the time range (shutdown, startup, drill) "
               "and when it was recorded.", [(LAST_RUN, "{{kind}} {{result}} (dry-run {{dry_run}})")],
               "dateTimeFromNow"), 12, 4),
        (_stat("Last run duration", "Duration of the last executed (not dry-run) run of each kind.",
               [(f"hecate_last_run_duration_seconds{{{DAEMONS}}}", "{{kind}}")], "s"), 6, 4),
        (_stat("Budget source", "Measured from recorded shutdowns, or the configured default.",
               [(f"hecate_shutdown_budget_measured{{{DAEMONS}}}", "{{instance}}")],
               mappings=_mappings(("0", "default", "orange"), ("1", "measured", "green")), text_mode="value"), 6, 4),
    ]


def _battery() -> list[tuple[dict[str, Any], int, int]]:
    return [
        (_series("Runtime and threshold", "Runtime per UPS against the shutdown threshold and the budget.",
                 [(f"hecate_ups_battery_runtime_seconds{{{UPSES}}}", "{{ups}}"),
                  (f"max(hecate_shutdown_threshold_seconds{{{DAEMONS}}})", "threshold"),
                  (f"max(hecate_shutdown_budget_seconds{{{DAEMONS}}})", "budget")], "s",
                 overrides=[_dashed("threshold")]), 24, 8),
        (_series("Battery charge", "Battery charge per UPS.",
                 [(f"hecate_ups_battery_charge_ratio{{{UPSES}}}", "{{ups}}")], "percentunit"), 8, 7),
        (_series("Output load", "Output load per UPS.",
                 [(f"hecate_ups_load_ratio{{{UPSES}}}", "{{ups}}")], "percentunit"), 8, 7),
        (_series("On battery and reachable", "1 while on battery (OB) / while upsd answers with current data.",
                 [(f"hecate_ups_on_battery{{{UPSES}}}", "{{ups}} on battery"),
                  (f"hecate_ups_reachable{{{UPSES}}}", "{{ups}} reachable")]), 8, 7),
    ]


def _decisions() -> list[tuple[dict[str, Any], int, int]]:
    return [
        (_series("Decisions", "1 once a shutdown is decided; polls on battery at or below the threshold (the "
                 "debounce) per UPS.",
                 [(f"hecate_shutdown_triggered{{{DAEMONS}}}", "decided {{instance}}"),
                  (f"hecate_trigger_debounce_polls{{{UPSES}}}", "{{ups}} polls below threshold"),
                  (f"hecate_trigger_debounce_polls_required{{{DAEMONS}}}", "polls required")],
                 overrides=[_dashed("polls required")]), 8, 8),
        (_series("Runs", "Runs finished per interval by kind, result and dry-run (hecate_runs_total).",
                 [(delta("hecate_runs_total", RUNS_BY), "{{kind}} {{result}} (dry-run {{dry_run}})")], bars=True),
         8, 8),
        (_series("Run durations", "Duration of the last executed run of each kind: what the budget learns from.",
                 [(f"hecate_last_run_duration_seconds{{{DAEMONS}}}", "{{kind}}")], "s"), 8, 8),
    ]


def _operations() -> list[tuple[dict[str, Any], int, int]]:
    return [
        (_stat("Policy source", "Where the policy in force comes from: the cluster's PowerPolicy, the cache of the "
               "last valid one, or hecate.yaml alone (host).",
               [(f"hecate_policy_source{{{DAEMONS}}} == 1", "{{source}}")], text_mode="name"), 4, 7),
        (_series("Policy age", "Time since the PowerPolicy in force was cached (absent with hecate.yaml alone).",
                 [(f"hecate_policy_age_seconds{{{DAEMONS}}}", "{{instance}}")], "s"), 6, 7),
        (_series("Peer triggers", "Requests to the coordinator's trigger listener by result (accepted, or why "
                 "refused), and on a peer the triggers it forwarded by outcome.",
                 [(delta("hecate_peer_requests_total", "result"), "request {{result}}"),
                  (delta("hecate_peer_forwards_total", "result"), "forward {{result}}")], bars=True), 7, 7),
        (_series("State writes", "State dir writes that failed, per interval by kind, and kinds failing now "
                 "(the runs went on in memory).",
                 [(delta("hecate_state_write_errors_total", "what"), "errors {{what}}"),
                  (f"hecate_state_write_failing{{{DAEMONS}}} == 1", "failing {{what}}")], bars=True), 7, 7),
        (_series("Hecate alerts firing", "Alerts of Hecate's rules (alertname Hecate…) firing in this Prometheus.",
                 [('sum by (alertname, severity, ups) (ALERTS{alertname=~"Hecate.*", alertstate="firing"})',
                   "{{alertname}} {{ups}} ({{severity}})")], bars=True), 24, 7),
    ]


def _layout(rows: list[tuple[str, list[tuple[dict[str, Any], int, int]]]]) -> list[dict[str, Any]]:
    """Rows and their panels with ids and grid positions: left to right, wrapping at the grid's width."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, items in rows:
        panels.append({**_row(title), "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1}})
        y += 1
        x, line_height = 0, 0
        for panel, w, h in items:
            if x + w > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**panel, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
            x, line_height = x + w, max(line_height, h)
        y += line_height
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
    return panels


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"type": "query", "name": name, "label": label, "datasource": dict(DATASOURCE),
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query, "refresh": 2,
            "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def definition() -> dict[str, Any]:
    """The dashboard, as Grafana's JSON model."""
    return {
        "uid": UID,
        "title": TITLE,
        "description": "UPS state, runtime against the shutdown threshold, decisions and runs of Hecate "
                       "(docs/dashboard.md).",
        "tags": ["hecate", "ups", "power"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            _variable("instance", "Hecate daemon", INSTANCE_QUERY),
            _variable("ups", "UPS", UPS_QUERY),
        ]},
        "panels": _layout([("Overview", _overview()), ("Runtime and battery", _battery()),
                           ("Decisions and runs", _decisions()),
                           ("Policy, peers, bookkeeping and alerts", _operations())]),
    }


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def queries(board: Mapping[str, Any], values: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of ``board``, each Grafana variable (``$ups``,
    ``$__interval``, ``${x}``) replaced by its value in ``values`` -- PromQL Prometheus itself can run.
    A variable missing from ``values`` raises ``KeyError`` naming it."""
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], target["expr"])
            yield panel["title"], target["refId"], expr
