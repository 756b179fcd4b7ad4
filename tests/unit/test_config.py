"""Configuration loading: defaults, env overrides, and one readable error per bad input."""

from __future__ import annotations

import os
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
    # Shipped as a dry-run, as the documented default: copying it never arms a power-off.
    assert not cfg.shutdown.execute
    assert not cfg.shutdown.ups_power_cycle
    assert "execute: true" in EXAMPLE.read_text()  # ... with a comment on how to arm it


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
        f"{path}: trigger.debouce_polls: unknown key (allowed here: budget_history, charge_floor_pct, deadtime_s, "
        "debounce_polls, default_budget_s, max_on_battery_s, max_plausible_runtime_s, min_budget_s, "
        "poll_interval_on_battery_s, poll_interval_s, runtime_frozen_polls, runtime_zero_charge_pct, safety_factor)"
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
        ("ups:\n  - {name: p}\n  - {name: p, host: h}\n", "ups[1].name = 'p'", "UPS names must be unique: item 0"),
        ("ups:\n  - {name: p, host: 'ups one'}\n", "ups[0].host = 'ups one'", "not an IP address or a DNS name"),
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


def test_a_repeated_name_is_reported_at_the_repeated_field(tmp_path: Path) -> None:
    dup = write(tmp_path, "cluster:\n  nodes:\n    - {name: n1, address: a, role: agent}\n"
                          "    - {name: n2, address: b, role: agent}\n    - {name: n1, address: c, role: agent}\n")
    assert load_error(dup) == f"{dup}: cluster.nodes[2].name = 'n1': node names must be unique: item 0 has it too"
    tiers = write(tmp_path, "shutdown:\n  scale_down:\n    - {name: t, selector: a=b}\n"
                            "    - {name: t, selector: c=d}\n")
    assert load_error(tiers) == (f"{tiers}: shutdown.scale_down[1].name = 't': tier names must be unique: "
                                 "item 0 has it too")
    refs = write(tmp_path, "startup:\n  foundation: [a/deployment/b, a/deployment/b]\n"
                           "flux:\n  bootstrap_objects: [a/service/s, a/pod/p]\n")
    assert load_error(refs).splitlines() == [
        f"{refs}: startup.foundation[1] = 'a/deployment/b': foundation workloads must be unique: item 0 has it too",
        f"{refs}: flux.bootstrap_objects[1] = 'a/pod/p': kind 'pod' is not allowed here; the kind must be one of "
        + load_error(refs).split("the kind must be one of ")[1],
    ]


PEER = ("role: peer\nhost_name: tethys\npeer:\n  coordinator_url: http://titan-db:9561\n  key_id: tethys-1\n"
        "  secret_file: /etc/hecate/peer.secret\n")


def test_role_peer_needs_its_coordinator_and_key_and_no_cluster(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, PEER), {})
    assert cfg.role is Role.peer
    assert cfg.peer.coordinator_url == "http://titan-db:9561"
    bare = write(tmp_path, "role: peer\npeer:\n  coordinator_url: http://titan-db:9561\n")
    assert load_error(bare) == (
        f"{bare}: role = 'peer': a peer forwards its shutdown decision to the coordinator and needs "
        "peer.coordinator_url, peer.key_id, peer.secret_file; missing: peer.key_id, peer.secret_file")
    assert load_error(write(tmp_path, ""), {"HECATE_ROLE": "peer"}).startswith("environment HECATE_ROLE: role = 'peer'")
    nodes = write(tmp_path, PEER + "cluster:\n  nodes:\n    - {name: n0, address: 10.0.0.1, role: server}\n")
    assert load_error(nodes) == (f"{nodes}: cluster.nodes: not on a peer (a peer has no cluster: the "
                                 "coordinator shuts the nodes down); remove it, or use role: coordinator")
    trusted = write(tmp_path, PEER + "  listen: 0.0.0.0:9561\n")
    assert load_error(trusted).startswith(f"{trusted}: peer.listen = '0.0.0.0:9561': not on a peer (only the "
                                          "coordinator listens for triggers)")
    operator = write(tmp_path, PEER + "policy:\n  name: titan\n")
    assert "policy.name = 'titan': not on a peer" in load_error(operator)
    # Keys of the cluster's a peer does not use, at their defaults or set, are ignored: one file shape for both.
    shared = write(tmp_path, PEER + "flux:\n  namespace: flux\nstartup:\n  wake: wol\n")
    assert config.load(shared, {}).role is Role.peer


NODES = "cluster:\n  nodes:\n    - {name: n0, address: 10.0.0.1, role: server}\n" \
        "    - {name: n1, address: 'fd00::11', role: agent}\n    - {name: n2, address: %s, role: agent}\n"


@pytest.mark.parametrize(("address", "why"), [
    ("'not a host!'", "not an IP address or a DNS name: a DNS name is labels of 1-63 letters"),
    ("192.168.22.300", "not a valid IPv4 address"),
    ("10.0.0", "not a valid IPv4 address"),
    ("'[fd00::12]'", "an IPv6 address is written without brackets"),
    ("titan_05.lan", "not an IP address or a DNS name ('titan_05' is not a label)"),
    ("-titan.lan", "('-titan' is not a label)"),
    ("a..lan", "('' is not a label)"),
    (f"{'x' * 64}.lan", "is not a label"),
    ("''", "String should have at least 1 character"),
])
def test_a_node_address_must_be_an_ip_address_or_a_dns_name(tmp_path: Path, address: str, why: str) -> None:
    path = write(tmp_path, NODES % address)
    msg = load_error(path)
    assert msg.startswith(f"{path}: cluster.nodes[2].address = ")
    assert why in msg
    assert "Value error" not in msg


