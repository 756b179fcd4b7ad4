"""The shutdown plan builder (pure)."""

from __future__ import annotations

from hecate.domain.config import HecateConfig
from hecate.domain.params import (
    DrainParams,
    FluxBootstrapParams,
    FluxResumeParams,
    HostCommandParams,
    StartServiceParams,
    WakeParams,
)
from hecate.domain.plan import Action, OnError, Plan, first_disruptive, shutdown_plan, startup_plan


def config(**shutdown: object) -> HecateConfig:
    return HecateConfig.model_validate({
        "ups": [{"name": "pyr"}, {"name": "other", "protects_cluster": False}],
        "cluster": {"nodes": [
            {"name": "s1", "address": "10.0.0.1", "role": "server", "poweroff_order": 20},
            {"name": "s2", "address": "10.0.0.2", "role": "server", "poweroff_order": 10},
            {"name": "a1", "address": "10.0.0.3", "role": "agent", "poweroff_order": 5},
            {"name": "a2", "address": "10.0.0.4", "role": "agent", "poweroff_order": 5},
            {"name": "a3", "address": "10.0.0.5", "role": "agent", "poweroff_order": 1},
        ]},
        "shutdown": shutdown,
    })


def test_default_stage_order() -> None:
    plan = shutdown_plan(config())
    assert [s.name for s in plan.stages] == [
        "flux-suspend", "drain", "stop-agents", "stop-servers", "killall", "poweroff", "local-poweroff"]
    assert first_disruptive(plan) == 1  # only flux-suspend comes before the point of no return


def test_all_optional_stages() -> None:
    plan = shutdown_plan(config(
        scale_down=[{"name": "apps", "selector": "tier=apps"}, {"name": "data", "selector": "tier=data"}],
        storage_quiesce={"enabled": True, "hooks": [["ceph", "osd", "set", "noout"]]},
        ups_power_cycle=True))
    assert [s.name for s in plan.stages] == [
        "flux-suspend", "scale-down", "storage-quiesce", "drain", "stop-agents", "stop-servers", "killall",
        "poweroff", "ups-power-cycle", "local-poweroff"]
    tiers = plan.stages[1]
    assert [(s.target, s.wave) for s in tiers.steps] == [("apps", 0), ("data", 1)]  # tier by tier
    assert [s.target for s in plan.stages[-2].steps] == ["pyr"]  # only protecting UPSes power-cycle
    hook = plan.stages[2].steps[1]
    assert (hook.action, hook.params_as(HostCommandParams).argv) == (Action.host_hook, ("ceph", "osd", "set", "noout"))


def waves(plan: Plan, stage: str) -> list[list[str]]:
    found = next(s for s in plan.stages if s.name == stage)
    return [sorted(step.target for step in wave) for wave in found.waves()]


def test_agents_in_parallel_servers_one_by_one_in_poweroff_order() -> None:
    plan = shutdown_plan(config())
    assert waves(plan, "stop-agents") == [["a1", "a2", "a3"]]
    assert waves(plan, "stop-servers") == [["s2"], ["s1"]]
    assert waves(plan, "killall") == [["a1", "a2", "a3", "s1", "s2"]]
    # poweroff: agents first (by order: a3, then a1+a2 together), then servers by order.
    assert waves(plan, "poweroff") == [["a3"], ["a1", "a2"], ["s2"], ["s1"]]


def test_servers_all_at_once_when_configured() -> None:
    assert waves(shutdown_plan(config(stop_servers_one_by_one=False)), "stop-servers") == [["s1", "s2"]]


def test_plan_round_trips_through_the_journal_form() -> None:
    plan = shutdown_plan(config(scale_down=[{"name": "apps", "selector": "tier=apps"}], ups_power_cycle=True))
    assert Plan.from_dict(plan.to_dict()) == plan


