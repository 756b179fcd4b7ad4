"""Lab bring-up and teardown time for 1 UPS + N nodes (N = 3, 20), both network modes.

The baseline in the same run is the UPS alone (what every lab pays regardless of N), so
the per-node cost is visible: (total - ups_only) / N.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hecate.lab.testbed import Lab, LabSpec, netns_available

REPEAT = 3


def _measure(spec: LabSpec) -> tuple[list[float], list[float]]:
    ups_times, down_times = [], []
    for _ in range(REPEAT):
        with tempfile.TemporaryDirectory(prefix="hecate-bench-") as tmp:
            started = time.perf_counter()
            lab = Lab.up(Path(tmp) / "lab", spec)
            up = time.perf_counter() - started
            started = time.perf_counter()
            lab.down()
            ups_times.append(up)
            down_times.append(time.perf_counter() - started)
    return ups_times, down_times


def run() -> Iterator[dict[str, Any]]:
    modes = [False] + ([True] if netns_available() else [])
    for netns in modes:
        mode = "netns" if netns else "loopback"
        print(f"lab_bringup: {mode}, UPS only (baseline)", file=sys.stderr)
        base_up, base_down = _measure(LabSpec(servers=1, agents=0, netns=netns))
        for n in (3, 20):
            print(f"lab_bringup: {mode}, 1 UPS + {n} nodes", file=sys.stderr)
            up, down = _measure(LabSpec(servers=1, agents=n - 1, netns=netns))
            yield {
                "mode": mode, "ups": 1, "nodes": n, "repeat": REPEAT,
                "up_s_median": round(statistics.median(up), 3), "up_s_max": round(max(up), 3),
                "down_s_median": round(statistics.median(down), 3), "down_s_max": round(max(down), 3),
                "baseline_1ups_1node_up_s_median": round(statistics.median(base_up), 3),
                "baseline_1ups_1node_down_s_median": round(statistics.median(base_down), 3),
                "per_extra_node_up_ms": round(
                    1000 * (statistics.median(up) - statistics.median(base_up)) / (n - 1), 1),
            }
