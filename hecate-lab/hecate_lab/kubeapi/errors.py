"""The one error of the lab's Kubernetes API: it could not be started or configured.
"""

from __future__ import annotations

from hecate_lab.procs import LabError


class LabKubeApiError(LabError):
    """The lab's Kubernetes API could not be started or configured; the message says why."""
