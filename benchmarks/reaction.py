"""Reaction latency: ``hecate daemon`` against NUT's own ``upsmon``, on the same real upsd.

Two results:

* **vs upsmon** -- a lab UPS goes from ``OL`` to ``OB LB``. Measured from t0, the moment
  upsd first serves the change, to Hecate's shutdown decision (``trigger.decided_at`` of
  the dry-run run it records in ``runs.json``), and to upsmon's first ``LOWBATT``
  NOTIFYCMD and its SHUTDOWNCMD. Both run with their defaults: Hecate polls every second,
  on mains and on battery (the ``trigger`` defaults, read from ``hecate.domain.config``);
  upsmon (the real ``/lib/nut/upsmon``, run directly because ``/usr/sbin/upsmon`` is
  Debian's wrapper that exits while ``/etc/nut/nut.conf`` says ``MODE=none``) gets no
  timing directive at all, so POLLFREQ 5, POLLFREQALERT 5,
  DEADTIME 15, HOSTSYNC 15 and FINALDELAY 5 apply. upsmon runs as a ``secondary`` so it
  never sets FSD on the lab UPS (a primary would, and upsd keeps FSD until it restarts);
  a secondary that sees ``OB LB`` waits up to HOSTSYNC for a primary before it gives up,
  then FINALDELAY, so its SHUTDOWNCMD comes about 20-25 s after its LOWBATT notice.
  upsmon is restarted fresh for every repetition (it exits after SHUTDOWNCMD).
* **threshold** -- the same daemon, no upsmon: the UPS is on battery with a runtime well
  above the threshold (default budget 300 s x 1.1 = 330 s), then the runtime drops to
  200 s; measured from t0 to the decision, which needs ``debounce_polls`` (3) polls at the
  on-battery interval (1 s).

t0 is the reference clock: a raw upsd connection of our own asks ``GET VAR`` every ~5 ms
right after the ``.dev`` file is rewritten (``dummy-ups`` picks the change up within its
1 s poll interval), and t0 is when the first reply with the new value arrives. Every
timestamp is this machine's wall clock (Hecate's ``time.time()``, the scripts' ``date``).
``dummy-ups`` serves a change only on its own 1 s tick, and every poll period here is a whole
number of seconds, so a poller left running would meet every change at the same point of
its cycle. So each repetition starts a fresh daemon and a fresh upsmon after random delays
(0-2 s and 0-5 s), then sleeps a random 0-5 s (0-1 s on battery) before the change. Before
a daemon is replaced, the benchmark checks that it cleared its dry-run latch once the UPS
was back on mains, as it must (``latch_cleared_on_mains``).

Each repetition with upsmon lasts ~30 s, nearly all of it upsmon's HOSTSYNC + FINALDELAY,
so the repetitions run in ``LANES`` independent lanes at once (own UPS, own daemon, own
upsmon); nothing is shared between lanes but the machine. The upsmon helper scripts
only append a timestamp to a file in the lab dir; POWERDOWNFLAG points there too, and
upsmon's configuration stays in the lab dir. Its PID file too: each upsmon runs in its own
mount namespace where ``/run/nut`` is its lane's run dir (``hecate_lab.upsmon``: NUT 2.8.0
ignores ``NUT_ALTPIDPATH`` for upsmon), so three lanes, a stale file or the host's own
upsmon never stop one from starting, and the host's ``/run/nut`` is never written. If the
host's upsmon really runs, the benchmark says so and stops before it starts anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from hecate.adapters.nut import parse_line
from hecate.domain.config import Trigger
from hecate_lab.procs import LabError, free_port, http_get, owned_by, start_daemon, stop_daemon, wait_for
from hecate_lab.ups import LAB_PASSWORD, LAB_USER, NUT_BIN, LabUps, start_ups
from hecate_lab.upsmon import NUT_PIDPATH, host_upsmon, private_pid_argv, upsmon_env

LANES = 3
REPS_PER_LANE = 4  # x LANES = 12 repetitions against upsmon
THRESHOLD_REPS_PER_LANE = 4  # x LANES = 12 repetitions of the runtime threshold
PROBE_INTERVAL_S = 0.005
RANDOM_DELAY_ON_MAINS_S = 5.0
RANDOM_DELAY_ON_BATTERY_S = 1.0

# Targets from issue #3.
TARGET_HECATE_MEDIAN_S = 1.5
TARGET_SPEEDUP = 3.0
# Defaults of the trigger section (debounce_polls is checked against the daemon's own status document).
TRIGGER_DEFAULTS = Trigger()
DEBOUNCE_POLLS = TRIGGER_DEFAULTS.debounce_polls
POLL_ON_BATTERY_S = TRIGGER_DEFAULTS.poll_interval_on_battery_s
TARGET_THRESHOLD_S = DEBOUNCE_POLLS * POLL_ON_BATTERY_S + 0.5

UPSMON_DEFAULTS = {"POLLFREQ": 5, "POLLFREQALERT": 5, "DEADTIME": 15, "HOSTSYNC": 15, "FINALDELAY": 5}
UPSMON_NOTIFY_TYPES = ["ONLINE", "ONBATT", "LOWBATT", "FSD", "COMMOK", "COMMBAD", "SHUTDOWN", "REPLBATT",
                       "NOCOMM", "NOPARENT"]

_print_lock = threading.Lock()


def progress(message: str) -> None:
    with _print_lock:
        print(message, file=sys.stderr, flush=True)


# -- hecate daemon -------------------------------------------------------------------------


def write_daemon_config(path: Path, state_dir: Path, ups: list[LabUps], http_port: int,
                        trigger: dict[str, float] | None = None) -> Path:
    """A hecate.yaml watching ``ups``; the trigger section is left at its defaults unless given."""
    doc: dict[str, Any] = {
        "host_name": "bench",
        "state_dir": str(state_dir),
        "ups": [{"name": u.name, "host": u.host, "port": u.port} for u in ups],
        "metrics": {"listen": f"127.0.0.1:{http_port}", "socket": str(path.with_suffix(".sock"))},
    }
    if trigger:
        doc["trigger"] = trigger
    path.write_text(yaml.safe_dump(doc))
    return path


def hecate_argv(*args: str) -> list[str]:
    """``hecate ARGS`` with the console script next to this interpreter (``python -m hecate`` otherwise)."""
    script = Path(sys.executable).with_name("hecate")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "hecate", *args]


def wait_daemon_ready(proc: subprocess.Popen[str], port: int, log: Path, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise LabError(f"hecate daemon exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:
            return False
    wait_for(ready, timeout, "hecate daemon /readyz", log)


def daemon_status(port: int) -> dict[str, Any]:
    try:
        code, body = http_get(port, "/v1/status")
    except OSError:
        return {}
    if code != 200:
        return {}
    doc: dict[str, Any] = json.loads(body)
    return doc


def load_runs(state_dir: Path) -> list[dict[str, Any]]:
    try:
        runs: list[dict[str, Any]] = json.loads((state_dir / "runs.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return runs


def wait_new_run(state_dir: Path, before: int, timeout: float) -> dict[str, Any] | None:
    """The first run recorded after ``before`` runs (read from the file, not over HTTP: no load on the daemon)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = load_runs(state_dir)
        if len(runs) > before:
            return runs[before]
        time.sleep(0.02)
    return None


