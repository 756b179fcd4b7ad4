"""The lab's upsmon PID-file handling: a stale file never blocks a lab upsmon, a live one is named.

A throwaway ``sleep`` stands in for upsmon (its ``comm`` set through a symlink named
``upsmon``); the "host's" PID directory is a tmp dir, so the host's ``/run/nut`` is never read
or written here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hecate_lab.procs import wait_for
from hecate_lab.upsmon import host_upsmon, private_pid_argv, upsmon_env


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose name is ``upsmon`` (``sleep`` run through a symlink)."""
    link = tmp_path / "bin" / "upsmon"
    link.parent.mkdir()
    link.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(link), "30"])
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "upsmon", 5, "the exec")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _pidfile(dir: Path, text: str) -> Path:
    dir.mkdir(exist_ok=True)
    (dir / "upsmon.pid").write_text(text)
    return dir


def test_a_live_upsmon_named_by_the_pid_file_is_found(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    assert host_upsmon(_pidfile(tmp_path / "run", f"{sleeper.pid}\n")) == sleeper.pid


def test_a_stale_or_foreign_pid_file_is_not_an_upsmon(tmp_path: Path) -> None:
    assert host_upsmon(tmp_path / "absent") is None
    assert host_upsmon(_pidfile(tmp_path / "garbage", "not a pid\n")) is None
    assert host_upsmon(_pidfile(tmp_path / "empty", "")) is None
    other = subprocess.Popen(["sleep", "30"])  # alive, but another program reusing the PID
    try:
        assert host_upsmon(_pidfile(tmp_path / "reused", f"{other.pid}\n")) is None
    finally:
        other.kill()
        other.wait()
    assert host_upsmon(_pidfile(tmp_path / "dead", f"{other.pid}\n")) is None  # reaped: gone


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root, as the lab's upsmon does")
def test_upsmon_sees_its_lab_run_dir_in_place_of_the_hosts(tmp_path: Path) -> None:
    host = _pidfile(tmp_path / "host-run-nut", "4242\n")
    lab = _pidfile(tmp_path / "lab-run", "lab\n")
    show = ["/bin/sh", "-c", f'cat "{host}/upsmon.pid" && echo written > "{host}/upsmon.pid"']
    out = subprocess.run(private_pid_argv(show, lab, pidpath=host), env=upsmon_env(tmp_path, tmp_path, lab),
                         capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout == "lab\n"  # what upsmon would read: the lab's file
    assert (lab / "upsmon.pid").read_text() == "written\n"  # and where it writes
    assert (host / "upsmon.pid").read_text() == "4242\n"  # the host's file untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root, as the lab's upsmon does")
def test_a_missing_pid_directory_is_created_empty_and_the_lab_dir_takes_its_place(tmp_path: Path) -> None:
    """A fresh machine may lack /run/nut: upsmon 2.8.0 would then write nowhere (and fail its own check), so the
    mount point is created, empty, and upsmon writes in the lab's dir."""
    lab = _pidfile(tmp_path / "lab-run", "lab\n")
    absent = tmp_path / "absent"
    write = ["/bin/sh", "-c", f'echo written > "{absent}/upsmon.pid"']
    subprocess.run(private_pid_argv(write, lab, pidpath=absent), capture_output=True, text=True, timeout=10,
                   check=True)
    assert (lab / "upsmon.pid").read_text() == "written\n"
    assert absent.is_dir()
    assert list(absent.iterdir()) == []
