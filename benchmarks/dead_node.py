"""What one dead node costs an executed shutdown, at the default SSH timeouts.

A lab of 1 k3s server + 2 agents (network namespaces when root, else loopback) with the
emulated API and its seeded workloads; one agent (``titan-a1``) is dead before the run: its
sshd is stopped and, in namespace mode, its namespace removed, so its address stops
answering. ``hecate shutdown --execute`` runs as a subprocess (the real CLI: exit code and
summary as a person sees them) with the lab's configuration, except ``ssh.connect_timeout_s``
and ``ssh.command_timeout_s`` at their defaults (10 s, 120 s) and a 1 s drain timeout.
Measured in the same run: the same shutdown with every node alive (``alive_s``), then
:data:`REPEAT` shutdowns with the dead node (one result each).

Reported: the wall time of each (``dead_s``, ``alive_s``), ``dead_node_cost_s`` (their
difference: the battery one dead node costs), the time each SSH stage spent on the dead node
(``dead_node_steps``: the run record's per-stage detail is the source), the exit code and
the run's result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hecate_lab import cluster_seed, nodes
from hecate_lab.cluster_sim import Delays
from hecate_lab.testbed import Lab, LabSpec

DEAD = "titan-a1"
REPEAT = 3
"""Dead-node runs: a removed address fails either at once (no route, ~3 s of ARP) or after the connect timeout."""


def progress(message: str) -> None:
    print(f"dead_node: {message}", file=sys.stderr, flush=True)


def _config(lab: Lab) -> Path:
    data = lab.hecate_config()
    for key in ("connect_timeout_s", "command_timeout_s"):
        data["ssh"].pop(key, None)  # the defaults
    data["shutdown"].update({"execute": True, "drain_timeout_s": 1})
    path = lab.dir / "hecate-bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if data["shutdown"]["local_poweroff_command"][:2] != ["sh", "-c"]:
        raise RuntimeError("refusing to run: the lab's local_poweroff_command is not the lab's")
    return path


def _shutdown(lab: Lab) -> dict[str, Any]:
    path = _config(lab)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hecate", "shutdown", "--execute", "--config", str(path)],
                          capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - started
    runs = json.loads((lab.state_dir / "runs.json").read_text())
    record = runs[-1]
    steps = {s["name"]: s["detail"] for s in record["stages"] if DEAD in s["detail"]}
    return {"wall_s": round(elapsed, 2), "exit_code": done.returncode, "result": record["result"],
            "duration_s": record["duration_s"], "stages": {s["name"]: s["duration_s"] for s in record["stages"]},
            "dead_node_steps": steps, "stdout_tail": done.stdout.splitlines()[-12:],
            "stderr_tail": done.stderr.splitlines()[-5:]}


def _one(dead: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hecate-bench-") as tmp:
        lab = Lab.up(Path(tmp) / "lab", LabSpec(ups=(), servers=1, agents=2, delays=Delays(api=0.2, node=0.1, pod=0.1)))
        try:
            cluster_seed.seed_workloads(lab.kubeconfig)
            if dead:
                nodes.stop_nodes([lab.node(DEAD)], lab_id=None)
            return {"netns": lab.netns, **_shutdown(lab)}
        finally:
            lab.down()


def run() -> Iterator[dict[str, Any]]:
    progress("all nodes alive")
    alive = _one(dead=False)
    progress(f"  {alive['wall_s']} s, exit {alive['exit_code']}, {alive['result']}")
    for i in range(REPEAT):
        progress(f"{DEAD} dead ({i + 1}/{REPEAT})")
        dead = _one(dead=True)
        progress(f"  {dead['wall_s']} s, exit {dead['exit_code']}, {dead['result']}; stages {dead['stages']}")
        yield {"alive_s": alive["wall_s"], "dead_s": dead["wall_s"],
               "dead_node_cost_s": round(dead["wall_s"] - alive["wall_s"], 2),
               "alive": alive, "dead": dead}
