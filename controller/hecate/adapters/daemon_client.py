"""Ask a running ``hecate daemon`` for its status over HTTP (stdlib only: ``hecate status`` must start fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def fetch_status(url: str, timeout: float = 0.3) -> dict[str, Any] | None:
    """The daemon's status document at ``url``, or None when no daemon answers in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            data = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError, TimeoutError):
        return None
    return data if isinstance(data, dict) and "ups" in data else None
