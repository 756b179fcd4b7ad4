"""Footprint: ``hecate daemon`` watching 4 lab UPSes, polled every second and every 2 s; ``hecate status``.

The daemon (a subprocess, ``poll_interval_s`` 1 s -- the default -- then 2 s, the default
before it, as the baseline; ``poll_interval_on_battery_s: 1``) settles for a few seconds,
then for 60 s we read its CPU time (utime + stime from ``/proc/<pid>/stat``, every thread
included) and sample its RSS (``VmRSS`` from ``/proc/<pid>/status``) every second. Nothing
talks to the daemon during that window. One ``daemon_idle`` result per interval, in the
same run; ``python -m benchmarks.footprint idle`` runs only that part.

In the same run, so readers see the floor: the RSS of an idle ``python`` (the same
interpreter) and of one that has only imported ``hecate.daemon``, and the wall time of
``hecate --version`` (interpreter start + the CLI import). ``hecate status`` is timed
against the running daemon (over its unix socket) and, after it stopped, with no daemon
(``metrics.socket`` where no socket is, so it polls the 4 UPSes itself).

The embedded operator's cost (``daemon_operator_rss``): the same daemon (1 lab UPS) run
twice against the lab's emulated API holding the PowerPolicy CRD and the example
policy -- once without ``policy.name`` (no operator, kopf never imported), once with it
(kopf connected, the policy Ready, the status written every 30 s) -- each sampled for
``OPERATOR_WATCH_S`` after it settled. ``python -m benchmarks.footprint operator`` runs
only that part.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks.reaction import (
    daemon_status,
    hecate_argv,
    progress,
    wait_daemon_ready,
    write_daemon_config,
)
from hecate_lab.kubeapi import api_url, start_kubeapi, stop_kubeapi
from hecate_lab.procs import free_port, start_daemon, stop_daemon, wait_for
from hecate_lab.ups import LabUps, start_ups

UPSES = 4
SETTLE_S = 5.0
WATCH_S = 60.0
SAMPLE_EVERY_S = 1.0
REPEAT = 10
TARGET_CPU_PCT = 0.5
TARGET_STATUS_S = 0.4
POLL_INTERVAL_S = 1.0
BASELINE_POLL_INTERVAL_S = 2.0

CLK_TCK = os.sysconf("SC_CLK_TCK")
OPERATOR_WATCH_S = 40.0  # longer than the 30 s status interval: one status write falls in the window
ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def idle_rss(code: str) -> float:
    """RSS of ``python -c code`` once it sits in its final sleep."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport sys, time\nprint(flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # imports done
        time.sleep(0.3)
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


STATUS_RAN = (0, 1, 2)
"""``hecate status`` exits with its check state: OK, WARNING (here: not armed) or CRITICAL all mean it ran."""


def wall(argv: list[str], repeat: int, expect: str | None = None, codes: tuple[int, ...] = (0,)) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        times.append(time.perf_counter() - started)
        if out.returncode not in codes or (expect is not None and expect not in out.stdout):
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "min_s": round(min(times), 3)}


def idle_daemon(work: Path, upses: list[LabUps], interval: float) -> dict[str, Any]:
    """Start a daemon polling ``upses`` every ``interval`` on mains, watch it idle, stop it."""
    port = free_port()
    trigger = {"poll_interval_s": interval, "poll_interval_on_battery_s": 1.0}
    config = write_daemon_config(work / f"idle-{interval:g}s.yaml", work / f"state-{interval:g}s", upses, port,
                                 trigger)
    log = work / f"idle-{interval:g}s.log"
    daemon = start_daemon(config, log=log)
    try:
        wait_daemon_ready(daemon, port, log)
        progress(f"footprint: daemon at {interval:g} s polls ready; settling {SETTLE_S:g} s, "
                 f"then watching {WATCH_S:g} s")
        time.sleep(SETTLE_S)
        polls_before = daemon_status(port)["polls"]
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - t0 < WATCH_S:
            rss.append(rss_mib(daemon.pid))
            time.sleep(SAMPLE_EVERY_S)
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        polls = daemon_status(port)["polls"] - polls_before
    finally:
        stop_daemon(daemon)
    cpu_s, wall_s = cpu1 - cpu0, t1 - t0
    cpu_pct = 100 * cpu_s / wall_s
    return {
        "upses": len(upses),
        "poll_interval_s": interval,
        "watch_s": round(wall_s, 1),
        "polls": polls,
        "cpu_s": round(cpu_s, 3),
        "cpu_pct_of_one_core": round(cpu_pct, 3),
        "cpu_ms_per_poll": round(1000 * cpu_s / polls, 2) if polls else None,
        "rss_mean_mib": round(statistics.mean(rss), 1),
        "rss_max_mib": round(max(rss), 1),
        "rss_first_mib": round(rss[0], 1),
        "rss_last_mib": round(rss[-1], 1),
        "daemon_exit_code_on_sigterm": daemon.returncode,
        "target_cpu_pct": TARGET_CPU_PCT,
        "cpu_pass": cpu_pct <= TARGET_CPU_PCT,
    }