def test_the_journal_form_keeps_the_keys_earlier_versions_wrote() -> None:
    """A journal written before the parameters were typed still resumes: the same JSON objects, read back typed."""
    plan = shutdown_plan(config(scale_down=[{"name": "apps", "selector": "tier=apps"}]))
    written = {(s["name"], st["target"]): st["params"] for s in plan.to_dict()["stages"] for st in s["steps"]}
    assert written[("drain", "a1")] == {"drain_timeout_s": 120.0}
    assert written[("stop-agents", "a1")] == {"unit": "k3s-agent", "command_timeout_s": 120.0}
    assert written[("killall", "s1")] == {"command_timeout_s": 120.0}
    assert written[("poweroff", "s1")] == {"command": "systemctl poweroff", "command_timeout_s": 120.0}
    assert written[("scale-down", "apps")] == {"selector": "tier=apps", "namespace": None}
    assert written[("local-poweroff", "local")] == {"argv": ["systemctl", "poweroff"]}
    assert written[("flux-suspend", "flux")] == {}
    earlier = {"kind": "shutdown", "stages": [{"name": "drain", "parallelism": 16, "deadline_s": 420.0,
                                               "disruptive": True, "steps": [
        {"action": "drain", "target": "a1", "timeout_s": 140, "retries": 0, "on_error": "continue", "wave": 0,
         "params": {"drain_timeout_s": 120}}]}]}
    step = Plan.from_dict(earlier).stages[0].steps[0]
    assert step.params == DrainParams(timeout_s=120.0)
    assert step.on_error is OnError.continue_


def test_no_nodes_still_powers_the_coordinator_off_last() -> None:
    plan = shutdown_plan(HecateConfig())
    assert [s.name for s in plan.stages] == ["flux-suspend", "local-poweroff"]
    assert plan.stages[-1].steps[0].params_as(HostCommandParams).argv == ("systemctl", "poweroff")


# -- startup ---------------------------------------------------------------------------------


def startup_config(**overrides: object) -> HecateConfig:
    data = config(scale_down=[{"name": "apps", "selector": "tier=apps"},
                              {"name": "data", "selector": "tier=data"}]).model_dump(mode="json")
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}  # type: ignore[dict-item]
    return HecateConfig.model_validate(data)


def test_startup_stage_order_and_targets() -> None:
    plan = startup_plan(startup_config(startup={"foundation": ["kube-system/deployment/coredns"]}))
    assert [s.name for s in plan.stages] == [
        "preflight", "start-servers", "wait-api", "start-agents", "nodes-ready", "uncordon", "foundation",
        "flux-resume", "flux-bootstrap", "restore", "verify"]
    by_name = {s.name: s for s in plan.stages}
    assert [s.target for s in by_name["preflight"].steps] == ["pyr"]  # only UPSes that protect the cluster
    assert by_name["preflight"].steps[0].on_error.value == "abort"
    # The last server powered off (highest order) starts first, the other servers together after it.
    assert [(s.target, s.wave) for s in by_name["start-servers"].steps] == [("s1", 0), ("s2", 1)]
    assert {s.params_as(StartServiceParams).unit for s in by_name["start-servers"].steps} == {"k3s"}
    assert {s.params_as(StartServiceParams).unit for s in by_name["start-agents"].steps} == {"k3s-agent"}
    assert {s.wave for s in by_name["start-agents"].steps} == {0}  # agents in parallel
    assert {s.target for s in by_name["nodes-ready"].steps} == {"s1", "s2", "a1", "a2", "a3"}
    # Tiers come back in reverse: data before apps, then anything else Hecate scaled.
    assert [(s.target, s.wave) for s in by_name["restore"].steps] == [("data", 0), ("apps", 1), ("others", 2)]
    assert all(s.on_error.value == "continue" for st in plan.stages[1:] for s in st.steps)


def test_startup_optional_stages() -> None:
    plan = startup_plan(startup_config(startup={"wake": "command", "wake_command": ["ipmitool", "-H", "{node}-bmc"]}))
    names = [s.name for s in plan.stages]
    assert "foundation" not in names
    assert names[:2] == ["preflight", "wake"]
    wake = plan.stages[1]
    assert wake.steps[0].params_as(WakeParams).argv == ("ipmitool", "-H", f"{wake.steps[0].target}-bmc")
    no_ups = HecateConfig.model_validate({**startup_config().model_dump(mode="json"), "ups": []})
    assert startup_plan(no_ups).stages[0].name == "start-servers"


