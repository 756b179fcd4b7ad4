"""What a lab machine's ``k3s.service`` / ``k3s-agent.service`` runs instead of k3s.

A lab machine (:mod:`hecate_lab.machines`) carries real systemd units named like k3s's, disabled
at boot; their ``ExecStart`` is this script, run by the machine's own ``/usr/bin/python3`` from
the host's ``/usr`` (bound read-only), the lab's package bound read-only at
``/usr/local/lib/hecate-lab``. It stands in for k3s where Hecate can see it:

- **Ready.** Started, it marks its unit ``active`` in the node's ``state.json``
  (:mod:`hecate_lab.nodestate`, in the node directory the machine sees at
  ``/var/lib/hecate-lab``): the emulated API's simulator reads that file and turns the Node
  Ready, with its own delays. ``ExecStopPost`` (``--stopped``) marks it ``inactive`` however the
  process ended, so a unit killed at ``TimeoutStopSec`` goes NotReady too.
- **Containers.** Like k3s (``KillMode=process``) it leaves a child behind when stopped, a
  ``k3s-shim`` that only ``k3s-killall.sh`` removes.
- **Stopping takes time.** On SIGTERM it waits ``stop_s`` (``k3s.json`` in the node directory,
  read when the signal comes) before it exits; ``ignore_sigterm`` makes it ignore the signal,
  so ``systemctl stop`` runs into the unit's ``TimeoutStopSec`` and systemd kills it.

Standard library only (it runs on the machine's Python, not the lab's venv).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script inside the machine: import the bound package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hecate_lab import nodestate

#: Where a machine sees its node directory (state.json, k3s.json).
NODE_DIR = Path("/var/lib/hecate-lab")
#: The agent's settings in the node directory: {"stop_s": float, "ignore_sigterm": bool}.
CONFIG_FILE = "k3s.json"
SHIM_MARK = "k3s-shim"


def read_config(node_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((node_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark(node_dir: Path, unit: str, value: str) -> None:
    """Set this unit's state in state.json (the other fields as they are)."""
    try:
        state = nodestate.read_state(node_dir)
    except (OSError, ValueError):
        state = {"power": "on", "services": {}}
    state["power"] = "on"
    state.setdefault("services", {})[unit] = value
    nodestate.write_state(node_dir, state)


def _notify(message: str) -> None:
    """sd_notify(3): tell systemd the unit started (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def run(node_dir: Path, unit: str) -> int:
    stopping = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if read_config(node_dir).get("ignore_sigterm"):
            print(f"{unit}: SIGTERM ignored (lab fault)", flush=True)
            return
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    # The "containers": left behind on stop (KillMode=process), as k3s leaves its shims.
    subprocess.Popen(
        ["/bin/bash", "-c", f"exec -a {SHIM_MARK} sleep infinity"], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark(node_dir, unit, "active")
    print(f"{unit}: running (lab stand-in for k3s)", flush=True)
    _notify("READY=1")
    while not stopping:
        signal.pause()
    configured = read_config(node_dir).get("stop_s", 0)
    stop_s = float(configured) if isinstance(configured, int | float | str) else 0.0
    print(f"{unit}: stopping, takes {stop_s:g} s", flush=True)
    _notify("STOPPING=1")
    time.sleep(stop_s)
    mark(node_dir, unit, "inactive")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--stopped":
        mark(Path(argv[1]), argv[2], "inactive")
        return 0
    if len(argv) == 2:
        return run(Path(argv[0]), argv[1])
    print("usage: k3s_agent.py NODE_DIR UNIT | --stopped NODE_DIR UNIT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
