"""The lab: a real testbed on one machine (upsd + dummy-ups, sshd nodes, an emulated API).

Used by the integration tests, the drills, the demo and the benchmarks; the product never
imports it. Its own distribution (hecate-lab/pyproject.toml), so the product installs without
it and without its emulator; installed, it adds ``hecate lab ...`` to the product's CLI.
"""

import os
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("HECATE_LAB_DIR", "/tmp/hecate-lab"))  # noqa: S108 - root's lab
