"""Ask a running ``hecate daemon`` for its status over HTTP (stdlib only: ``hecate status`` must start fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def local_url(listen: str, path: str) -> str:
    """The URL this host reaches its own daemon on, from ``metrics.listen``."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def fetch_status(listen: str, timeout: float = 0.3) -> dict[str, Any] | None:
    """The daemon's status document, or None when no daemon answers in time."""
    try:
        with urllib.request.urlopen(local_url(listen, "/v1/status"), timeout=timeout) as resp:  # noqa: S310
            data = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError, TimeoutError):
        return None
    return data if isinstance(data, dict) and "ups" in data else None
