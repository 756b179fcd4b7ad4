"""The lab: a real testbed on one machine (upsd + dummy-ups, sshd nodes, an emulated API).

Used by the integration tests, the drills and the demo; the product never imports it.
"""

import os
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("HECATE_LAB_DIR", "/tmp/hecate-lab"))  # noqa: S108 - root's lab