def idle(work: Path, upses: list[LabUps]) -> Iterator[dict[str, Any]]:
    """The daemon idle at 1 s polls (the default) and at 2 s (the baseline), against an idle Python."""
    progress("footprint: baselines")
    idle_python = idle_rss("pass")
    import_daemon = idle_rss("import hecate.daemon")
    fast, slow = idle_daemon(work, upses, POLL_INTERVAL_S), idle_daemon(work, upses, BASELINE_POLL_INTERVAL_S)
    floor = {"baseline_idle_python_rss_mib": round(idle_python, 1),
             "baseline_python_import_hecate_daemon_rss_mib": round(import_daemon, 1)}
    yield {"result": "daemon_idle", **fast, **floor,
           "vs_2s_cpu_pct_delta": round(fast["cpu_pct_of_one_core"] - slow["cpu_pct_of_one_core"], 3),
           "vs_2s_rss_mean_delta_mib": round(fast["rss_mean_mib"] - slow["rss_mean_mib"], 1)}
    yield {"result": "daemon_idle", **slow, **floor, "note": "baseline: the mains poll interval before 1 s"}


def start_upses(work: Path) -> list[LabUps]:
    progress(f"footprint: starting {UPSES} lab UPSes")
    upses: list[LabUps] = []
    try:
        for i in range(1, UPSES + 1):
            upses.append(start_ups(work, f"ups{i}"))
    except BaseException:
        for ups in upses:
            ups.stop()
        raise
    return upses


def run_idle() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hecate-bench-footprint-") as tmp:
        upses = start_upses(Path(tmp))
        try:
            yield from idle(Path(tmp), upses)
        finally:
            for ups in upses:
                ups.stop()


def run() -> Iterator[dict[str, Any]]:
    version = wall(hecate_argv("--version"), REPEAT, expect="hecate")
    with tempfile.TemporaryDirectory(prefix="hecate-bench-footprint-") as tmp:
        work = Path(tmp)
        upses = start_upses(work)
        daemon = None
        try:
            yield from idle(work, upses)
            port = free_port()
            trigger = {"poll_interval_s": POLL_INTERVAL_S, "poll_interval_on_battery_s": 1.0}
            config = write_daemon_config(work / "hecate.yaml", work / "state", upses, port, trigger)
            log = work / "daemon.log"
            daemon = start_daemon(config, log=log)
            wait_daemon_ready(daemon, port, log)
            progress(f"footprint: hecate status x{REPEAT} against the daemon")
            json_doc = json.loads(subprocess.run(hecate_argv("status", "--config", str(config), "--json"),
                                                 capture_output=True, text=True, timeout=30, check=False).stdout)
            if json_doc["source"] != "daemon":
                raise RuntimeError(f"hecate status did not ask the daemon: source {json_doc['source']!r}")
            with_daemon = wall(hecate_argv("status", "--config", str(config)), REPEAT, codes=STATUS_RAN)
            stop_daemon(daemon)
            daemon = None

            progress(f"footprint: hecate status x{REPEAT} with no daemon (direct poll)")
            direct_config = write_daemon_config(work / "direct.yaml", work / "state", upses, free_port(), trigger)
            direct = wall(hecate_argv("status", "--config", str(direct_config)), REPEAT, expect="polled directly",
                          codes=STATUS_RAN)
        finally:
            stop_daemon(daemon)
            for ups in upses:
                ups.stop()

    yield {
        "result": "status_wall_time",
        "repeat": REPEAT,
        "upses": UPSES,
        "with_daemon": summary(with_daemon),
        "no_daemon_direct_poll": summary(direct),
        "baseline_hecate_version": summary(version),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(hecate_argv("status"))),
        "target_s": TARGET_STATUS_S,
        "with_daemon_pass": statistics.median(with_daemon) <= TARGET_STATUS_S,
        "no_daemon_pass": statistics.median(direct) <= TARGET_STATUS_S,
    }
    yield from operator_rss()