@pytest.mark.parametrize("address", ["192.168.22.25", "fd00::25", "fe80::1%eth0", "titan-05", "titan-05.lan.",
                                     "xn--bcher-kva.example", "5th-node.lan", "localhost"])
def test_good_addresses_pass(tmp_path: Path, address: str) -> None:
    cfg = config.load(write(tmp_path, NODES % f"'{address}'"), {})
    assert cfg.cluster.nodes[2].address == address


def test_every_error_names_its_dotted_field_without_library_prefixes(tmp_path: Path) -> None:
    path = write(tmp_path, NODES % "'not a host!'" + "ups:\n  - {name: p}\n  - {name: p}\nmetrics:\n  listen: ':0'\n"
                 "startup:\n  foundation: [x/pod/y]\n")
    lines = load_error(path).splitlines()
    assert [line.split(": ")[1].split(" = ")[0] for line in lines] == [
        "cluster.nodes[2].address", "ups[1].name", "startup.foundation[0]", "metrics.listen"]
    assert not any("Value error" in line or "Assertion failed" in line for line in lines)


@pytest.mark.parametrize(("name", "why"), [
    ("HECATE_TRIGER__SAFETY_FACTOR", "unknown setting: no key 'triger' at the top level; "
                                     "did you mean HECATE_TRIGGER__SAFETY_FACTOR?"),
    ("HECATE_TRIGGER__SAFTEY_FACTOR", "no key 'saftey_factor' in trigger; did you mean HECATE_TRIGGER__SAFETY_FACTOR?"),
    ("HECATE_STATEDIR", "did you mean HECATE_STATE_DIR?"),
    ("HECATE_NOTHING_LIKE_IT", "allowed there: cluster, flux, host_name, "),
    ("hecate_trigger__nope", "no key 'nope' in trigger"),
    ("HECATE_CLUSTER__NODES__0__ADDRESS",
     "cluster.nodes is a list: it is set whole, as JSON, in HECATE_CLUSTER__NODES"),
    ("HECATE_STATE_DIR__SUB", "state_dir is a single value: it is set in HECATE_STATE_DIR"),
])
def test_an_unknown_hecate_variable_is_an_error_naming_it(tmp_path: Path, name: str, why: str) -> None:
    msg = load_error(write(tmp_path, ""), {name: "1.3", "HECATE_TRIGGER__DEBOUNCE_POLLS": "4"})
    assert msg.startswith(f"environment {name}: ")
    assert why in msg


def test_hecate_variables_that_are_not_settings_are_left_alone(tmp_path: Path) -> None:
    env = {"HECATE_CONFIG": "/etc/hecate/hecate.yaml", "HECATE_LAB_DIR": "/tmp/lab", "HECATE_LAB_NUT_BIN": "/lib/nut",
           "HECATE_TRIGGER": '{"debounce_polls": 5}', "HECATE_UPS": '[{"name": "p"}]'}
    cfg = config.load(write(tmp_path, ""), env)
    assert (cfg.trigger.debounce_polls, [u.name for u in cfg.ups]) == (5, ["p"])


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    msg = load_error(path, {"HECATE_TRIGGER__SAFETY_FACTOR": "lots"})
    assert msg.startswith("environment HECATE_TRIGGER__SAFETY_FACTOR: trigger.safety_factor = 'lots': ")
    msg = load_error(path, {"HECATE_UPS": "[{not json"})
    assert msg == "environment HECATE_UPS: not valid JSON for a list or mapping setting"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hecate", *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})},
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
    assert missing.returncode == 3  # status exits with Nagios states: an unusable configuration is UNKNOWN
    assert "file not found" in missing.stderr
    typo = run_cli("config", "validate", "--config", str(EXAMPLE), env={"HECATE_TRIGER__SAFETY_FACTOR": "2"})
    assert typo.returncode == 2
    assert typo.stderr.startswith("hecate: configuration error:\nenvironment HECATE_TRIGER__SAFETY_FACTOR: ")


def test_wake_command_needs_its_argv(tmp_path: Path) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="wake_command"):
        HecateConfig.model_validate({"startup": {"wake": "command"}})
    path = write(tmp_path, "startup:\n  wake: command\n")
    assert load_error(path) == f"{path}: startup.wake = 'command': needs startup.wake_command (the command to run)"
    assert load_error(write(tmp_path, ""), {"HECATE_STARTUP__WAKE": "command"}).startswith(
        "environment HECATE_STARTUP__WAKE: startup.wake = 'command': ")
    assert HecateConfig.model_validate({"startup": {"wake": "command", "wake_command": ["wake", "{node}"]}})


def test_set_fsd_needs_a_credentials_file(tmp_path: Path) -> None:
    path = write(tmp_path, "ups:\n  - {name: pyrphoros, set_fsd: true}\n")
    error = load_error(path)
    assert "set_fsd needs credentials_file" in error
    assert "upsmon primary" in error
    ok = write(tmp_path, "ups:\n  - {name: pyrphoros, set_fsd: true, credentials_file: /etc/nut.credentials}\n")
    assert config.load(ok, {}).ups[0].set_fsd
    assert not config.load(write(tmp_path, "ups:\n  - {name: pyrphoros}\n"), {}).ups[0].set_fsd
