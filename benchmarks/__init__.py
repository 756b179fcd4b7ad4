"""Benchmarks: `python -m benchmarks [NAME...]` prints one JSON object per result."""

from __future__ import annotations

import statistics


def spread(values: list[float] | list[int], scale: float = 1.0) -> dict[str, float] | None:
    """``{"min", "median", "max"}`` of ``values`` times ``scale`` (None when there are none)."""
    if not values:
        return None
    scaled = [v * scale for v in values]
    return {"min": round(min(scaled), 3), "median": round(statistics.median(scaled), 3),
            "max": round(max(scaled), 3)}
