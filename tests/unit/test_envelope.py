"""The host's envelope around a PowerPolicy: every limit, at it and just past it, named in the rejection."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hecate.adapters import config as loader
from hecate.adapters.store import StateStore
from hecate.domain import envelope, policy
from hecate.domain.config import Envelope, HecateConfig
from hecate.domain.envelope import RULES, Between, Free, HostTimeout, KeepProtecting, NeverOn, NotBelowHost
from hecate.domain.policy import PowerPolicySpec, describe_error, effective_config
from hecate.domain.policy_source import CachedPolicy, Source
from hecate.services.policy import PolicyInForce, PolicyRejected

REPO = Path(__file__).resolve().parents[2]
HOST = HecateConfig.model_validate({
    "ups": [{"name": "pyrphoros"}, {"name": "statera", "protects_cluster": False}],
    "policy": {"name": "titan"},
})
"""hecate.yaml's defaults (poll 1 s, debounce 3, safety factor 1.1, budget 300 s, ...) and the shipped envelope."""


def nested(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return dict(out)


def spec_of(body: dict[str, Any]) -> PowerPolicySpec:
    return policy.parse_policy({"apiVersion": policy.API_VERSION, "kind": policy.KIND, "spec": body})


def rejection(host: HecateConfig, body: dict[str, Any]) -> str:
    """The one-line message a status condition would carry ("" when accepted)."""
    try:
        effective_config(host, spec_of(body))
    except ValidationError as err:
        return describe_error(err)
    return ""


def with_envelope(**limits: Any) -> HecateConfig:
    return HOST.model_copy(update={"policy": HOST.policy.model_copy(update={"envelope": Envelope(**limits)})})


# -- every static limit of the shipped envelope: at it accepted, just past it rejected naming both ------------


STATIC = [
    # (field, at the limit, just past it, the limit as the message shows it, the envelope key)
    ("trigger.poll_interval_s", 5, 5.01, "above the host's limit 5", "max_poll_interval_s"),
    ("trigger.poll_interval_s", 0.5, 0.49, "below the host's limit 0.5", "min_poll_interval_s"),
    ("trigger.poll_interval_on_battery_s", 5, 5.01, "above the host's limit 5", "max_poll_interval_s"),
    ("trigger.poll_interval_on_battery_s", 0.5, 0.49, "below the host's limit 0.5", "min_poll_interval_s"),
    ("trigger.deadtime_s", 60, 60.01, "above the host's limit 60", "max_deadtime_s"),
    ("trigger.deadtime_s", 10, 9.99, "below the host's limit 10", "min_deadtime_s"),
    ("trigger.debounce_polls", 10, 11, "above the host's limit 10", "max_debounce_polls"),
    ("trigger.debounce_polls", 2, 1, "below the host's limit 2", "min_debounce_polls"),
    ("trigger.safety_factor", 3.0, 3.01, "above the host's limit 3", "max_safety_factor"),
    ("trigger.default_budget_s", 900, 900.01, "above the host's limit 900", "max_default_budget_s"),
    ("trigger.default_budget_s", 60, 59.99, "below the host's limit 60", "min_default_budget_s"),
    ("trigger.budget_history", 3, 2, "below the host's limit 3", "min_budget_history"),
    ("flux.cache_refresh_interval_s", 60, 59.99, "below the host's limit 60", "min_cache_refresh_interval_s"),
    ("startup.min_charge_percent", 20, 19.99, "below the host's limit 20", "min_startup_charge_percent"),
]


@pytest.mark.parametrize(("field", "at", "past", "limit", "key"), STATIC, ids=[f"{r[0]}-{r[4]}" for r in STATIC])
def test_a_static_limit_accepts_its_value_and_rejects_just_past_it(field: str, at: float, past: float,
                                                                  limit: str, key: str) -> None:
    assert rejection(HOST, nested(field, at)) == ""
    assert effective_config(HOST, spec_of(nested(field, at))) != HOST  # it did change something
    shown = envelope.show(float(past)) if isinstance(past, float) else str(past)
    assert rejection(HOST, nested(field, past)) == f"spec.{field}: {shown} is {limit} (policy.envelope.{key})"


_SECONDS = st.floats(min_value=0, max_value=86_400, exclude_min=True)
DOMAINS: dict[str, st.SearchStrategy[Any]] = {  # what the spec itself allows for each field with static limits
    "trigger.poll_interval_s": _SECONDS, "trigger.poll_interval_on_battery_s": _SECONDS,
    "trigger.deadtime_s": _SECONDS, "trigger.default_budget_s": _SECONDS, "flux.cache_refresh_interval_s": _SECONDS,
    "trigger.safety_factor": st.floats(min_value=1, max_value=10),
    "startup.min_charge_percent": st.floats(min_value=0, max_value=100),
    "trigger.debounce_polls": st.integers(min_value=1, max_value=100),
    "trigger.budget_history": st.integers(min_value=1, max_value=100),
}


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_value_is_accepted_exactly_when_it_lies_within_the_limits_or_is_the_hosts(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(DOMAINS)))
    value = data.draw(DOMAINS[field])
    rule = RULES[field]
    assert isinstance(rule, Between)
    env = HOST.policy.envelope
    low = getattr(env, rule.low) if rule.low else -math.inf
    high = getattr(env, rule.high) if rule.high else math.inf
    inside = low <= value <= high or value == envelope.host_value(HOST, tuple(field.split(".")))
    message = rejection(HOST, nested(field, value))
    assert (message == "") == inside, (field, value, message)
    if not inside:
        assert message.startswith(f"spec.{field}: {envelope.show(value)} is ")
        assert f"(policy.envelope.{rule.low if value < low else rule.high})" in message


