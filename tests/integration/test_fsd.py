"""FSD on the protecting UPS: Hecate's executed shutdown sets it in a real upsd, a real upsmon acts on it.

The shutdown is the real one (``services.shutdown.run``: plan, executor, journal, run record) of a
coordinator without nodes, so its plan is ``set-fsd`` then ``local-poweroff`` (a marker file). The NUT
side is Debian's own: the lab's upsd + dummy-ups, ``upsc`` to read the status, and two ``upsmon``
processes with their own config, PID and state dir: a secondary on another machine (power value 1,
its SHUTDOWNCMD writes a marker) and a watcher configured as Hecate's installer configures the
coordinator's own upsmon (power value 0, ``MINSUPPLIES 0``), which must not act on FSD.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Quiet
from hecate.adapters import config as config_mod
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunRecord, RunResult
from hecate.services import shutdown
from hecate_lab.procs import free_port
from hecate_lab.ups import LAB_PASSWORD, LAB_USER, NUT_BIN, LabUps
from hecate_lab.upsmon import private_pid_argv, upsmon_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def fsd_config(ups: LabUps, tmp_path: Path, credentials: Path) -> HecateConfig:
    """A coordinator without nodes whose UPS has ``set_fsd``, written to ``hecate.yaml`` and loaded from it."""
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},  # no daemon there: `hecate status` polls itself
        "cluster": {"kubeconfig": str(tmp_path / "no-kubeconfig"), "nodes": []},
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port, "credentials_file": str(credentials),
                 "set_fsd": True}],
        "shutdown": {"execute": True, "flux_suspend": False,
                     "local_poweroff_command": ["/bin/sh", "-c", f"date +%s.%N > {tmp_path / 'coordinator-off'}"]},
    }))
    return config_mod.load(path, {})


def hecate_status(tmp_path: Path, *flags: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hecate", "status", "--config", str(tmp_path / "hecate.yaml"),
                          *flags], capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout, out.stderr
    return out.stdout


def credentials(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "nut.credentials"
    path.write_text(line + "\n")
    path.chmod(0o600)
    return path


def run(config: HecateConfig) -> RunRecord:
    return asyncio.run(shutdown.run(config, {"source": "test"}, Quiet()))


def wait(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def clients(ups: LabUps) -> list[str]:
    out = subprocess.run(["upsc", "-c", ups.address], capture_output=True, text=True, timeout=5, check=False)
    return out.stdout.split()


class Upsmon:
    """A real ``upsmon`` with its own config, PID and state dir; its SHUTDOWNCMD and NOTIFYCMD write markers."""

    def __init__(self, dir: Path, ups: LabUps, power_value: int, min_supplies: int) -> None:
        self.dir = dir
        dir.mkdir(parents=True)
        (dir / "state").mkdir(mode=0o700)
        self.shutdown_marker = dir / "shutdown-ran"
        self.notify_log = dir / "notify.log"
        self.log = dir / "upsmon.log"
        conf = dir / "upsmon.conf"
        conf.write_text(
            f"MONITOR {ups.name}@{ups.host}:{ups.port} {power_value} {LAB_USER} {LAB_PASSWORD} secondary\n"
            f"MINSUPPLIES {min_supplies}\n"
            f"SHUTDOWNCMD \"/bin/sh -c 'date +%s.%N > {self.shutdown_marker}'\"\n"
            f"NOTIFYCMD \"/bin/sh -c 'echo \\\"$NOTIFYTYPE\\\" >> {self.notify_log}'\"\n"
            "NOTIFYFLAG FSD EXEC\n"
            "POLLFREQ 1\nPOLLFREQALERT 1\nFINALDELAY 0\nHOSTSYNC 2\nDEADTIME 5\n"
            f"POWERDOWNFLAG {dir / 'killpower'}\n")
        conf.chmod(0o600)
        (dir / "run").mkdir(mode=0o700)
        env = upsmon_env(dir, dir / "state", dir / "run")
        # -p: one privileged process (no forked child to clean up); -D: foreground, its log in our file.
        argv = private_pid_argv([str(NUT_BIN / "upsmon"), "-p", "-D"], dir / "run")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def pid_file_is_its_own(self) -> bool:
        return (self.dir / "run" / "upsmon.pid").read_text().strip() == str(self.proc.pid)

    def notified(self, kind: str) -> bool:
        return self.notify_log.exists() and kind in self.notify_log.read_text().split()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def upsmons(ups: LabUps, tmp_path: Path) -> Iterator[tuple[Upsmon, Upsmon]]:
    started: list[Upsmon] = []
    try:
        started.append(Upsmon(tmp_path / "upsmon-secondary", ups, power_value=1, min_supplies=1))
        started.append(Upsmon(tmp_path / "upsmon-watcher", ups, power_value=0, min_supplies=0))
        # Both logged in to upsd (LOGIN): each watches the UPS from now on.
        wait(lambda: len(clients(ups)) >= 2 and all(m.proc.poll() is None for m in started),
             20, "both upsmon to log in to upsd", started[0].log)
        assert all(m.pid_file_is_its_own() for m in started)
        yield started[0], started[1]
    finally:
        for monitor in started:
            monitor.stop()


def test_fsd_set_in_upsd_and_a_real_upsmon_secondary_shuts_down(
        ups: LabUps, tmp_path: Path, upsmons: tuple[Upsmon, Upsmon]) -> None:
    secondary, watcher = upsmons
    assert "FSD" not in ups.read()["ups.status"]
    record = run(fsd_config(ups, tmp_path, credentials(tmp_path, f"{LAB_USER}:{LAB_PASSWORD}")))

    assert record.result is RunResult.success, record.not_done
    assert [s.name for s in record.stages] == ["set-fsd", "local-poweroff"]
    assert record.changes["fsd_set"] == [ups.name]
    assert "FSD set in upsd (as primary)" in record.stages[0].detail
    assert "FSD" in ups.read()["ups.status"].split()  # upsd's own view, read with upsc
    # The secondary on "another machine" runs its SHUTDOWNCMD by NUT's own rules.
    wait(secondary.shutdown_marker.exists, 30, "the upsmon secondary's SHUTDOWNCMD", secondary.log)
    assert secondary.notified("FSD")
    # The watcher (power value 0, MINSUPPLIES 0, as on the coordinator) sees FSD and only logs it.
    wait(lambda: watcher.notified("FSD"), 15, "the watching upsmon to see FSD", watcher.log)
    poll_after = time.monotonic() + 2.5  # two more of its polls (POLLFREQALERT 1)
    while time.monotonic() < poll_after:
        time.sleep(0.1)
    assert not watcher.shutdown_marker.exists()
    assert watcher.proc.poll() is None

    # `hecate status` shows FSD in upsd and that Hecate's shutdown set it.
    [row] = json.loads(hecate_status(tmp_path, "--json"))["ups"]
    assert (row["fsd"], row["set_fsd"], row["fsd_set_by_hecate"]["run"]) == (True, True, record.id)
    assert f"FSD:       {ups.name}: set in upsd, set by Hecate (shutdown {record.id})" in hecate_status(tmp_path)


def test_wrong_credentials_fail_the_step_clearly_and_the_shutdown_goes_on(ups: LabUps, tmp_path: Path) -> None:
    record = run(fsd_config(ups, tmp_path, credentials(tmp_path, f"{LAB_USER}:not-the-password")))

    assert record.result is RunResult.degraded
    [failed] = record.not_done
    assert (failed.stage, failed.action, failed.target, failed.status.value) == (
        "set-fsd", "set-fsd", ups.name, "failed")
    assert "upsd refused to set FSD for user 'hecate'" in failed.detail
    assert "upsmon primary" in failed.detail
    assert "not-the-password" not in failed.detail
    assert "fsd_set" not in record.changes
    assert (tmp_path / "coordinator-off").exists()  # the rest of the shutdown went on
    assert "FSD" not in ups.read()["ups.status"].split()
