"""The simulator's timeline: what happened in the emulated cluster, as JSON lines in a file.

The simulator appends (:class:`EventLog`); ``hecate lab timeline`` reads them back
(:func:`read_events`) and merges them with the rest of the lab's logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"


class EventLog:
    """The simulator's timeline: JSON lines ``{"t", "source", "object", "message"}`` in a file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failed = False

    def emit(self, source: str, message: str, obj: str | None = None) -> None:
        log.info("%s: %s%s", source, f"{obj}: " if obj else "", message)
        if self.path is None:
            return
        record: dict[str, Any] = {"t": round(time.time(), 6), "source": source}
        if obj:
            record["object"] = obj
        record["message"] = message
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:
            if not self._failed:
                log.warning("cannot append to the events file %s: %s", self.path, e)
            self._failed = True


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events the simulator appended (an absent file: none; a torn last line is skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("t"), int | float):
                events.append(event)
    return events
