"""``hosts:`` (machines outside the cluster) in the shutdown and startup plans, and their configuration."""

from __future__ import annotations

import re

import pydantic
import pytest

from hecate.domain import validation
from hecate.domain.config import HecateConfig, Wake
from hecate.domain.params import HostStopParams, PoweroffParams, WakeParams
from hecate.domain.plan import Action, OnError, Plan, shutdown_plan, startup_plan

NODES = [{"name": "s1", "address": "10.0.0.1", "role": "server"},
         {"name": "a1", "address": "10.0.0.3", "role": "agent"}]
HOSTS = [
    {"name": "nas", "address": "10.0.0.20", "poweroff_order": 20,
     "stop_commands": [["systemctl", "stop", "nfs-server"], ["sync"]],
     "wake": "wol", "wake_mac": "aa:bb:cc:dd:ee:ff", "wait_ssh": True},
    {"name": "tethys", "address": "tethys.lan", "ssh_port": 2222, "poweroff_order": 10,
     "wake": "command", "wake_command": ["ipmitool", "-H", "{host}-bmc", "power", "on"], "before_cluster": False},
    {"name": "backup", "address": "10.0.0.21", "poweroff_order": 10, "poweroff": False,
     "stop_commands": [["systemctl", "stop", "restic.timer"]]},
]


def config(hosts: list[dict[str, object]] | None = None, **top: object) -> HecateConfig:
    return HecateConfig.model_validate({"ups": [{"name": "pyr"}], "cluster": {"nodes": NODES},
                                        "hosts": HOSTS if hosts is None else hosts, **top})


def test_shutdown_order_nodes_then_hosts_stop_then_hosts_poweroff_then_coordinator() -> None:
    plan = shutdown_plan(config(shutdown={"ups_power_cycle": True}))
    names = [s.name for s in plan.stages]
    assert names[-5:] == ["poweroff", "hosts-stop", "hosts-poweroff", "ups-power-cycle", "local-poweroff"]
    stages = {s.name: s for s in plan.stages}
    assert {s.target for s in stages["poweroff"].steps} == {"s1", "a1"}  # the nodes only
    stop = stages["hosts-stop"]
    assert [(s.action, s.target) for s in stop.steps] == [(Action.host_stop, "backup"), (Action.host_stop, "nas")]
    assert stop.steps[1].params_as(HostStopParams).commands == (("systemctl", "stop", "nfs-server"), ("sync",))
    assert stop.steps[1].timeout_s > 2 * 120  # two commands, each bounded by ssh.command_timeout_s
    # Power-off in waves by poweroff_order (tethys at 10, nas at 20); backup keeps running.
    assert [sorted(s.target for s in wave) for wave in stages["hosts-poweroff"].waves()] == [["tethys"], ["nas"]]
    assert {s.action for s in stages["hosts-poweroff"].steps} == {Action.poweroff}
    assert stages["hosts-poweroff"].steps[0].params_as(PoweroffParams).command == "systemctl poweroff"
    # A host that fails never stops the coordinator's power-off.
    assert all(s.on_error is OnError.continue_ for st in ("hosts-stop", "hosts-poweroff") for s in stages[st].steps)
    for stage in plan.stages:
        assert stage.deadline_s >= max(s.timeout_s for s in stage.steps), stage.name


def test_hosts_without_nodes_or_stop_commands() -> None:
    plan = shutdown_plan(HecateConfig.model_validate({"hosts": [{"name": "nas", "address": "10.0.0.20"}]}))
    assert [s.name for s in plan.stages] == ["flux-suspend", "hosts-poweroff", "local-poweroff"]
    assert shutdown_plan(config(hosts=[])) == shutdown_plan(HecateConfig.model_validate(
        {"ups": [{"name": "pyr"}], "cluster": {"nodes": NODES}}))


def test_host_steps_round_trip_through_the_journal_and_the_dry_run() -> None:
    for plan in (shutdown_plan(config()), startup_plan(config())):
        assert Plan.from_dict(plan.to_dict()) == plan
    shown = shutdown_plan(config()).to_dict()  # what a dry-run prints (--json)
    stop = next(s for s in shown["stages"] if s["name"] == "hosts-stop")
    assert stop["steps"][1]["params"]["commands"] == [["systemctl", "stop", "nfs-server"], ["sync"]]
    # A journal an earlier version wrote (no wait_s in a wake step) still reads.
    wake = {"method": "wol", "mac": "aa:bb:cc:dd:ee:ff", "argv": []}
    from hecate.domain import params
    assert params.from_dict(WakeParams, wake) == WakeParams(Wake.wol, "aa:bb:cc:dd:ee:ff", ())


def test_startup_wakes_hosts_before_or_after_the_cluster() -> None:
    plan = startup_plan(config())
    names = [s.name for s in plan.stages]
    assert names[:3] == ["preflight", "hosts-wake", "start-servers"]
    assert names[-1] == "hosts-wake-late"
    stages = {s.name: s for s in plan.stages}
    nas = stages["hosts-wake"].steps
    assert [(s.action, s.target) for s in nas] == [(Action.wake, "nas")]  # backup: no wake, no wait: no step
    params = nas[0].params_as(WakeParams)
    assert (params.method, params.mac, params.wait_s) == (Wake.wol, "aa:bb:cc:dd:ee:ff", 600.0)
    assert nas[0].timeout_s > params.wait_s
    late = stages["hosts-wake-late"].steps[0].params_as(WakeParams)
    assert (late.argv, late.wait_s) == (("ipmitool", "-H", "tethys-bmc", "power", "on"), 0.0)


@pytest.mark.parametrize(("hosts", "nodes_too", "match"), [
    ([{"name": "s1", "address": "10.0.0.9"}], True, r"hosts\[0\]\.name.*unique across cluster.nodes and hosts"),
    ([{"name": "nas", "address": "10.0.0.9"}, {"name": "nas", "address": "10.0.0.8"}], False, "host names must be"),
    ([{"name": "nas", "address": "10.0.0.300"}], False, "not a valid IPv4 address"),
    ([{"name": "nas", "address": "n", "stop_commands": [[]]}], False, r"stop_commands\[0\].*at least its program"),
    ([{"name": "nas", "address": "n", "stop_commands": [["echo", ""]]}], False, "empty or has control"),
    ([{"name": "nas", "address": "n", "wake": "wol"}], False, "needs wake_mac"),
    ([{"name": "nas", "address": "n", "wake": "command"}], False, "needs wake_command"),
    ([{"name": "nas", "address": "n", "stop_commands": "systemctl stop nfs"}], False, "valid list"),
])
def test_bad_hosts_are_refused(hosts: list[dict[str, object]], nodes_too: bool, match: str) -> None:
    data: dict[str, object] = {"hosts": hosts, **({"cluster": {"nodes": NODES}} if nodes_too else {})}
    with pytest.raises(pydantic.ValidationError) as err:
        HecateConfig.model_validate(data)
    assert re.search(match, "\n".join(p.text for p in validation.problems(err.value, HecateConfig)))
