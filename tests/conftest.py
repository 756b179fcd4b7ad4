"""Shared fixtures: a whole lab (real upsd, real sshd nodes, emulated API), always torn down;
a small tmpfs to fill up or remount read-only, always unmounted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hecate_lab.testbed import Lab, LabSpec
from hecate_lab.ups import LabUps, start_ups


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """1 UPS, 1 server, 2 agents; namespaces when root."""
    running = Lab.up(tmp_path / "lab", LabSpec())
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def bare_lab(tmp_path: Path) -> Iterator[Lab]:
    """Nodes and the emulated API only (1 server, 2 agents), no UPS: saves upsd's 3 s start."""
    running = Lab.up(tmp_path / "lab", LabSpec(ups=()))
    try:
        yield running
    finally:
        running.down()


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[LabUps]:
    """One lab UPS (real upsd + dummy-ups) named pyrphoros, on mains."""
    lab_ups = start_ups(tmp_path, "pyrphoros")
    try:
        yield lab_ups
    finally:
        lab_ups.stop()


class SmallFs:
    """A real, small tmpfs: ``fill()`` it (or run :meth:`fill_argv` as a command), ``read_only()`` it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill_argv(self) -> list[str]:
        """A command that uses up every byte and then every inode (no file can be created or grown)."""
        return ["sh", "-c", f"dd if=/dev/zero of={self.path}/.fill bs=4k 2>/dev/null; i=0; "
                            f"while touch {self.path}/.fill-$i 2>/dev/null; do i=$((i+1)); done; exit 0"]

    def fill(self) -> None:
        subprocess.run(self.fill_argv(), check=True, capture_output=True, timeout=30)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 512 KiB tmpfs with 64 inodes (skipped where tmpfs cannot be mounted); unmounted after the test."""
    path = tmp_path / "smallfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,nr_inodes=64,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up or make read-only (needs root and a kernel that allows it): "
                    f"{mounted.stderr.strip()}")
    try:
        yield SmallFs(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # still busy: detach it