def test_startup_force_branch_and_fallback_params() -> None:
    cfg = startup_config(flux={"fallback_branch": "bootstrap", "detection_window_s": 7, "bootstrap_fallback": False})
    default = {s.name: s for s in startup_plan(cfg).stages}
    assert default["flux-resume"].steps[0].params_as(FluxResumeParams).force_branch is None
    assert default["flux-bootstrap"].steps[0].params_as(FluxBootstrapParams).branch == "bootstrap"
    assert default["flux-bootstrap"].steps[0].params_as(FluxBootstrapParams).fallback is False
    assert default["flux-bootstrap"].steps[0].params_as(FluxBootstrapParams).detection_window_s == 7
    forced = {s.name: s for s in startup_plan(cfg, force_branch="main").stages}
    assert forced["flux-resume"].steps[0].params_as(FluxResumeParams).force_branch == "main"
    assert forced["flux-bootstrap"].steps[0].params_as(FluxBootstrapParams).branch == "main"  # the operator's word wins


def test_startup_plan_round_trips_and_deadlines_cover_steps() -> None:
    plan = startup_plan(startup_config(startup={"foundation": ["gitea/deployment/gitea"]}))
    assert Plan.from_dict(plan.to_dict()) == plan
    for stage in plan.stages:
        longest = max(s.timeout_s for s in stage.steps)
        assert stage.deadline_s >= longest - 10, stage.name  # a step is never cut short by its own stage


def test_foundation_refs_are_validated() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="kind must be one of"):
        startup_config(startup={"foundation": ["kube-system/service/coredns"]})
    with pytest.raises(pydantic.ValidationError, match="namespace/kind/name"):
        startup_config(startup={"foundation": ["coredns"]})


def test_the_plan_is_the_one_source_of_parallelism() -> None:
    """The run's SSH connections are sized from the stages that run node commands, never from a second setting."""
    assert shutdown_plan(config(parallelism=4)).node_parallelism == 4
    assert shutdown_plan(HecateConfig()).node_parallelism == 1  # no nodes: only the coordinator
    plan = startup_plan(startup_config(startup={"parallelism": 3}))
    assert {s.name: s.parallelism for s in plan.stages}["nodes-ready"] == 5  # waits for every node at once...
    assert plan.node_parallelism == 3  # ...but starts k3s on at most 3 at a time


def fsd_config(*ups: dict[str, object]) -> HecateConfig:
    return HecateConfig.model_validate({
        "ups": list(ups),
        "cluster": {"nodes": [{"name": "s1", "address": "10.0.0.1", "role": "server"}]},
    })


def test_set_fsd_is_the_first_stage_and_the_point_of_no_return() -> None:
    plan = shutdown_plan(fsd_config(
        {"name": "pyr", "set_fsd": True, "credentials_file": "/etc/hecate/nut.credentials"},
        {"name": "sta", "credentials_file": "/etc/hecate/nut.credentials"},
        {"name": "side", "protects_cluster": False, "set_fsd": True, "credentials_file": "/etc/x"}))
    stage = plan.stages[0]
    assert stage.name == "set-fsd"
    # only protecting UPSes with set_fsd; a failure is recorded and the shutdown goes on
    assert [(s.action, s.target, s.on_error) for s in stage.steps] == [(Action.set_fsd, "pyr", OnError.continue_)]
    assert stage.disruptive  # FSD cannot be taken back: mains returning no longer aborts the run
    assert first_disruptive(plan) == 0
    assert [s.name for s in plan.stages][1] == "flux-suspend"
    # bounded: a hung upsd holds the cluster's shutdown back by at most the stage deadline
    assert stage.deadline_s <= 15
    assert Plan.from_dict(plan.to_dict()) == plan  # the journal round trip (resume)


def test_no_set_fsd_stage_without_set_fsd() -> None:
    plan = shutdown_plan(fsd_config({"name": "pyr", "credentials_file": "/etc/hecate/nut.credentials"}))
    assert "set-fsd" not in [s.name for s in plan.stages]