def test_the_limits_are_the_hosts_own_and_it_can_move_them() -> None:
    strict = with_envelope(min_safety_factor=1.2, max_safety_factor=2.0, max_poll_interval_s=3)
    assert rejection(strict, {"trigger": {"safety_factor": 1.2}}) == ""
    assert rejection(strict, {"trigger": {"safety_factor": 1.19}}) == (
        "spec.trigger.safety_factor: 1.19 is below the host's limit 1.2 (policy.envelope.min_safety_factor)")
    assert rejection(strict, {"trigger": {"safety_factor": 2.5}}) == (
        "spec.trigger.safety_factor: 2.5 is above the host's limit 2 (policy.envelope.max_safety_factor)")
    assert "above the host's limit 3" in rejection(strict, {"trigger": {"poll_interval_s": 4}})
    wide = with_envelope(max_poll_interval_s=60)
    assert rejection(wide, {"trigger": {"poll_interval_s": 60}}) == ""


# -- timeouts: never above hecate.yaml's own, never below its fraction ---------------------------------------


TIMEOUTS = sorted(p for p, rule in RULES.items() if isinstance(rule, HostTimeout))


@pytest.mark.parametrize("field", TIMEOUTS)
def test_a_timeout_lies_between_half_and_all_of_hecate_yamls(field: str) -> None:
    own = envelope.host_value(HOST, tuple(field.split(".")))
    assert rejection(HOST, nested(field, own)) == ""
    assert rejection(HOST, nested(field, own * 0.5)) == ""
    assert rejection(HOST, nested(field, own + 0.01)) == (
        f"spec.{field}: {envelope.show(own + 0.01)} is above the host's limit {envelope.show(own)} "
        f"(hecate.yaml's {field}: a policy may shorten it, never lengthen it)")
    assert rejection(HOST, nested(field, own * 0.5 - 0.01)) == (
        f"spec.{field}: {envelope.show(own * 0.5 - 0.01)} is below the host's limit {envelope.show(own * 0.5)} "
        f"(policy.envelope.min_timeout_fraction 0.5 x hecate.yaml's {envelope.show(own)})")


def test_the_timeout_limit_follows_hecate_yaml() -> None:
    longer = HOST.model_copy(update={"shutdown": HOST.shutdown.model_copy(update={"stage_timeout_s": 900.0})})
    assert rejection(HOST, {"shutdown": {"stage_timeout_s": 900}}).startswith(
        "spec.shutdown.stage_timeout_s: 900 is above the host's limit 300")
    assert rejection(longer, {"shutdown": {"stage_timeout_s": 900}}) == ""
    assert "below the host's limit 450" in rejection(longer, {"shutdown": {"stage_timeout_s": 300}})
    loose = with_envelope(min_timeout_fraction=0.1)
    assert rejection(loose, {"shutdown": {"stage_timeout_s": 30}}) == ""


