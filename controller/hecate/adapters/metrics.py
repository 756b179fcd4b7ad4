"""Prometheus metrics rendered from the status document at scrape time.

A custom collector rather than module-level gauges: every scrape reads the same
document ``/v1/status`` serves, so metrics and status cannot disagree and nothing
global is mutated from the poll loop. Metric names are documented in docs/metrics.md.

Gauges are rounded to 6 decimals at exposition (a computed 0.35000000000000003 reads 0.35);
the daemon's registry adds the process collector (CPU, memory, descriptors, start time), and
the exposition follows the scraper's Accept header (OpenMetrics when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from hecate import __version__
from hecate.adapters import store
from hecate.domain import forward, policy_source
from hecate.domain.runs import RunResult
from hecate.domain.ups import Flag

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DECIMALS = 6
"""Gauges are rounded to this many decimals: float arithmetic (35 / 100, durations) leaves noise in the last digits."""


class StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        doc = self.status()
        yield InfoMetricFamily("hecate_build", "Hecate's version (always 1).", value={"version": __version__})
        if doc.get("armed") is not None:
            yield _gauge("hecate_armed", "1 when shutdown.execute is true (a decision runs the shutdown), 0 when "
                         "decisions are only recorded as dry-runs.", [([], 1.0 if doc["armed"] else 0.0)])
        yield from _ups_metrics(doc["ups"])
        budget, trig = doc["budget"], doc["trigger"]
        yield _gauge("hecate_shutdown_budget_seconds",
                     "Estimated shutdown duration (measured from past runs, else the configured default).",
                     [([], budget["seconds"])])
        yield _gauge("hecate_shutdown_budget_measured",
                     "1 when the budget is measured from recorded shutdowns, 0 when it is the default.",
                     [([], 1.0 if budget["source"] == "measured" else 0.0)])
        yield _gauge("hecate_shutdown_threshold_seconds",
                     "Shut down when a protecting UPS on battery reports at most this runtime.",
                     [([], budget["threshold_s"])])
        yield _gauge("hecate_shutdown_triggered", "1 once a shutdown has been decided (latched).",
                     [([], 1.0 if trig["shutdown_triggered"] else 0.0)])
        yield _gauge("hecate_trigger_debounce_polls_required",
                     "Consecutive polls below the threshold that trigger a shutdown.",
                     [([], trig["debounce_polls"])])
        yield from _run_metrics(doc["runs"])
        yield from _policy_metrics(doc.get("policy"))
        yield from _listener_metrics(doc.get("listeners") or [])
        yield from _bookkeeping_metrics(doc.get("state_writes", []), doc.get("shutdown_task"))
        yield from _peer_metrics(doc.get("peer_listener"))
        yield from _forward_metrics(doc.get("peer_forward"))
        yield from _bootstrap_cache_metrics(doc.get("bootstrap_cache"))
        yield from _alert_metrics(doc.get("alerts", []))


def _gauge(name: str, doc: str, samples: list[tuple[list[str], float]], labels: tuple[str, ...] = ()) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric(values, round(value, DECIMALS))
    return family


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _ups_metrics(ups: list[dict[str, Any]]) -> Iterator[Metric]:
    def per_ups(name: str, doc: str, key: str, divisor: float = 1.0) -> Metric:
        rows = [([u["name"]], u[key] / divisor) for u in ups if u[key] is not None]
        return _gauge(name, doc, rows, ("ups",))

    yield _gauge("hecate_ups_reachable", "1 when upsd answered with current data for this UPS.",
                 [([u["name"]], 1.0 if u["reachable"] and not u["stale"] else 0.0) for u in ups], ("ups",))
    yield _gauge("hecate_ups_last_success_timestamp_seconds",
                 "When upsd last answered with current data for this UPS (Unix time; absent before the first).",
                 [([u["name"]], _timestamp(u["last_seen_at"])) for u in ups if u.get("last_seen_at")], ("ups",))
    yield _gauge("hecate_ups_on_battery", "1 when the UPS reports OB (on battery).",
                 [([u["name"]], 1.0 if u["on_battery"] else 0.0) for u in ups], ("ups",))
    yield per_ups("hecate_ups_battery_runtime_seconds", "Remaining runtime the UPS reports.", "runtime_s")
    yield per_ups("hecate_ups_battery_charge_ratio", "Battery charge, 0 to 1.", "charge_pct", 100)
    yield per_ups("hecate_ups_load_ratio", "Output load, 0 to 1 (above 1 when overloaded).", "load_pct", 100)
    yield per_ups("hecate_ups_input_voltage_volts", "Input (mains) voltage.", "input_voltage")
    yield _gauge("hecate_ups_status_flag", "1 for each ups.status flag the UPS reports now, else 0.",
                 [([u["name"], f.value], 1.0 if f.value in u["flags"] else 0.0) for u in ups for f in Flag],
                 ("ups", "flag"))
    yield _gauge("hecate_ups_fsd_set_by_hecate",
                 "1 when Hecate's latest executed shutdown set FSD on this UPS in upsd (ups[].set_fsd).",
                 [([u["name"]], 1.0 if u.get("fsd_set_by_hecate") else 0.0) for u in ups], ("ups",))
    yield per_ups("hecate_trigger_debounce_polls",
                  "Consecutive polls this UPS has been on battery at or below the threshold.",
                  "below_threshold_polls")
    yield _gauge("hecate_ups_runtime_trusted",
                 "1 when the UPS's battery.runtime is trusted by the runtime trigger; 0 when missing or untrusted "
                 "(zero at high charge, implausible, frozen, rising: ups[].runtime_untrusted_reason).",
                 [([u["name"]], 1.0 if u.get("runtime_trusted") else 0.0) for u in ups if u.get("polled")], ("ups",))
    yield _gauge("hecate_ups_runtime_estimate_seconds",
                 "Remaining runtime the learned discharge model estimates (absent without a model or a charge).",
                 [([u["name"]], u["runtime_estimate"]["seconds"]) for u in ups if u.get("runtime_estimate")], ("ups",))
    yield _gauge("hecate_ups_runtime_estimate_uncertainty_seconds",
                 "Uncertainty of the estimated runtime; the trigger uses the estimate minus this when the runtime is "
                 "missing or untrusted.",
                 [([u["name"]], u["runtime_estimate"]["uncertainty_s"]) for u in ups if u.get("runtime_estimate")],
                 ("ups",))
    yield _gauge("hecate_ups_discharge_outages", "Recorded outages the discharge model learns from (0: no model).",
                 [([u["name"]], float(u.get("discharge_outages", 0))) for u in ups], ("ups",))
    yield _gauge("hecate_ups_runtime_short",
                 "1 when on mains at full charge the runtime is below the threshold (batteries too weak).",
                 [([u["name"]], 1.0 if u["runtime_short"] else 0.0) for u in ups], ("ups",))


def _run_metrics(runs: dict[str, Any]) -> Iterator[Metric]:
    total = CounterMetricFamily("hecate_runs", "Finished runs recorded since the daemon started (by the daemon or "
                                "by hecate startup/drill), by kind, result and dry-run.",
                                labels=["kind", "result", "dry_run"])
    for row in runs.get("recorded", []):  # the daemon's; runs.json's counts are capped and can go down
        total.add_metric([row["kind"], row["result"], "true" if row["dry_run"] else "false"], row["count"])
    yield total
    yield _gauge("hecate_last_run_duration_seconds", "Duration of the last executed run of each kind.",
                 [([kind], seconds) for kind, seconds in sorted(runs["last_duration_s"].items())], ("kind",))
    last = sorted(runs.get("last", {}).items())
    yield _gauge("hecate_last_run_result", "1 for the result of the last finished run of each kind (dry-runs "
                 "included), else 0.",
                 [([kind, r.value], 1.0 if run["result"] == r.value else 0.0) for kind, run in last for r in RunResult],
                 ("kind", "result"))
    yield _gauge("hecate_last_run_timestamp_seconds", "When the last finished run of each kind ended (Unix time).",
                 [([kind], _timestamp(run["finished_at"])) for kind, run in last], ("kind",))


def _policy_metrics(policy: dict[str, Any] | None) -> Iterator[Metric]:
    if not policy:
        return
    yield _gauge("hecate_policy_source",
                 "1 for where the policy in force comes from: the cluster's PowerPolicy, the cache of the last "
                 "valid one, or hecate.yaml alone (host).",
                 [([s.value], 1.0 if policy["source"] == s.value else 0.0) for s in policy_source.Source], ("source",))
    yield _gauge("hecate_policy_rejected", "1 while the cluster's PowerPolicy is rejected (invalid; the cache or "
                 "hecate.yaml is in force), else 0.", [([], 1.0 if policy.get("cluster_object") == "invalid" else 0.0)])
    if policy.get("age_s") is not None:
        yield _gauge("hecate_policy_age_seconds", "Time since the PowerPolicy in force was taken (cached) by Hecate.",
                     [([], policy["age_s"])])


def _listener_metrics(listeners: list[dict[str, Any]]) -> Iterator[Metric]:
    if not listeners:
        return
    yield _gauge("hecate_http_listening",
                 "1 while the HTTP server listens on this address (tcp: metrics.listen, unix: metrics.socket).",
                 [([lst["kind"], lst["address"]], 1.0 if lst["listening"] else 0.0) for lst in listeners],
                 ("listener", "address"))
    failures = CounterMetricFamily("hecate_http_bind_failures",
                                   "Failed attempts to bind the HTTP server's address since the daemon started.",
                                   labels=["listener", "address"])
    for lst in listeners:
        failures.add_metric([lst["kind"], lst["address"]], lst["bind_failures"])
    yield failures


def _bookkeeping_metrics(failures: list[dict[str, Any]], task: dict[str, Any] | None) -> Iterator[Metric]:
    by_kind = {f["what"]: f for f in failures}
    errors = CounterMetricFamily("hecate_state_write_errors",
                                 "State dir writes that failed (full or read-only disk, I/O error, permissions), by "
                                 "kind; the runs went on in memory.", labels=["what"])
    for what in store.WRITE_KINDS:
        errors.add_metric([what], by_kind[what]["errors"] if what in by_kind else 0)
    yield errors
    yield _gauge("hecate_state_write_failing", "1 while writes of this kind fail (the last one failed).",
                 [([what], 1.0 if by_kind.get(what, {}).get("active") else 0.0) for what in store.WRITE_KINDS],
                 ("what",))
    if task is not None:  # the daemon's
        restarts = CounterMetricFamily("hecate_shutdown_restarts",
                                       "Shutdown runs started again from the plan after they crashed.")
        restarts.add_metric([], task["restarts"])
        yield restarts


def _peer_metrics(listener: dict[str, Any] | None) -> Iterator[Metric]:
    if not listener:
        return
    requests = CounterMetricFamily("hecate_peer_requests",
                                   "Requests to the trigger listener (peer.listen) by result: accepted, or why "
                                   "they were refused.", labels=["result"])
    for result, count in sorted(listener["requests"].items()):
        requests.add_metric([result], count)
    yield requests

def _forward_metrics(peer: dict[str, Any] | None) -> Iterator[Metric]:
    """A peer's forwards (only on a peer): how many ended how, and the last one's state."""
    if peer is None:
        return
    total = CounterMetricFamily("hecate_peer_forwards", "Triggers this peer forwarded since the daemon started, by "
                                "how they ended: accepted, refused (a 4xx no retry changes) or failed (out of time).",
                                labels=["result"])
    for result, count in peer["forwards"].items():
        total.add_metric([result], count)
    yield total
    last = peer["last"]
    yield _gauge("hecate_peer_last_forward", "1 for the state of the last forward (forwarding, accepted, refused, "
                 "failed); all 0 before the first.",
                 [([r.value], 1.0 if last and last["result"] == r.value else 0.0) for r in forward.ForwardResult],
                 ("result",))
    if last is not None:
        yield _gauge("hecate_peer_last_forward_attempts", "Attempts the last forward made.", [([], last["attempts"])])
        yield _gauge("hecate_peer_last_forward_timestamp_seconds", "When the last forward started (Unix time).",
                     [([], _timestamp(last["started_at"]))])
        yield _gauge("hecate_peer_fallback_ran", "1 when the last forward was not accepted and the local shutdown "
                     "was started (or recorded as a dry-run).",
                     [([], 1.0 if last["fallback"] in ("ran", "dry_run") else 0.0)])


def _bootstrap_cache_metrics(cache: dict[str, Any] | None) -> Iterator[Metric]:
    """Only while the daemon keeps the bootstrap cache fresh (flux.bootstrap_objects or policy.name set)."""
    if cache is None:
        return
    errors = CounterMetricFamily("hecate_bootstrap_cache_refresh_errors", "Refreshes of the bootstrap cache that "
                                 "failed since the daemon started (Kubernetes error, e.g. a 404, or a write).")
    errors.add_metric([], cache["errors"])
    yield errors
    yield _gauge("hecate_bootstrap_cache_refresh_failing", "1 while the last refresh of the bootstrap cache failed "
                 "(none has worked since), else 0.", [([], 1.0 if cache["last_error"] else 0.0)])
    if cache["last_refresh_at"] is not None:
        yield _gauge("hecate_bootstrap_cache_last_refresh_timestamp_seconds",
                     "When the bootstrap cache snapshot was last written from the live cluster (Unix time).",
                     [([], _timestamp(cache["last_refresh_at"]))])


def _alert_metrics(alerts: list[dict[str, Any]]) -> Iterator[Metric]:
    """One series per alert the status lists now (``ups`` empty for the daemon's own): a kind added to the
    status shows up here, and in the alert rules' catch-all, without more work."""
    active = sorted({(a["ups"] or "", a["kind"]) for a in alerts})
    yield _gauge("hecate_alert_active", "1 for each alert the status document lists now, by UPS (empty for the "
                 "daemon's own) and kind.", [([ups, kind], 1.0) for ups, kind in active], ("ups", "kind"))


def registry_for(status: Callable[[], dict[str, Any]], process: bool = False) -> CollectorRegistry:
    """The collector of ``status``'s document; with ``process`` (the daemon's) also this process's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format the ``Accept`` header asks for (OpenMetrics or the text format) and its
    content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
