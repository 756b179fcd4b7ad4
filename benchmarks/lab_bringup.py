"""Lab bring-up and teardown time for 1 UPS + N nodes (N = 3, 20), in each network mode.

Measured side by side in the same run: the whole lab (``Lab.up``/``down``), the N sshd
nodes alone, and the UPS alone (upsd + dummy-ups). The lab starts the UPS and the nodes
concurrently, so its bring-up is about max(UPS, nodes) + the emulated API.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hecate_lab import nodes
from hecate_lab.testbed import Lab, LabSpec, netns_available
from hecate_lab.ups import start_ups

REPEAT = 3


def _timed(up: Callable[[Path], Any], down: Callable[[Any], None]) -> tuple[float, float]:
    """Median up and down seconds over REPEAT fresh directories."""
    ups, downs = [], []
    for _ in range(REPEAT):
        with tempfile.TemporaryDirectory(prefix="hecate-bench-") as tmp:
            started = time.perf_counter()
            thing = up(Path(tmp))
            ups.append(time.perf_counter() - started)
            started = time.perf_counter()
            down(thing)
            downs.append(time.perf_counter() - started)
    return round(statistics.median(ups), 3), round(statistics.median(downs), 3)


def _nodes_only(n: int, netns: bool) -> Callable[[Path], list[nodes.LabNode]]:
    def up(tmp: Path) -> list[nodes.LabNode]:
        key = nodes.make_client_key(tmp / "ssh")
        specs = [nodes.NodeSpec("titan-s1", "server")] + [
            nodes.NodeSpec(f"titan-a{i}", "agent") for i in range(1, n)]
        return nodes.start_nodes(tmp / "nodes", specs, client_pubkey=key.with_name(key.name + ".pub"),
                                 known_hosts=tmp / "ssh" / "known_hosts", netns=netns, lab_id="bench",
                                 subnet="10.78.1")
    return up


def run() -> Iterator[dict[str, Any]]:
    print("lab_bringup: UPS alone", file=sys.stderr)
    ups_up, ups_down = _timed(lambda tmp: start_ups(tmp, "pyrphoros"), lambda u: u.stop())
    for netns in [False] + ([True] if netns_available() else []):
        mode = "netns" if netns else "loopback"
        for n in (3, 20):
            print(f"lab_bringup: {mode}, 1 UPS + {n} nodes", file=sys.stderr)
            spec = LabSpec(servers=1, agents=n - 1, netns=netns)
            lab_up, lab_down = _timed(
                lambda tmp, spec=spec: Lab.up(tmp / "lab", spec), lambda lab: lab.down())
            nodes_up, nodes_down = _timed(
                _nodes_only(n, netns), lambda started: nodes.stop_nodes(started, lab_id="bench"))
            yield {
                "mode": mode, "ups": 1, "nodes": n, "repeat": REPEAT,
                "lab_up_s": lab_up, "lab_down_s": lab_down,
                "nodes_only_up_s": nodes_up, "nodes_only_down_s": nodes_down,
                "ups_only_up_s": ups_up, "ups_only_down_s": ups_down,
            }