# -- the other rules -----------------------------------------------------------------------------------------


def test_parallelism_may_be_raised_never_lowered() -> None:
    assert rejection(HOST, {"shutdown": {"parallelism": 16}}) == ""
    assert rejection(HOST, {"shutdown": {"parallelism": 64}}) == ""
    assert rejection(HOST, {"shutdown": {"parallelism": 15}}) == (
        "spec.shutdown.parallelism: 15 is below the host's limit 16 (hecate.yaml's shutdown.parallelism: "
        "a policy may raise it, never lower it)")


def test_the_ups_power_cycle_may_be_switched_off_never_on() -> None:
    assert HOST.shutdown.ups_power_cycle is False
    assert rejection(HOST, {"shutdown": {"ups_power_cycle": False}}) == ""
    assert rejection(HOST, {"shutdown": {"ups_power_cycle": True}}) == (
        "spec.shutdown.ups_power_cycle: true is not allowed: hecate.yaml's shutdown.ups_power_cycle is false "
        "(a policy may switch it off, never on)")
    cycling = HOST.model_copy(update={"shutdown": HOST.shutdown.model_copy(update={"ups_power_cycle": True})})
    assert rejection(cycling, {"shutdown": {"ups_power_cycle": True}}) == ""
    switched_off = effective_config(cycling, spec_of({"shutdown": {"ups_power_cycle": False}}))
    assert switched_off.shutdown.ups_power_cycle is False


def test_a_policy_may_add_a_ups_never_drop_one_that_protects_the_cluster() -> None:
    assert rejection(HOST, {"ups": ["pyrphoros"]}) == ""
    added = effective_config(HOST, spec_of({"ups": ["pyrphoros", "statera"]}))
    assert [u.protects_cluster for u in added.ups] == [True, True]
    assert rejection(HOST, {"ups": ["statera"]}) == (
        "spec.ups: leaves out pyrphoros, which hecate.yaml marks as protecting the cluster "
        "(ups[].protects_cluster): a policy may add UPSes, never drop those")


def test_locked_fields_and_sections_cannot_be_set_at_all() -> None:
    locked = with_envelope(locked=["trigger.safety_factor", "startup", "ups"])
    assert rejection(locked, {"trigger": {"safety_factor": 1.1}}) == (  # even hecate.yaml's own value
        "spec.trigger.safety_factor: hecate.yaml does not let a PowerPolicy set it "
        "(policy.envelope.locked: trigger.safety_factor)")
    assert rejection(locked, {"startup": {"wake": "wol"}}) == (
        "spec.startup.wake: hecate.yaml does not let a PowerPolicy set it (policy.envelope.locked: startup)")
    assert "spec.ups: hecate.yaml does not let" in rejection(locked, {"ups": ["pyrphoros", "statera"]})
    assert rejection(locked, {"trigger": {"debounce_polls": 4}, "startup": {}}) == ""  # the rest stays open


def test_hecate_yamls_own_value_is_always_inside() -> None:
    """A policy restating the host's value changes nothing, even where the host itself is outside its envelope."""
    slow = HecateConfig.model_validate({"ups": [{"name": "pyrphoros"}],
                                        "trigger": {"poll_interval_s": 30, "debounce_polls": 1}})
    assert rejection(slow, {"trigger": {"poll_interval_s": 30, "debounce_polls": 1}}) == ""
    assert "above the host's limit 5" in rejection(slow, {"trigger": {"poll_interval_s": 29}})


def test_the_issues_attack_is_rejected_field_by_field() -> None:
    message = rejection(HOST, {
        "trigger": {"poll_interval_s": 86400, "safety_factor": 10, "default_budget_s": 86400, "debounce_polls": 1},
        "shutdown": {"stage_timeout_s": 86400, "drain_timeout_s": 86400, "storage_quiesce": {"timeout_s": 86400}},
        "flux": {"cache_refresh_interval_s": 0.001},
        "ups": ["statera"],
    })
    problems = message.split("; ")
    assert problems[0] == ("spec.trigger.poll_interval_s: 86400 is above the host's limit 5 "
                           "(policy.envelope.max_poll_interval_s)")
    assert [p.split(":")[0] for p in problems] == [
        "spec.trigger.poll_interval_s", "spec.trigger.debounce_polls", "spec.trigger.safety_factor",
        "spec.trigger.default_budget_s", "spec.shutdown.drain_timeout_s", "spec.shutdown.storage_quiesce.timeout_s",
        "spec.shutdown.stage_timeout_s", "spec.flux.cache_refresh_interval_s", "spec.ups"]


