"""Shared fixtures: a whole lab (real upsd, real sshd nodes, emulated API), always torn down."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(scope="session")
def update_docs() -> ModuleType:
    """scripts/update-docs.py (a script, not a module of a package), loaded once."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "update-docs.py"
    spec = importlib.util.spec_from_file_location("update_docs", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
