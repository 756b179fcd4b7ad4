"""One-shot commands (startup, shutdown, drills, status) act on the policy in force, not the file alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from hecate.adapters.store import StateStore
from hecate.cli import cli, effective_config
from hecate.domain.config import HecateConfig
from hecate.domain.policy_source import CachedPolicy

CONFIG = """\
state_dir: {state}
policy: {{name: titan}}
ups: [{{name: pyr}}]
cluster:
  nodes:
    - {{name: s1, address: 10.0.0.1, role: server}}
    - {{name: a1, address: 10.0.0.2, role: agent}}
"""


def _setup(tmp_path: Path) -> tuple[Path, HecateConfig]:
    path = tmp_path / "hecate.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    nodes = [{"name": "s1", "address": "10.0.0.1", "role": "server"},
             {"name": "a1", "address": "10.0.0.2", "role": "agent"}]
    config = HecateConfig.model_validate({"state_dir": str(tmp_path / "state"), "policy": {"name": "titan"},
                                          "ups": [{"name": "pyr"}], "cluster": {"nodes": nodes}})
    cached = CachedPolicy.from_object({"metadata": {"name": "titan", "uid": "u1", "resourceVersion": "5",
                                                    "generation": 2},
                                       "spec": {"shutdown": {"drain_timeout_s": 77},
                                                "flux": {"detection_window_s": 90}}}, datetime.now(UTC))
    StateStore(config.state_dir).write_policy_cache(cached)
    return path, config


def test_the_cached_policy_is_laid_over_the_file(tmp_path: Path) -> None:
    _, config = _setup(tmp_path)
    effective = effective_config(config)
    assert effective.shutdown.drain_timeout_s == 77
    assert effective.flux.detection_window_s == 90
    assert config.shutdown.drain_timeout_s == 120  # the file's own value is untouched


def test_the_shutdown_dry_run_plans_with_it(tmp_path: Path) -> None:
    path, _ = _setup(tmp_path)
    result = CliRunner().invoke(cli, ["shutdown", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "policy in force: cache" in result.output
    drain = next(line for line in result.output.splitlines() if " drain " in line)
    assert "97s" in drain  # drain_timeout_s 77 + 2 x api_timeout_s 10 (hecate.yaml's 120 would give 140s)