def test_only_what_the_policy_sets_is_judged() -> None:
    assert envelope.violations(HOST, PowerPolicySpec()) == []
    assert envelope.violations(HOST, spec_of({"trigger": {}, "shutdown": {"storage_quiesce": {}}})) == []
    [violation] = envelope.violations(HOST, spec_of({"trigger": {"deadtime_s": 61}}))
    assert (violation.path, violation.value, str(violation)) == (
        ("trigger", "deadtime_s"), 61, "trigger.deadtime_s: 61 is above the host's limit 60 "
                                       "(policy.envelope.max_deadtime_s)")


# -- every field a policy can set has a rule ------------------------------------------------------------------


def policy_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every field a PowerPolicy can set (a list is one field; excluded ones left out)."""
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        sub = policy.model_in(field.annotation)
        if sub is not None and isinstance(field.annotation, type):
            out += policy_fields(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_field_a_policy_can_set_has_a_rule_and_every_rule_a_field() -> None:
    fields = policy_fields(PowerPolicySpec)
    assert sorted(fields) == sorted(RULES), "classify each new PowerPolicy field in hecate.domain.envelope.RULES"
    for path, rule in RULES.items():
        if path.endswith("_timeout_s"):
            assert isinstance(rule, HostTimeout), path
        if isinstance(rule, Free):
            assert len(rule.reason) > 20, path
        if isinstance(rule, Between):
            for key in (rule.low, rule.high):
                assert key is None or key in Envelope.model_fields, (path, key)
    assert isinstance(RULES["ups"], KeepProtecting)
    assert isinstance(RULES["shutdown.ups_power_cycle"], NeverOn)
    assert isinstance(RULES["shutdown.parallelism"], NotBelowHost)


def test_a_field_without_a_rule_cannot_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "RULES", {k: v for k, v in RULES.items() if k != "startup.wake"})
    assert rejection(HOST, {"startup": {"wake": "wol"}}) == (
        "spec.startup.wake: the host's policy envelope has no rule for this field, so a PowerPolicy cannot set it")


def test_the_example_policy_fits_a_default_host() -> None:
    """The e2e test and the footprint benchmark apply the example to a host with hecate.yaml's defaults."""
    import yaml

    example = yaml.safe_load((REPO / "manifests" / "powerpolicy-example.yaml").read_text())
    assert envelope.violations(HecateConfig.model_validate({"ups": [{"name": "pyrphoros"}]}),
                               policy.parse_policy(example)) == []


def test_operator_md_documents_every_limit() -> None:
    page = (REPO / "docs" / "operator.md").read_text()
    assert [k for k in Envelope.model_fields if f"`{k}`" not in page and f"policy.envelope.{k}`" not in page] == []
    for path, rule in RULES.items():
        if not isinstance(rule, HostTimeout):
            assert path.rsplit(".", 1)[-1] in page, path


# -- the envelope in hecate.yaml -------------------------------------------------------------------------------


