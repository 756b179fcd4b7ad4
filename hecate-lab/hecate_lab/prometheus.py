"""A real Prometheus server for the lab: scrape a lab daemon on loopback, evaluate rules, answer queries.

The Debian ``prometheus`` package's binary, started as a child in its own session with a generated
config (one scrape job per target, short intervals so alerts fire in seconds), its TSDB in a
directory the caller owns, listening on a free loopback port. Nothing of the host's Prometheus
(its unit, its ``/etc/prometheus``) is used or touched.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hecate_lab.procs import LabError, free_port, http_get, kill_group, wait_for

BINARY = "prometheus"


@dataclass
class Prometheus:
    """One running server: its port, its directory, and a handle to stop it."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/PATH`` and return its ``data`` (raise ``LabError`` on an error answer)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(self.port, f"/api/v1/{path}{query}", timeout=5.0)
        doc = json.loads(body or b"{}")
        if status != 200 or doc.get("status") != "success":
            raise LabError(f"prometheus /api/v1/{path}: HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[]`` when it has no data)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus holds now (pending and firing), as ``/api/v1/alerts`` lists them."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets_up(self) -> bool:
        """Every scrape target has been scraped successfully at least once."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t.get("health") == "up" for t in active)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=5)
            self.proc = None


def available() -> bool:
    return shutil.which(BINARY) is not None


def start(directory: Path, targets: Sequence[str], *, rule_files: Sequence[Path] = (),
          scrape_interval_s: float = 1.0, evaluation_interval_s: float = 1.0,
          timeout: float = 30.0) -> Prometheus:
    """Start Prometheus scraping ``targets`` (``host:port``, job ``hecate``) with ``rule_files``; return once it
    is ready. The caller stops it (:meth:`Prometheus.stop`), also when its test fails."""
    if not available():
        raise LabError("prometheus is not installed (the setup installs the Debian package 'prometheus')")
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s:g}s", "evaluation_interval": f"{evaluation_interval_s:g}s",
                   "scrape_timeout": f"{min(scrape_interval_s, 1.0):g}s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "hecate", "static_configs": [{"targets": list(targets)}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = directory / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [BINARY, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory)
    server = Prometheus(port, directory, proc)
    try:
        wait_for(lambda: _ready(server), timeout, f"prometheus on 127.0.0.1:{port}", log)
    except BaseException:
        server.stop()
        raise
    return server


def _ready(server: Prometheus) -> bool:
    if server.proc is not None and server.proc.poll() is not None:
        raise LabError(f"prometheus exited with {server.proc.returncode}; see {server.directory / 'prometheus.log'}")
    try:
        status, _ = http_get(server.port, "/-/ready")
    except OSError:
        return False
    return status == 200


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                       "offset", "inf", "nan", "atan2"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (``foo`` and ``foo{…}``; not functions, label names in
    matchers or groupings, keywords, strings or durations). A parser's view is better: Prometheus 2.42 has no
    ``parse_query`` endpoint, so this is lexical, for a query that Prometheus has already accepted."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}