def _api(kubeconfig: Path, method: str, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(api_url(kubeconfig) + path, data=json.dumps(body).encode(), method=method,  # noqa: S310
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as rsp:  # noqa: S310 - the lab API on 127.0.0.1
        return json.loads(rsp.read())


def _accepted(kubeconfig: Path) -> bool:
    import urllib.request

    with urllib.request.urlopen(api_url(kubeconfig) + "/apis/hecate.io/v1alpha1/powerpolicies/titan",  # noqa: S310
                                timeout=2) as rsp:
        obj = json.loads(rsp.read())
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _watch(pid: int, seconds: float) -> tuple[list[float], float]:
    """RSS samples (MiB, every second) and CPU % of one core over ``seconds``."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    samples: list[float] = []
    while time.monotonic() - t0 < seconds:
        samples.append(rss_mib(pid))
        time.sleep(SAMPLE_EVERY_S)
    return samples, 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def operator_rss() -> Iterator[dict[str, Any]]:
    """The daemon's RSS without the operator and with it, in the same run."""
    progress("footprint: operator RSS: baselines")
    import_daemon = idle_rss("import hecate.daemon")
    import_operator = idle_rss("import hecate.daemon, hecate.operator")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hecate-bench-operator-") as tmp:
        work = Path(tmp)
        ups = None
        api = None
        daemon = None
        try:
            ups = start_ups(work, "pyrphoros")
            (work / "kube").mkdir()
            (work / "kube" / "nodes.json").write_text(json.dumps({"nodes": [], "flux": False}))
            kubeconfig = work / "kube" / "kubeconfig"
            api = start_kubeapi(work / "kube" / "nodes.json", kubeconfig, work / "kube" / "kubeapi.log")
            _api(kubeconfig, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                 yaml.safe_load((ROOT / "crds" / "powerpolicy.yaml").read_text()))
            _api(kubeconfig, "POST", "/apis/hecate.io/v1alpha1/powerpolicies",
                 yaml.safe_load((ROOT / "manifests" / "powerpolicy-example.yaml").read_text()))
            for label, policy in (("without_operator", {}), ("with_operator", {"name": "titan"})):
                port = free_port()
                config = write_daemon_config(work / f"{label}.yaml", work / f"state-{label}", [ups], port)
                data = yaml.safe_load(config.read_text())
                data.update(cluster={"kubeconfig": str(kubeconfig)}, policy=policy)
                config.write_text(yaml.safe_dump(data))
                log = work / f"{label}.log"
                daemon = start_daemon(config, log=log)
                wait_daemon_ready(daemon, port, log)
                if policy:
                    wait_for(lambda: _accepted(kubeconfig), 30, "the PowerPolicy Ready", log)
                    source = daemon_status(port)["policy"]["source"]
                    if source != "cluster":
                        raise RuntimeError(f"the operator did not put the cluster's policy in force: {source}")
                progress(f"footprint: operator RSS: {label}: settling {SETTLE_S:g} s, watching {OPERATOR_WATCH_S:g} s")
                time.sleep(SETTLE_S)
                rss, cpu_pct = _watch(daemon.pid, OPERATOR_WATCH_S)
                threads = len(list(Path(f"/proc/{daemon.pid}/task").iterdir()))
                stop_daemon(daemon)
                results[label] = {"rss_mean_mib": round(statistics.mean(rss), 1), "rss_max_mib": round(max(rss), 1),
                                  "cpu_pct_of_one_core": round(cpu_pct, 3), "threads": threads,
                                  "exit_code_on_sigterm": daemon.returncode}
                daemon = None
        finally:
            stop_daemon(daemon)
            if api is not None:
                stop_kubeapi(api)
            if ups is not None:
                ups.stop()
    yield {
        "result": "daemon_operator_rss",
        "upses": 1,
        "watch_s": OPERATOR_WATCH_S,
        **results,
        "operator_rss_delta_mean_mib": round(results["with_operator"]["rss_mean_mib"]
                                             - results["without_operator"]["rss_mean_mib"], 1),
        "baseline_python_import_hecate_daemon_rss_mib": round(import_daemon, 1),
        "baseline_python_import_hecate_operator_rss_mib": round(import_operator, 1),
    }


if __name__ == "__main__":
    parts = {"operator": operator_rss, "idle": run_idle}
    for result in (parts[sys.argv[1]]() if sys.argv[1:] and sys.argv[1] in parts else run()):
        print(json.dumps({"benchmark": "footprint", **result}), flush=True)