def iso_ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# -- the reference clock ---------------------------------------------------------------------


class Probe:
    """Our own upsd connection asking one variable every ~5 ms: when upsd first serves a change."""

    def __init__(self, ups: LabUps) -> None:
        self.ups = ups
        self.sock = socket.create_connection((ups.host, ups.port), timeout=2)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def get(self, var: str) -> str:
        self.sock.sendall(f"GET VAR {self.ups.name} {var}\n".encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise LabError(f"upsd for {self.ups.name} closed the probe connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        words = parse_line(line.decode().rstrip("\r"))
        if len(words) != 4 or words[0] != "VAR":
            raise LabError(f"unexpected reply to GET VAR {var}: {line!r}")
        return words[3]

    def change(self, var: str, wanted: Callable[[str], bool], set_it: Callable[[], None],
               timeout: float = 10.0) -> tuple[float, float]:
        """Call ``set_it`` and return (t0, resolution): when upsd first served ``wanted``, and how
        long before that the probe last saw the old value."""
        if wanted(self.get(var)):
            raise LabError(f"{self.ups.name}: {var} already has the new value before the change")
        set_it()
        last = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.get(var)
            now = time.time()
            if wanted(value):
                return now, now - last
            last = now
            time.sleep(PROBE_INTERVAL_S)
        raise LabError(f"{self.ups.name}: upsd did not serve the new {var} within {timeout:g} s")


def list_clients(ups: LabUps) -> list[str]:
    """Who is logged in to this UPS on upsd (``LIST CLIENT``): upsmon is, Hecate only reads."""
    with socket.create_connection((ups.host, ups.port), timeout=2) as sock:
        sock.sendall(f"LIST CLIENT {ups.name}\nLOGOUT\n".encode())
        data = b""
        while b"END LIST CLIENT" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return [line.split()[2] for line in data.decode().splitlines() if line.startswith("CLIENT ")]


# -- upsmon ------------------------------------------------------------------------------


@dataclass
class Upsmon:
    """The real upsmon as a secondary of one lab UPS, with its own config and state in ``dir``."""

    dir: Path
    ups: LabUps
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def notify_log(self) -> Path:
        return self.dir / "notify.log"

    @property
    def shutdown_log(self) -> Path:
        return self.dir / "shutdowncmd.log"

    def write_config(self) -> None:
        state = self.dir / "state"
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        notify, shutdown = self.dir / "notify.sh", self.dir / "shutdowncmd.sh"
        # Harmless on purpose: each only appends a timestamp to a file in the lab dir.
        notify.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $NOTIFYTYPE" >> "{self.notify_log}"\n')
        shutdown.write_text(f'#!/bin/sh\ndate +%s.%N >> "{self.shutdown_log}"\n')
        for script in (notify, shutdown):
            os.chmod(script, 0o700)
        lines = [
            f"MONITOR {self.ups.name}@{self.ups.host}:{self.ups.port} 1 {LAB_USER} {LAB_PASSWORD} secondary",
            "MINSUPPLIES 1",
            f'SHUTDOWNCMD "{shutdown}"',
            f'NOTIFYCMD "{notify}"',
            f"POWERDOWNFLAG {self.dir / 'killpower'}",
            # No WALL: every notice goes to syslog and the script only.
            *(f"NOTIFYFLAG {kind} SYSLOG+EXEC" for kind in UPSMON_NOTIFY_TYPES),
            # No POLLFREQ, POLLFREQALERT, DEADTIME, HOSTSYNC, FINALDELAY: NUT's defaults.
        ]
        (self.dir / "upsmon.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "nut.conf").write_text("MODE=netclient\n")
        for name in ("upsmon.conf", "nut.conf"):
            os.chmod(self.dir / name, 0o640)

    def start(self) -> None:
        """upsmon in its own mount namespace, its PID file in the lab dir (``hecate_lab.upsmon``)."""
        run_dir = self.dir / "run"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        (run_dir / "upsmon.pid").unlink(missing_ok=True)  # the previous repetition's, killed
        env = upsmon_env(self.dir, self.dir / "state", run_dir)
        argv = private_pid_argv([str(NUT_BIN / "upsmon"), "-F", "-u", "root"], run_dir)
        with open(self.dir / "upsmon.log", "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def stop(self) -> None:
        """Stop upsmon's privileged parent and its child (its own process group), only if they are ours."""
        if self.pid is None:
            return
        pgid, marker = self.pid, str(self.dir)
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            self._reap()
            for pid in _group(pgid, marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while _group(pgid, marker) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.02)
            if not _group(pgid, marker):
                break
        self._reap()
        self.pid = self.proc = None

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.poll()


def _group(pgid: int, marker: str) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` that belong to ``marker``'s lab dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z" and owned_by(int(entry.name), marker):
            found.append(int(entry.name))
    return found


def read_notices(path: Path) -> list[tuple[float, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ts, _, kind = line.partition(" ")
        out.append((float(ts), kind.strip()))
    return out


def upsmon_version() -> str:
    out = subprocess.run([str(NUT_BIN / "upsmon"), "-h"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].rsplit(" ", 1)[-1] if first else "unknown"


# -- one lane: a UPS, a daemon, an upsmon --------------------------------------------------------


@dataclass
class Lane:
    index: int
    dir: Path
    stop_event: threading.Event
    ups: LabUps | None = None
    daemon: subprocess.Popen[str] | None = None
    http_port: int = 0
    upsmon: Upsmon | None = None
    config: Path | None = None
    latch_cleared: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    resolutions: list[float] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def daemon_log(self) -> Path:
        return self.dir / "daemon.log"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ups = start_ups(self.dir, f"lane{self.index}")
        self.http_port = free_port()
        self.config = write_daemon_config(self.dir / "hecate.yaml", self.state_dir, [self.ups], self.http_port)
        self.upsmon = Upsmon(self.dir / "upsmon", self.ups)
        self.upsmon.dir.mkdir(parents=True, exist_ok=True)
        self.upsmon.write_config()

    def stop(self) -> None:
        if self.upsmon is not None:
            self.upsmon.stop()
        stop_daemon(self.daemon, timeout=10)
        if self.ups is not None:
            self.ups.stop()

    def record(self, key: str, value: float | None) -> None:
        if value is None:
            self.misses[key] = self.misses.get(key, 0) + 1
        else:
            self.samples.setdefault(key, []).append(value)

    def _check_alive(self) -> None:
        if self.stop_event.is_set():
            raise LabError("stopped")
        if self.daemon is None or self.daemon.poll() is not None:
            raise LabError(f"lane {self.index}: the hecate daemon is gone; see {self.daemon_log}")

    def _wait_daemon(self, phase: str, what: str) -> None:
        """Until the daemon has no latched decision and sees the UPS in ``phase``."""
        def steady() -> bool:
            self._check_alive()
            doc = daemon_status(self.http_port)
            return bool(doc) and not doc["trigger"]["shutdown_triggered"] and doc["ups"][0]["phase"] == phase
        wait_for(steady, 15, f"lane {self.index}: {what}", self.daemon_log, interval=0.1)

    def _fresh_daemon(self) -> None:
        """Back on mains; check the running daemon clears its latch, then start a new one at a random phase.

        The lab's ``dummy-ups`` serves a change only on its own 1 s tick, and the daemon's
        poll period is a whole number of seconds too: a daemon kept running would meet every
        change at the same point of its cycle. A fresh start after a random delay does not.
        """
        assert self.ups is not None
        assert self.config is not None
        self.ups.set(ups_status="OL", battery_runtime=1800, battery_charge=100)
        if self.daemon is not None:
            # The latch clears on the first poll that sees every protecting UPS on mains (dry-run only).
            self._wait_daemon("on_mains", "the daemon to clear its dry-run latch back on mains")
            self.latch_cleared += 1
            stop_daemon(self.daemon, timeout=10)
            self.daemon = None
        time.sleep(random.uniform(0, 2))
        self.daemon = start_daemon(self.config, log=self.daemon_log)
        wait_daemon_ready(self.daemon, self.http_port, self.daemon_log)
        if daemon_status(self.http_port)["trigger"]["debounce_polls"] != DEBOUNCE_POLLS:
            raise LabError("the daemon does not run with the default debounce_polls")
        self._wait_daemon("on_mains", "the new daemon to see the UPS on mains")

    def vs_upsmon(self, reps: int) -> None:
        assert self.ups is not None
        assert self.upsmon is not None
        ups, mon = self.ups, self.upsmon
        for rep in range(reps):
            mon.stop()
            self._fresh_daemon()
            wait_for(lambda: not list_clients(ups), 10, f"lane {self.index}: old upsmon to log out")
            for path in (mon.notify_log, mon.shutdown_log):
                path.unlink(missing_ok=True)
            time.sleep(random.uniform(0, 5))  # a random phase of upsmon's 5 s cycle against dummy-ups' tick
            mon.start()
            wait_for(lambda: list_clients(ups), 15, f"lane {self.index}: upsmon to log in",
                     mon.dir / "upsmon.log")
            time.sleep(0.5)  # its first poll follows the login at once
            before = len(load_runs(self.state_dir))
            time.sleep(random.uniform(0, RANDOM_DELAY_ON_MAINS_S))
            self._check_alive()
            probe = Probe(ups)
            try:
                t0, resolution = probe.change("ups.status", lambda v: v == "OB LB",
                                              lambda: ups.set(ups_status="OB LB", wait=False))
            finally:
                probe.close()
            self.resolutions.append(resolution)
            run = wait_new_run(self.state_dir, before, 15)
            hecate = None
            if run is not None:
                if run["trigger"]["reason"] != "low_battery":
                    raise LabError(f"lane {self.index}: unexpected decision {run['trigger']}")
                hecate = iso_ts(run["trigger"]["decided_at"]) - t0
            self.record("hecate", hecate)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not mon.shutdown_log.exists():
                self._check_alive()
                time.sleep(0.1)
            time.sleep(0.2)
            notify = next((ts - t0 for ts, kind in read_notices(mon.notify_log) if kind == "LOWBATT"), None)
            shutdown = next((ts - t0 for ts, _ in read_notices(mon.shutdown_log)), None)
            self.record("upsmon_notify", notify)
            self.record("upsmon_shutdowncmd", shutdown)
            progress(f"reaction: lane {self.index} rep {rep + 1}/{reps}: hecate {_fmt(hecate)}, "
                     f"upsmon LOWBATT {_fmt(notify)}, SHUTDOWNCMD {_fmt(shutdown)}")
        mon.stop()

    def threshold(self, reps: int) -> None:
        assert self.ups is not None
        ups = self.ups
        for rep in range(reps):
            self._fresh_daemon()
            ups.set(ups_status="OB DISCHRG")
            self._wait_daemon("on_battery", "the daemon to see the UPS on battery")
            before = len(load_runs(self.state_dir))
            time.sleep(random.uniform(0, RANDOM_DELAY_ON_BATTERY_S))
            self._check_alive()
            probe = Probe(ups)
            try:
                t0, resolution = probe.change("battery.runtime", lambda v: float(v) == 200,
                                              lambda: ups.set(battery_runtime=200, wait=False))
            finally:
                probe.close()
            self.resolutions.append(resolution)
            run = wait_new_run(self.state_dir, before, 15)
            latency = None
            if run is not None:
                if run["trigger"]["reason"] != "runtime":
                    raise LabError(f"lane {self.index}: unexpected decision {run['trigger']}")
                latency = iso_ts(run["trigger"]["decided_at"]) - t0
            self.record("threshold", latency)
            progress(f"reaction: lane {self.index} threshold rep {rep + 1}/{reps}: hecate {_fmt(latency)}")
        self.ups.set(ups_status="OL", battery_runtime=1800)
        self._wait_daemon("on_mains", "the daemon to clear its dry-run latch back on mains")
        self.latch_cleared += 1


def _fmt(value: float | None) -> str:
    return "MISSED" if value is None else f"{value:.3f} s"


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.median(values), 3), round(max(values), 3)


def check_host_upsmon() -> None:
    """Stop with a clear error when an upsmon outside the lab runs (the host's own, left alone)."""
    pid = host_upsmon()
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = "?"
    raise LabError(f"an upsmon outside this benchmark runs: PID {pid} ({cmdline}), named by "
                   f"{NUT_PIDPATH / 'upsmon.pid'}. The benchmark does not touch the host's NUT; stop that "
                   "upsmon first (the host's own: its nut-monitor service), then run the benchmark again")


def run() -> Iterator[dict[str, Any]]:
    check_host_upsmon()
    stop_event = threading.Event()
    with tempfile.TemporaryDirectory(prefix="hecate-bench-reaction-") as tmp:
        lanes = [Lane(i, Path(tmp) / f"lane{i}", stop_event) for i in range(1, LANES + 1)]
        try:
            progress(f"reaction: starting {LANES} lanes (lab UPS + hecate daemon each)")
            for lane in lanes:
                lane.start()
            started = time.monotonic()
            with ThreadPoolExecutor(LANES) as pool:
                futures = [pool.submit(lane.vs_upsmon, REPS_PER_LANE) for lane in lanes]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop_event.set()
                    raise
            vs_wall = time.monotonic() - started
            started = time.monotonic()
            with ThreadPoolExecutor(LANES) as pool:
                futures = [pool.submit(lane.threshold, THRESHOLD_REPS_PER_LANE) for lane in lanes]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop_event.set()
                    raise
            threshold_wall = time.monotonic() - started
        finally:
            stop_event.set()
            for lane in lanes:
                lane.stop()

    def merged(key: str) -> list[float]:
        return [v for lane in lanes for v in lane.samples.get(key, [])]

    def missed(key: str) -> int:
        return sum(lane.misses.get(key, 0) for lane in lanes)

    resolution = round(max(v for lane in lanes for v in lane.resolutions), 4)
    hecate, notify, shutdown = merged("hecate"), merged("upsmon_notify"), merged("upsmon_shutdowncmd")
    h_med, h_max = _stats(hecate)
    n_med, n_max = _stats(notify)
    s_med, s_max = _stats(shutdown)
    speedup = round(n_med / h_med, 2) if n_med and h_med else None
    speedup_shutdown = round(s_med / h_med, 2) if s_med and h_med else None
    misses = {k: missed(k) for k in ("hecate", "upsmon_notify", "upsmon_shutdowncmd")}
    yield {
        "result": "reaction_vs_upsmon",
        "repetitions": LANES * REPS_PER_LANE,
        "lanes": LANES,
        "hecate_median_s": h_med, "hecate_max_s": h_max,
        "upsmon_notify_median_s": n_med, "upsmon_notify_max_s": n_max,
        "upsmon_shutdowncmd_median_s": s_med, "upsmon_shutdowncmd_max_s": s_max,
        "speedup_median": speedup,
        "speedup_shutdowncmd_median": speedup_shutdown,
        "misses": misses,
        "latch_cleared_on_mains": f"{sum(lane.latch_cleared for lane in lanes)}/"
                                  f"{LANES * (REPS_PER_LANE + THRESHOLD_REPS_PER_LANE)}",
        "hecate_settings": {"poll_interval_s": TRIGGER_DEFAULTS.poll_interval_s,
                            "poll_interval_on_battery_s": TRIGGER_DEFAULTS.poll_interval_on_battery_s,
                            "debounce_polls": DEBOUNCE_POLLS, "note": "trigger defaults, not overridden"},
        "upsmon_settings": {
            "version": upsmon_version(), "mode": "secondary", "MINSUPPLIES": 1, **UPSMON_DEFAULTS,
            "note": "no timing directive in upsmon.conf: NUT defaults; NOTIFYCMD/SHUTDOWNCMD only append "
                    "a timestamp; a secondary waits HOSTSYNC for a primary, then FINALDELAY, before SHUTDOWNCMD",
        },
        "t0": "first reply from upsd with the new ups.status, probed every 5 ms",
        "t0_resolution_max_s": resolution,
        "target_hecate_median_s": TARGET_HECATE_MEDIAN_S,
        "target_speedup": TARGET_SPEEDUP,
        "hecate_median_pass": h_med is not None and h_med <= TARGET_HECATE_MEDIAN_S and misses["hecate"] == 0,
        "speedup_pass": speedup is not None and speedup >= TARGET_SPEEDUP,
        "wall_s": round(vs_wall, 1),
        "samples": {"hecate_s": [round(v, 3) for v in hecate],
                    "upsmon_notify_s": [round(v, 3) for v in notify],
                    "upsmon_shutdowncmd_s": [round(v, 3) for v in shutdown]},
    }
    threshold = merged("threshold")
    t_med, t_max = _stats(threshold)
    yield {
        "result": "threshold_latency",
        "repetitions": LANES * THRESHOLD_REPS_PER_LANE,
        "lanes": LANES,
        "runtime_before_s": 1800, "runtime_after_s": 200, "threshold_s": 330.0,
        "hecate_median_s": t_med, "hecate_max_s": t_max,
        "misses": missed("threshold"),
        "target_s": TARGET_THRESHOLD_S,
        "target": "debounce_polls x poll_interval_on_battery_s + 0.5 s",
        "median_pass": t_med is not None and t_med <= TARGET_THRESHOLD_S,
        "max_pass": t_max is not None and t_max <= TARGET_THRESHOLD_S and missed("threshold") == 0,
        "wall_s": round(threshold_wall, 1),
        "samples_s": [round(v, 3) for v in threshold],
    }
