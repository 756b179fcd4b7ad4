"""Run the benchmarks: ``python -m benchmarks [NAME ...]`` (all by default).

Each benchmark prints one JSON object per result on stdout; progress goes to stderr.
"""

from __future__ import annotations

import importlib
import json
import sys

BENCHMARKS = ["lab_bringup", "reaction", "footprint", "shutdown", "coldstart", "dead_node", "peer"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        for result in module.run():
            print(json.dumps({"benchmark": name, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
