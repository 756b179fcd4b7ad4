"""What a PowerPolicy may do with the optional triggers and the runtime sanity settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hecate.domain import envelope, policy
from hecate.domain.config import HecateConfig
from hecate.domain.policy import PowerPolicySpec

UPS = [{"name": "pyrphoros"}]
HOST = HecateConfig.model_validate({"ups": UPS})
HOST_WITH_TRIGGERS = HecateConfig.model_validate({"ups": UPS, "trigger": {"charge_floor_pct": 30,
                                                                          "max_on_battery_s": 1800}})


def spec_of(trigger: dict[str, Any]) -> PowerPolicySpec:
    return policy.parse_policy({"apiVersion": policy.API_VERSION, "kind": policy.KIND, "spec": {"trigger": trigger}})


def problems(host: HecateConfig, trigger: dict[str, Any]) -> list[str]:
    return [str(v) for v in envelope.violations(host, spec_of(trigger))]


def test_a_policy_may_set_the_optional_triggers_within_the_envelope() -> None:
    assert problems(HOST, {"charge_floor_pct": 40, "max_on_battery_s": 600}) == []


def test_a_policy_may_not_set_a_high_floor_or_a_short_time() -> None:
    assert problems(HOST, {"charge_floor_pct": 80, "max_on_battery_s": 30}) == [
        "trigger.charge_floor_pct: 80 is above the host's limit 60 (policy.envelope.max_charge_floor_pct)",
        "trigger.max_on_battery_s: 30 is below the host's limit 120 (policy.envelope.min_on_battery_limit_s)",
    ]


def test_a_policy_may_not_switch_off_a_trigger_hecate_yaml_sets() -> None:
    assert problems(HOST_WITH_TRIGGERS, {"charge_floor_pct": None}) == [
        "trigger.charge_floor_pct: off is not allowed: hecate.yaml sets trigger.charge_floor_pct to 30 (a policy may "
        "change it within the limits, never switch it off)"]
    assert problems(HOST, {"charge_floor_pct": None, "max_on_battery_s": None}) == []  # already off


def test_a_policy_may_only_tighten_a_trigger_hecate_yaml_sets() -> None:
    """A floor of 0 % or a day on battery would switch the host's trigger off without saying so."""
    assert problems(HOST_WITH_TRIGGERS, {"charge_floor_pct": 0, "max_on_battery_s": 86400}) == [
        "trigger.charge_floor_pct: 0 is below the host's limit 30 (hecate.yaml's trigger.charge_floor_pct: a policy "
        "may raise it, never lower it)",
        "trigger.max_on_battery_s: 86400 is above the host's limit 1800 (hecate.yaml's trigger.max_on_battery_s: a "
        "policy may lower it, never raise it)",
    ]
    assert problems(HOST_WITH_TRIGGERS, {"charge_floor_pct": 29.9, "max_on_battery_s": 1801}) != []
    assert problems(HOST_WITH_TRIGGERS, {"charge_floor_pct": 45, "max_on_battery_s": 600}) == []  # tighter
    assert problems(HOST_WITH_TRIGGERS, {"charge_floor_pct": 61, "max_on_battery_s": 60}) == [  # the envelope still
        "trigger.charge_floor_pct: 61 is above the host's limit 60 (policy.envelope.max_charge_floor_pct)",
        "trigger.max_on_battery_s: 60 is below the host's limit 120 (policy.envelope.min_on_battery_limit_s)",
    ]
    assert problems(HOST, {"charge_floor_pct": 5, "max_on_battery_s": 86400}) == []  # hecate.yaml leaves them off


@pytest.mark.parametrize("field", ["max_plausible_runtime_s", "runtime_zero_charge_pct", "runtime_frozen_polls"])
def test_the_sanity_settings_are_host_only(field: str) -> None:
    with pytest.raises(ValidationError, match="cannot be set in a PowerPolicy"):
        spec_of({field: 10})


@pytest.mark.parametrize(("trigger", "message"), [
    ({"charge_floor_pct": 99}, "less than or equal to 95"),
    ({"max_on_battery_s": 0}, "greater than 0"),
    ({"runtime_frozen_polls": 1}, "greater than or equal to 2"),
])
def test_hecate_yaml_validates_them(trigger: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HecateConfig.model_validate({"ups": UPS, "trigger": trigger})