@pytest.mark.parametrize(("limits", "message"), [
    ({"min_poll_interval_s": 6}, "min_poll_interval_s (6) is above max_poll_interval_s (5)"),
    ({"min_deadtime_s": 61}, "min_deadtime_s (61) is above max_deadtime_s (60)"),
    ({"min_debounce_polls": 11}, "min_debounce_polls (11) is above max_debounce_polls (10)"),
    ({"max_safety_factor": 0.9}, "greater than or equal to 1"),
    ({"min_default_budget_s": 1000}, "min_default_budget_s (1000) is above max_default_budget_s (900)"),
    ({"min_timeout_fraction": 0}, "greater than 0"),
    ({"min_timeout_fraction": 1.5}, "less than or equal to 1"),
    ({"locked": ["trigger.safty_factor"]}, "not a PowerPolicy section or field: trigger.safty_factor"),
    ({"locked": ["policy"]}, "not a PowerPolicy section or field: policy"),
    ({"locked": ["trigger.safety_factor.x"]}, "not a PowerPolicy section or field"),
    ({"locked": ["ups", "ups"]}, "locked fields must be unique: item 0 has it too"),
])
def test_a_bad_envelope_is_a_config_error(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Envelope.model_validate(limits)


def test_locked_takes_sections_nested_fields_and_ups() -> None:
    env = Envelope(locked=["ups", "flux", "shutdown.storage_quiesce", "shutdown.storage_quiesce.timeout_s",
                           "startup.foundation"])
    assert envelope.locked_by(env, "shutdown.storage_quiesce.enabled") == "shutdown.storage_quiesce"
    assert envelope.locked_by(env, "flux.namespace") == "flux"
    assert envelope.locked_by(env, "shutdown.stage_timeout_s") is None


def test_the_envelope_is_set_in_hecate_yaml_and_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "hecate.yaml"
    path.write_text("ups: [{name: pyr}]\npolicy:\n  name: titan\n  envelope:\n    max_poll_interval_s: 10\n"
                    "    locked: [ups]\n")
    config = loader.load(path, {"HECATE_POLICY__ENVELOPE__MAX_DEADTIME_S": "30"})
    assert config.policy.envelope.max_poll_interval_s == 10
    assert config.policy.envelope.max_deadtime_s == 30
    assert config.policy.envelope.locked == ["ups"]
    assert config.policy.envelope.max_debounce_polls == 10  # the shipped default
    with pytest.raises(loader.ConfigError, match=r"policy\.envelope"):
        loader.load(path, {"HECATE_POLICY__ENVELOPE__MIN_POLL_INTERVAL_S": "20"})


# -- where it is applied: the operator's accept and the cache at start ------------------------------------------


def _object(spec: dict[str, Any], generation: int) -> dict[str, Any]:
    return {"apiVersion": policy.API_VERSION, "kind": policy.KIND,
            "metadata": {"name": "titan", "uid": "u-1", "generation": generation, "resourceVersion": str(generation)},
            "spec": spec}


def test_accept_rejects_outside_the_envelope_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    host = HOST.model_copy(update={"state_dir": tmp_path})
    store = StateStore(tmp_path)
    state = PolicyInForce(host, store)
    state.load()
    state.connected()
    state.accept(_object({"trigger": {"poll_interval_s": 4}}, 1))
    cached = store.policy_cache_path.read_bytes()
    with pytest.raises(PolicyRejected) as info:
        state.accept(_object({"trigger": {"poll_interval_s": 86400}}, 2))
    assert str(info.value) == ("spec.trigger.poll_interval_s: 86400 is above the host's limit 5 "
                               "(policy.envelope.max_poll_interval_s)")
    view = state.view
    assert view.source is Source.cache
    assert view.config.trigger.poll_interval_s == 4  # the last good policy
    assert view.rejected == str(info.value)
    assert store.policy_cache_path.read_bytes() == cached


def test_a_cache_written_before_the_envelope_tightened_does_not_bypass_it(tmp_path: Path) -> None:
    loose = with_envelope(max_poll_interval_s=60).model_copy(update={"state_dir": tmp_path})
    store = StateStore(tmp_path)
    state = PolicyInForce(loose, store)
    state.load()
    state.connected()
    state.accept(_object({"trigger": {"poll_interval_s": 30}}, 1))  # fine under the old envelope: cached
    assert PolicyInForce(loose, store).load().config.trigger.poll_interval_s == 30

    tightened = HOST.model_copy(update={"state_dir": tmp_path})  # the shipped envelope: polls <= 5 s
    view = PolicyInForce(tightened, store).load()
    assert view.source is Source.host
    assert view.config.trigger.poll_interval_s == 1.0  # hecate.yaml's, not the cache's 30
    assert store.policy_cache_path.exists()  # kept (a looser envelope would take it again), not used
    assert any("spec.trigger.poll_interval_s: 30 is above the host's limit 5" in w for w in store.warnings)


def test_the_cache_at_start_is_judged_like_the_operator_judges(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.write_policy_cache(CachedPolicy.from_object(_object({"ups": ["statera"]}, 3), datetime.now(UTC)))
    view = PolicyInForce(HOST.model_copy(update={"state_dir": tmp_path}), store).load()
    assert view.source is Source.host
    assert [u.protects_cluster for u in view.config.ups] == [True, False]
    assert any("spec.ups: leaves out pyrphoros" in w for w in store.warnings)
