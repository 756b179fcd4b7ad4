"""Lab UPSes: the real NUT ``upsd`` serving the real ``dummy-ups`` driver.

Each lab UPS is its own pair of processes -- a ``dummy-ups`` driver reading a ``.dev``
file and an ``upsd`` on a free loopback port -- run straight from ``/lib/nut`` with
``NUT_CONFPATH``/``NUT_STATEPATH`` pointing into the lab dir, so nothing of the
machine's own NUT setup is used or touched. One upsd per UPS lets a test take one UPS's
server down while another keeps answering, as with two UPSes on two hosts.

Tests change what the UPS reports with :meth:`LabUps.set`: the ``.dev`` file is
rewritten atomically and its mtime pushed strictly past the previous whole second
(``dummy-ups`` compares whole-second mtimes and would miss a same-second change), then
the call waits until upsd actually serves the new values, read back with the real
``upsc`` client -- independent of Hecate's own NUT adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hecate_lab.procs import LabError, free_port, kill_group, wait_for

__all__ = ["LabError", "LabUps", "start_ups"]

NUT_BIN = Path(os.environ.get("HECATE_LAB_NUT_BIN", "/lib/nut"))
LAB_USER = "hecate"
LAB_PASSWORD = "lab-only-password"  # noqa: S105 - a throwaway lab credential on loopback

DEFAULT_VARS: dict[str, str] = {
    "device.mfr": "Hecate Lab",
    "device.model": "dummy-ups",
    "ups.mfr": "Hecate Lab",
    "ups.model": "Lab UPS 1500",
    "ups.status": "OL",
    "battery.charge": "100",
    "battery.runtime": "1800",
    "ups.load": "25",
    "input.voltage": "230.0",
    "output.voltage": "230.0",
    "battery.voltage": "27.0",
}


@dataclass
class LabUps:
    """One lab UPS: its name, where upsd listens, its files and its processes."""

    name: str
    dir: Path
    port: int
    host: str = "127.0.0.1"
    upsd_pid: int | None = None
    driver_pid: int | None = None
    values: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VARS))
    _mtime: int = 0

    # -- persistence (lab.json) ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dir": str(self.dir), "host": self.host, "port": self.port,
            "upsd_pid": self.upsd_pid, "driver_pid": self.driver_pid,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabUps:
        ups = cls(name=data["name"], dir=Path(data["dir"]), port=data["port"], host=data["host"],
                  upsd_pid=data.get("upsd_pid"), driver_pid=data.get("driver_pid"))
        ups.values = _read_dev(ups.dev_path) if ups.dev_path.exists() else dict(DEFAULT_VARS)
        ups._mtime = int(ups.dev_path.stat().st_mtime) if ups.dev_path.exists() else 0
        return ups

    @property
    def dev_path(self) -> Path:
        return self.dir / f"{self.name}.dev"

    @property
    def credentials_file(self) -> Path:
        """``username:password`` for instant commands, as Hecate's ``ups[].credentials_file`` expects."""
        return self.dir / "credentials"

    @property
    def address(self) -> str:
        return f"{self.name}@{self.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "NUT_CONFPATH": str(self.dir), "NUT_STATEPATH": str(self.dir / "state")}

    # -- lifecycle -----------------------------------------------------------------

    def write_config(self) -> None:
        (self.dir / "state").mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "state", 0o700)
        files = {
            "nut.conf": "MODE=standalone\n",
            "ups.conf": (
                "maxretry = 3\n"
                f"[{self.name}]\n  driver = dummy-ups\n  port = {self.dev_path.name}\n"
                "  mode = dummy-once\n  pollinterval = 1\n  desc = \"Hecate lab UPS\"\n"
            ),
            "upsd.conf": f"LISTEN {self.host} {self.port}\nMAXAGE 15\n",
            "upsd.users": (
                f"[{LAB_USER}]\n  password = {LAB_PASSWORD}\n  upsmon primary\n"
                "  actions = SET FSD\n  instcmds = ALL\n"
            ),
        }
        files["credentials"] = f"{LAB_USER}:{LAB_PASSWORD}\n"
        for name, text in files.items():
            (self.dir / name).write_text(text)
            # Hecate refuses a credentials file others may read (`hecate config validate`, the daemon).
            os.chmod(self.dir / name, 0o600 if name == "credentials" else 0o640)
        self._write_dev()

    def start_driver(self) -> None:
        log = open(self.dir / "driver.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(NUT_BIN / "dummy-ups"), "-a", self.name, "-F", "-u", "root"],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.driver_pid = proc.pid
        wait_for(lambda: any((self.dir / "state").glob(f"dummy-ups-{self.name}*")), 10,
                  f"dummy-ups for {self.name} to create its socket", self.dir / "driver.log")

    def start_upsd(self) -> None:
        log = open(self.dir / "upsd.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(NUT_BIN / "upsd"), "-F", "-u", "root"],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.upsd_pid = proc.pid

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until upsd serves this UPS with a real status (not ``WAIT``)."""
        def ready() -> bool:
            status = self.read().get("ups.status", "")
            return status not in ("", "WAIT")
        wait_for(ready, timeout, f"upsd to serve a status for {self.name}", self.dir / "upsd.log")

    def stop_upsd(self) -> None:
        kill_group(self.upsd_pid, marker=str(self.dir))
        self.upsd_pid = None

    def stop_driver(self) -> None:
        kill_group(self.driver_pid, marker=str(self.dir))
        self.driver_pid = None

    def stop(self) -> None:
        self.stop_upsd()
        self.stop_driver()

    # -- what the UPS reports --------------------------------------------------------

    def set(self, wait: bool = True, timeout: float = 10.0, **variables: str | float | int) -> None:
        """Change variables (``ups_status="OB LB"``, ``battery_runtime=120``); ``_`` stands for ``.``.

        Waits until upsd serves the new values unless ``wait`` is false.
        """
        self.set_vars({k.replace("_", "."): str(v) for k, v in variables.items()}, wait, timeout)

    def set_vars(self, changes: dict[str, str], wait: bool = True, timeout: float = 10.0) -> None:
        """Change variables by their NUT names (``{"ups.status": "OB"}``); see :meth:`set`."""
        self.values.update(changes)
        self._write_dev()
        with open(self.dir / "events.jsonl", "a") as fh:  # the demo's timeline
            fh.write(json.dumps({"t": time.time(), "ups": self.name, "set": changes}) + "\n")
        if wait:
            wait_for(lambda: _matches(self.read(), changes), timeout,
                      f"upsd to serve {changes} for {self.name}", self.dir / "driver.log")

    def play(self, steps: Sequence[tuple[int, Mapping[str, str | float | int]]]) -> None:
        """Play an outage trace through ``dummy-ups`` itself: each step waits its whole seconds (a ``TIMER``
        line, as NUT's own sequence files do), then serves its changes (NUT names, ``{"battery.charge": 80}``).
        Returns at once; the driver plays the steps in order, once, and the last step's values stay served.
        :meth:`set` afterwards starts from the trace's last values.
        """
        for delay, _ in steps:
            if int(delay) != delay or delay < 0:
                raise ValueError(f"a trace step waits whole seconds (dummy-ups' TIMER), not {delay!r}")
        first = dict(self.values)
        trace = []
        for delay, changes in steps:
            trace.append(f"TIMER {int(delay)}\n" + "".join(f"{k}: {v}\n" for k, v in changes.items()))
            self.values.update({k: str(v) for k, v in changes.items()})
        with open(self.dir / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"t": time.time(), "ups": self.name,
                                 "play": [[d, {k: str(v) for k, v in c.items()}] for d, c in steps]}) + "\n")
        self._write_dev(first, "".join(trace))

    def read(self) -> dict[str, str]:
        """Every variable upsd serves for this UPS right now, read with the real ``upsc``."""
        try:
            out = subprocess.run(
                ["upsc", self.address], capture_output=True, text=True, timeout=5, check=False
            )
        except subprocess.TimeoutExpired:
            return {}
        if out.returncode != 0:
            return {}
        return _parse_upsc(out.stdout)

    def _write_dev(self, values: Mapping[str, str] | None = None, trace: str = "") -> None:
        text = "".join(f"{k}: {v}\n" for k, v in sorted((self.values if values is None else values).items()))
        text += trace
        tmp = self.dev_path.with_suffix(".dev.tmp")
        tmp.write_text(text)
        # Readable by a driver that runs as another user (NUT's own units, in the coordinator machine: `nut`).
        os.chmod(tmp, 0o644)
        # dummy-ups re-reads the file when its whole-second mtime changes: always move it on.
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        os.replace(tmp, self.dev_path)


def start_ups(workdir: Path, name: str, values: dict[str, str] | None = None) -> LabUps:
    """Start one lab UPS (driver + upsd) under ``workdir/ups/<name>`` and wait until it serves; ``values``: its
    initial variables (default :data:`DEFAULT_VARS`, e.g. without ``battery.runtime`` for one that reports none)."""
    ups = LabUps(name=name, dir=workdir / "ups" / name, port=free_port(),
                 values=dict(DEFAULT_VARS if values is None else values))
    ups.dir.mkdir(parents=True, exist_ok=True)
    ups.write_config()
    try:
        ups.start_driver()
        ups.start_upsd()
        ups.wait_ready()
    except BaseException:
        ups.stop()
        raise
    return ups


def _parse_upsc(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _read_dev(path: Path) -> dict[str, str]:
    return _parse_upsc(path.read_text())


def _matches(served: dict[str, str], wanted: dict[str, str]) -> bool:
    for key, value in wanted.items():
        got = served.get(key)
        if got is None:
            return False
        if got != value:
            try:
                if float(got) != float(value):
                    return False
            except ValueError:
                return False
    return True
