"""Configuration loading: defaults, env overrides, and one readable error per bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hecate.adapters import config
from hecate.domain.config import HecateConfig, NodeRole, Role

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "host" / "hecate.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hecate.yaml"
    path.write_text(text)
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env or {})
    return str(info.value)


def test_example_config_is_valid_and_complete() -> None:
    cfg = config.load(EXAMPLE, {})
    assert cfg.role is Role.coordinator
    assert {n.role for n in cfg.cluster.nodes} == {NodeRole.server, NodeRole.agent}
    assert [u.name for u in cfg.ups] == ["pyrphoros", "statera"]
    assert cfg.trigger.safety_factor == pytest.approx(1.10)


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ""), {})
    assert cfg == HecateConfig(host_name=socket.gethostname())  # the one default read from the machine
    assert cfg.metrics.listen == "127.0.0.1:9560"  # this host only: scraping from the network is a choice
    assert cfg.metrics.socket == Path("/run/hecate/hecate.sock")
    assert cfg.state_dir == Path("/var/lib/hecate")
    assert cfg.trigger.debounce_polls == 3


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "trigger:\n  safety_factor: 1.3\n  debounce_polls: 4\n")
    cfg = config.load(path, {
        "HECATE_TRIGGER__DEBOUNCE_POLLS": "6",
        "hecate_state_dir": "/tmp/hecate-state",
        "HECATE_UPS": '[{"name": "pyrphoros", "port": 3494}]',
        "PATH": "/usr/bin",
    })
    assert cfg.trigger.safety_factor == pytest.approx(1.3)  # from the file
    assert cfg.trigger.debounce_polls == 6  # env wins
    assert cfg.state_dir == Path("/tmp/hecate-state")
    assert cfg.ups[0].port == 3494


def test_missing_file(tmp_path: Path) -> None:
    msg = load_error(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in msg
    assert "file not found" in msg


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "trigger:\n  safety_factor: [1.1\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}:")
    assert "YAML syntax error" in msg
    assert ":3:" in msg or ":2:" in msg


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("42\n", "int"), ("hello\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    msg = load_error(write(tmp_path, text))
    assert str(tmp_path / "hecate.yaml") in msg
    assert "top level must be a mapping" in msg
    assert kind in msg


def test_unknown_key_names_path_and_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "trigger:\n  debouce_polls: 3\n")
    msg = load_error(path)
    assert msg == (
        f"{path}: trigger.debouce_polls: unknown key (allowed here: budget_history, deadtime_s, "
        "debounce_polls, default_budget_s, min_budget_s, poll_interval_on_battery_s, poll_interval_s, safety_factor)"
    )


def test_unknown_key_inside_a_list_item(tmp_path: Path) -> None:
    node = "{name: n1, address: 10.0.0.1, role: agent, adress: 1}"
    path = write(tmp_path, f"cluster:\n  nodes:\n    - {node}\n")
    msg = load_error(path)
    assert "cluster.nodes[0].adress: unknown key" in msg
    assert "address" in msg


@pytest.mark.parametrize(
    ("text", "path_and_value", "why"),
    [
        ("trigger:\n  safety_factor: 0.5\n", "trigger.safety_factor = 0.5", "greater than or equal to 1"),
        ("trigger:\n  debounce_polls: many\n", "trigger.debounce_polls = 'many'", "valid integer"),
        ("ups:\n  - {name: p, port: 70000}\n", "ups[0].port = 70000", "less than or equal to 65535"),
        ("cluster:\n  nodes:\n    - {name: n1, address: a, role: worker}\n",
         "cluster.nodes[0].role = 'worker'", "'server' or 'agent'"),
        ("metrics:\n  listen: nowhere\n", "metrics.listen = 'nowhere'", "match pattern"),
        ("metrics:\n  listen: ':99999'\n", "metrics.listen = ':99999'", "port must be 1-65535"),
        ("metrics:\n  socket: hecate.sock\n", "metrics.socket = 'hecate.sock'", "must be an absolute path"),
        (f"metrics:\n  socket: /{'x' * 120}\n", f"metrics.socket = '/{'x' * 120}'", "at most 107 bytes"),
        ("ups:\n  - {name: p}\n  - {name: p, host: h}\n", "ups", "UPS names must be unique; repeated: p"),
        ("role: boss\n", "role = 'boss'", "'coordinator' or 'peer'"),
    ],
)
def test_bad_value_names_file_field_value_and_reason(
    tmp_path: Path, text: str, path_and_value: str, why: str
) -> None:
    path = write(tmp_path, text)
    msg = load_error(path)
    assert msg.startswith(f"{path}: {path_and_value}: ")
    assert why in msg


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  nodes:\n    - {name: n1, role: agent}\n")
    assert load_error(path) == f"{path}: cluster.nodes[0].address: required field is missing"


def test_cross_field_rules(tmp_path: Path) -> None:
    dup = write(tmp_path, "cluster:\n  nodes:\n    - {name: n1, address: a, role: agent}\n"
                          "    - {name: n1, address: b, role: agent}\n")
    assert "node name 'n1' appears more than once" in load_error(dup)
    peer = write(tmp_path, "role: peer\n")
    assert "role 'peer' needs peer.coordinator_url" in load_error(peer)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    msg = load_error(path, {"HECATE_TRIGGER__SAFETY_FACTOR": "lots"})
    assert msg.startswith("environment HECATE_TRIGGER__SAFETY_FACTOR: trigger.safety_factor = 'lots': ")
    msg = load_error(path, {"HECATE_UPS": "[{not json"})
    assert msg == "environment HECATE_UPS: not valid JSON for a list or mapping setting"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hecate", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(60)
def test_cli_validate_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    ok = run_cli("config", "validate", "--config", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    bad = run_cli("config", "validate", "--config", str(write(tmp_path, "trigger:\n  nope: 1\n")))
    assert bad.returncode == 2
    assert "trigger.nope: unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr
    empty = run_cli("daemon", "--config", str(write(tmp_path, "")))
    assert empty.returncode == 2
    assert "no UPS configured" in empty.stderr
    missing = run_cli("status", "--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "file not found" in missing.stderr


def test_wake_command_needs_its_argv() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="wake_command"):
        HecateConfig.model_validate({"startup": {"wake": "command"}})
    assert HecateConfig.model_validate({"startup": {"wake": "command", "wake_command": ["wake", "{node}"]}})
