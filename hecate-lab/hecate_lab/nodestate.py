"""The state of one emulated lab node, shared by the node shell and the API simulator.

A lab node is a real ``sshd`` whose forced command (``hecate_lab.node_shell``) pretends
to be a k3s host. What that host "is" right now -- powered on or off, which of its k3s
services run -- lives in one small JSON file in the node's directory, so that the API
simulator (another process) can keep the Node object's Ready condition in step with it.

Format of ``<node dir>/state.json``::

    {"power": "on" | "off", "services": {"k3s": "active" | "inactive", ...}}

Servers run the ``k3s`` service, agents ``k3s-agent``; a host outside the cluster (role ``host``, a
NAS) runs ``nfs-server``, the unit its stop command stops, so tests see that it ran. Writes are atomic (temp file +
rename) because readers poll it concurrently. Stdlib only: the node shell imports this
module on every emulated command and must start fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


HOST_UNIT = "nfs-server"
"""The one unit a lab host outside the cluster runs (its ``hosts:`` stop command stops it)."""


def service_for(role: str) -> str:
    """The k3s systemd unit a node of this role runs (a host's own unit for role ``host``)."""
    if role == "host":
        return HOST_UNIT
    return "k3s" if role == "server" else "k3s-agent"


def initial_state(role: str) -> dict[str, Any]:
    return {"power": "on", "services": {service_for(role): "active"}}


def read_state(node_dir: Path) -> dict[str, Any]:
    with open(node_dir / STATE_FILE, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def write_state(node_dir: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=node_dir, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, node_dir / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def k3s_running(state: dict[str, Any]) -> bool:
    """True when the node is powered and any of its k3s services is active."""
    return state.get("power") == "on" and any(
        v == "active" for v in state.get("services", {}).values()
    )
