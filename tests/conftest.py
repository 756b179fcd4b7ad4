"""Shared fixtures: a whole lab (real upsd, real sshd nodes, emulated API), always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hecate.lab.testbed import Lab, LabSpec


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """1 UPS, 1 server, 2 agents; namespaces when root."""
    running = Lab.up(tmp_path / "lab", LabSpec())
    try:
        yield running
    finally:
        running.down()
