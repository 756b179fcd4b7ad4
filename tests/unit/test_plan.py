"""The shutdown plan builder (pure)."""

from __future__ import annotations

from hecate.domain.config import HecateConfig
from hecate.domain.plan import Action, Plan, first_disruptive, shutdown_plan


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
    assert (hook.action, hook.params["argv"]) == (Action.host_hook, ["ceph", "osd", "set", "noout"])


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


def test_no_nodes_still_powers_the_coordinator_off_last() -> None:
    plan = shutdown_plan(HecateConfig())
    assert [s.name for s in plan.stages] == ["flux-suspend", "local-poweroff"]
    assert plan.stages[-1].steps[0].params["argv"] == ["systemctl", "poweroff"]
