"""PowerPolicySpec: built from the config models, never carries commands, overlays hecate.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hecate.domain import config as cfg
from hecate.domain import envelope, policy
from hecate.domain.policy import PowerPolicySpec, describe_error, effective_config, parse_policy

REPO = Path(__file__).resolve().parents[2]


def host(**sections: Any) -> cfg.HecateConfig:
    """A host config close to host/hecate.example.yaml, with non-default values to overlay."""
    base: dict[str, Any] = {
        "host_name": "titan-db",
        "ups": [{"name": "pyrphoros"}, {"name": "statera", "protects_cluster": False}],
        "trigger": {"safety_factor": 1.2, "debounce_polls": 4},
        "shutdown": {
            "execute": True,
            "scale_down": [{"name": "apps", "selector": "tier=apps"}, {"name": "data", "selector": "tier=data"}],
            "storage_quiesce": {"enabled": False, "timeout_s": 90, "hooks": [["ceph", "osd", "set", "noout"]]},
            "remote_poweroff_command": "sudo poweroff",
            "local_poweroff_command": ["/sbin/poweroff"],
        },
        "startup": {"foundation": ["kube-system/deployment/coredns"], "wake": "wol"},
        "flux": {"fallback_manifests_dir": "/srv/bootstrap"},
    }
    base.update(sections)
    return cfg.HecateConfig.model_validate(base)


def spec(**fields: Any) -> PowerPolicySpec:
    return PowerPolicySpec.model_validate(fields)


def document(spec_body: Any = None, **top: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy", "metadata": {"name": "titan"}}
    if spec_body is not None:
        obj["spec"] = spec_body
    obj.update(top)
    return obj


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def errors_of(body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        parse_policy(document(body))
    return info.value.errors()


# -- no commands, no host paths, no arming ------------------------------------------------------


def test_the_excluded_set_covers_every_command_path_and_arming_field() -> None:
    assert set(policy.EXCLUDED_FIELDS) >= {
        "shutdown.remote_poweroff_command", "shutdown.local_poweroff_command", "shutdown.storage_quiesce.hooks",
        "startup.wake_command", "flux.fallback_manifests_dir", "shutdown.execute",
    }
    # and nothing left in the spec is typed like a command or a path
    def walk(model: type[BaseModel], prefix: str) -> list[tuple[str, Any]]:
        out = []
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            sub = policy.model_in(field.annotation)
            out.append((f"{prefix}{name}", field.annotation))
            if sub is not None:
                out.extend(walk(sub, f"{prefix}{name}."))
        return out
    for path, annotation in walk(PowerPolicySpec, ""):
        assert "Path" not in str(annotation), path
        assert annotation != list[list[str]], path
        assert "command" not in path.rsplit(".", 1)[-1], path


@pytest.mark.parametrize("path", sorted(policy.EXCLUDED_FIELDS))
def test_a_spec_carrying_an_excluded_field_is_rejected_clearly(path: str) -> None:
    value: Any = {"shutdown.execute": True, "flux.fallback_manifests_dir": "/tmp/x",
                  "shutdown.remote_poweroff_command": "poweroff"}.get(path, [["sh", "-c", "id"]])
    [error] = errors_of(nested(path, value))
    assert error["loc"] == ("spec", *path.split("."))
    assert error["type"] == "policy_forbidden"
    assert error["msg"].startswith(f"{path} cannot be set in a PowerPolicy: ")
    assert "hecate.yaml" in error["msg"]
    with pytest.raises(ValidationError) as info:
        parse_policy(document(nested(path, value)))
    assert describe_error(info.value).startswith(f"spec.{path}: {path} cannot be set in a PowerPolicy")


def test_arming_and_commands_say_why() -> None:
    [arming] = errors_of({"shutdown": {"execute": False}})  # even disarming
    assert "arming stays a host decision" in arming["msg"]
    [command] = errors_of({"startup": {"wake_command": ["etherwake", "{node}"]}})
    assert "never carries commands" in command["msg"]
    [where] = errors_of({"flux": {"fallback_manifests_dir": "/etc"}})
    assert "paths on the Hecate host" in where["msg"]


def test_excluded_fields_never_reach_the_effective_config() -> None:
    base = host()
    effective = effective_config(base, spec(shutdown={"parallelism": 32, "storage_quiesce": {"enabled": True}}))
    assert effective.shutdown.execute is True
    assert effective.shutdown.remote_poweroff_command == "sudo poweroff"
    assert effective.shutdown.local_poweroff_command == ["/sbin/poweroff"]
    assert effective.shutdown.storage_quiesce.hooks == [["ceph", "osd", "set", "noout"]]
    assert effective.flux.fallback_manifests_dir == Path("/srv/bootstrap")


def test_excluded_fields_that_do_not_exist_are_a_programming_error() -> None:
    class Shutdown(BaseModel):  # lacks every excluded shutdown field
        parallelism: int = 1

    with pytest.raises(TypeError, match="EXCLUDED_FIELDS names fields Shutdown does not have"):
        policy.overlay_model(Shutdown, "shutdown")


# -- built from the config models -----------------------------------------------------------------


def _pairs(config_model: type[BaseModel], policy_model: type[BaseModel], path: str) -> list[tuple[str, Any, Any]]:
    out = []
    for name, field in config_model.model_fields.items():
        if f"{path}.{name}" in policy.EXCLUDED_FIELDS:
            assert policy_model.model_fields[name].exclude
            continue
        mirror = policy_model.model_fields[name]
        out.append((f"{path}.{name}", field, mirror))
        sub = policy.model_in(field.annotation)
        if sub is not None:
            suffix = "[]" if str(field.annotation).startswith("list[") else ""
            out.extend(_pairs(sub, policy.model_in(mirror.annotation) or BaseModel, f"{path}.{name}{suffix}"))
    return out


@pytest.mark.parametrize("section", sorted(policy.SECTIONS))
def test_sections_mirror_the_config_models(section: str) -> None:
    model = policy.SECTIONS[section]
    generated = policy.model_in(PowerPolicySpec.model_fields[section].annotation)
    assert generated is not None
    kept = [n for n in model.model_fields if f"{section}.{n}" not in policy.EXCLUDED_FIELDS]
    assert [n for n, f in generated.model_fields.items() if not f.exclude] == kept
    for path, field, mirror in _pairs(model, generated, section):
        assert mirror.description == field.description, path
        assert [m for m in mirror.metadata if type(m).__name__ != "Strict"] == field.metadata, path
        if policy.model_in(field.annotation) is None:
            assert mirror.default == field.default, path
            assert mirror.default_factory == field.default_factory, path
    assert generated.model_config.get("extra") == "forbid"
    assert generated.model_config.get("frozen") is True


def test_the_spec_is_frozen_and_forbids_unknown_keys() -> None:
    s = spec(trigger={"safety_factor": 1.3})
    with pytest.raises(ValidationError):
        s.trigger = s.trigger  # type: ignore[misc]
    [error] = errors_of({"trigger": {"safty_factor": 1.3}})
    assert error["type"] == "extra_forbidden"
    [error] = errors_of({"trigers": {}})
    assert error["loc"] == ("spec", "trigers")


def test_config_validators_are_carried_over() -> None:
    problems = errors_of({
        "shutdown": {"scale_down": [{"name": "a", "selector": "x=1"}, {"name": "a", "selector": "x=2"}]},
        "startup": {"foundation": ["kube-system/pod/coredns"]},
        "flux": {"gitea_workload": "gitea/gitea", "bootstrap_objects": ["a/deployment/c", "a/deployment/c"]},
    })
    by_loc = {e["loc"]: e["msg"] for e in problems}
    assert "tier names must be unique" in by_loc[("spec", "shutdown", "scale_down")]
    assert "kind must be one of" in by_loc[("spec", "startup", "foundation")]
    assert "is not namespace/kind/name" in by_loc[("spec", "flux", "gitea_workload")]
    assert "must be unique" in by_loc[("spec", "flux", "bootstrap_objects")]


@pytest.mark.parametrize(("body", "loc"), [
    ({"trigger": {"debounce_polls": "3"}}, ("trigger", "debounce_polls")),
    ({"trigger": {"debounce_polls": 3.0}}, ("trigger", "debounce_polls")),
    ({"trigger": {"debounce_polls": True}}, ("trigger", "debounce_polls")),
    ({"trigger": {"safety_factor": "1.2"}}, ("trigger", "safety_factor")),
    ({"shutdown": {"flux_suspend": 1}}, ("shutdown", "flux_suspend")),
    ({"shutdown": {"flux_suspend": "yes"}}, ("shutdown", "flux_suspend")),
    ({"flux": {"namespace": 7}}, ("flux", "namespace")),
    ({"startup": {"wake": "magic"}}, ("startup", "wake")),
    ({"trigger": None}, ("trigger",)),
])
def test_scalars_are_strict_like_the_api_server(body: dict[str, Any], loc: tuple[str, ...]) -> None:
    [error] = errors_of(body)
    assert error["loc"] == ("spec", *loc)


def test_ints_are_numbers_and_enums_take_their_values() -> None:
    s = spec(trigger={"safety_factor": 2, "poll_interval_s": 1}, startup={"wake": "wol"})
    assert s.trigger.safety_factor == 2.0  # type: ignore[attr-defined]
    assert s.startup.wake is cfg.Wake.wol  # type: ignore[attr-defined]


# -- parse_policy and describe_error ----------------------------------------------------------------


def test_parse_policy_takes_the_spec_and_ignores_metadata_and_status() -> None:
    s = parse_policy(document({"trigger": {"safety_factor": 1.4}}, status={"phase": "Active", "whatever": 1}))
    assert s.trigger.safety_factor == pytest.approx(1.4)  # type: ignore[attr-defined]
    assert parse_policy(document()) == PowerPolicySpec()


@pytest.mark.parametrize(("obj", "expected"), [
    (document(apiVersion="hecate.io/v1"), "apiVersion = 'hecate.io/v1': Input should be 'hecate.io/v1alpha1'"),
    (document(kind="PowerPolicies"), "kind = 'PowerPolicies': Input should be 'PowerPolicy'"),
    ({"kind": "PowerPolicy"}, "apiVersion: required field is missing"),
    (document([]), "spec: Input should be a valid dictionary"),
])
def test_parse_policy_checks_the_object(obj: Any, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_policy(obj)
    assert describe_error(info.value).startswith(expected)


def test_describe_error_names_the_field_path() -> None:
    with pytest.raises(ValidationError) as info:
        parse_policy(document({"trigger": {"safety_factor": 11, "bogus": 1},
                               "shutdown": {"scale_down": [{"name": "apps"}]}}))
    message = describe_error(info.value)
    assert "spec.trigger.safety_factor = 11: Input should be less than or equal to 10" in message
    assert "spec.trigger.bogus: unknown key (allowed here: budget_history, charge_floor_pct, deadtime_s," in message
    assert "spec.shutdown.scale_down[0].selector: required field is missing" in message
    assert "\n" not in message
    assert message.count("; ") == 2
    assert describe_error(RuntimeError("API gone")) == "API gone"


def test_unknown_key_hint_never_offers_excluded_fields() -> None:
    with pytest.raises(ValidationError) as info:
        parse_policy(document({"shutdown": {"executes": True}}))
    message = describe_error(info.value)
    assert "parallelism" in message
    assert "execute," not in message
    assert "poweroff_command" not in message


# -- effective_config -------------------------------------------------------------------------------


def test_an_empty_policy_changes_nothing() -> None:
    base = host()
    assert effective_config(base, PowerPolicySpec()) == base
    assert effective_config(base, spec(trigger={}, shutdown={"storage_quiesce": {}})) == base


def test_set_fields_overlay_the_host_and_unset_fields_keep_it() -> None:
    base = host()
    effective = effective_config(base, spec(trigger={"safety_factor": 1.5}, startup={"min_charge_percent": 80}))
    assert effective.trigger.safety_factor == pytest.approx(1.5)
    assert effective.trigger.debounce_polls == 4  # the host's, not the default 3
    assert effective.startup.min_charge_percent == 80
    assert effective.startup.wake is cfg.Wake.wol
    assert effective.host_name == "titan-db"
    assert base.trigger.safety_factor == pytest.approx(1.2)  # the host config is untouched


def test_a_policy_value_equal_to_the_default_still_overrides_the_host() -> None:
    effective = effective_config(host(), spec(trigger={"debounce_polls": 3}))
    assert effective.trigger.debounce_polls == 3


def test_nested_sections_merge_field_by_field() -> None:
    effective = effective_config(host(), spec(shutdown={"storage_quiesce": {"enabled": True}}))
    quiesce = effective.shutdown.storage_quiesce
    assert quiesce.enabled is True
    assert quiesce.timeout_s == 90  # host
    assert quiesce.hooks == [["ceph", "osd", "set", "noout"]]  # host only


def test_lists_are_replaced_whole() -> None:
    effective = effective_config(host(), spec(
        shutdown={"scale_down": [{"name": "batch", "namespace": "jobs", "selector": "tier=batch"}]},
        startup={"foundation": ["gitea/deployment/gitea"]},
        flux={"bootstrap_objects": []},
    ))
    assert [(t.name, t.namespace) for t in effective.shutdown.scale_down] == [("batch", "jobs")]
    assert effective.startup.foundation == ["gitea/deployment/gitea"]
    assert effective.flux.bootstrap_objects == []


def test_ups_sets_protects_cluster_for_every_configured_ups() -> None:
    alerting = host(ups=[{"name": "pyrphoros", "protects_cluster": False},
                         {"name": "statera", "protects_cluster": False}])
    effective = effective_config(alerting, spec(ups=["statera"]))
    assert {u.name: u.protects_cluster for u in effective.ups} == {"pyrphoros": False, "statera": True}
    both = effective_config(host(), spec(ups=["statera", "pyrphoros"]))
    assert all(u.protects_cluster for u in both.ups)
    assert effective_config(host(), PowerPolicySpec()).ups == host().ups  # unset: the host's flags


def test_unknown_ups_names_are_an_error_naming_them() -> None:
    with pytest.raises(ValidationError) as info:
        effective_config(host(), spec(ups=["pyrphoros", "ghost", "spectre"]))
    assert describe_error(info.value) == (
        "spec.ups: not in hecate.yaml's ups: ghost, spectre (known: pyrphoros, statera)")


@pytest.mark.parametrize("ups", [[], ["a", "a"], [""], ["bad name"], "pyrphoros"])
def test_bad_ups_lists_are_rejected(ups: Any) -> None:
    [error] = errors_of({"ups": ups})
    assert error["loc"][:2] == ("spec", "ups")


def test_a_combination_valid_per_section_but_not_as_a_whole_is_rejected() -> None:
    policy_spec = spec(startup={"wake": "command"})  # valid on its own
    with pytest.raises(ValidationError) as info:
        effective_config(host(), policy_spec)
    assert describe_error(info.value) == (
        "spec.startup.wake: wake: command needs startup.wake_command in hecate.yaml (a policy cannot carry it)")
    armed = host(startup={"wake": "none", "wake_command": ["/usr/local/bin/wake", "{node}"]})
    assert effective_config(armed, policy_spec).startup.wake is cfg.Wake.command


def test_the_merged_config_is_revalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    original = cfg.HecateConfig.model_validate

    def spy(data: Any, **kwargs: Any) -> cfg.HecateConfig:
        calls.append(data)
        return original(data, **kwargs)

    monkeypatch.setattr(cfg.HecateConfig, "model_validate", spy)
    effective = effective_config(host(), spec(trigger={"deadtime_s": 30}))
    assert calls
    assert calls[-1]["trigger"]["deadtime_s"] == 30
    assert isinstance(effective, cfg.HecateConfig)
    with pytest.raises(ValidationError):  # frozen like any config
        effective.trigger = effective.trigger  # type: ignore[misc]


def test_the_example_policy_overlays_the_example_host() -> None:
    import yaml

    from hecate.adapters import config as loader

    base = loader.load(REPO / "host" / "hecate.example.yaml", {})
    obj = yaml.safe_load((REPO / "manifests" / "powerpolicy-example.yaml").read_text())
    effective = effective_config(base, parse_policy(obj))
    assert obj["metadata"]["name"] == base.policy.name == "titan"
    assert {u.name: u.protects_cluster for u in effective.ups} == {u.name: u.protects_cluster for u in base.ups}
    assert effective.trigger.safety_factor > base.trigger.safety_factor
    assert envelope.violations(base, parse_policy(obj)) == []  # inside the shipped envelope
    assert effective.shutdown.execute is base.shutdown.execute
    assert [t.name for t in effective.shutdown.scale_down] == [t.name for t in base.shutdown.scale_down]
    assert effective.startup.foundation == base.startup.foundation
    assert effective.flux.bootstrap_objects == base.flux.bootstrap_objects


# -- the CRD's patterns say what the validators check --------------------------------------------


def k8s_pattern(pattern: str, value: str) -> bool:
    """Go's RE2 (the API server) and Rust's regex (pydantic): `$` is the end of the text only."""
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, value) is not None


REF_TEXT = st.one_of(
    st.text(alphabet="a/-.\nDdeploymentSstatefulsetDAEMONSETxſK", max_size=30),
    st.builds(lambda a, k, b: f"{a}/{k}/{b}", st.text(alphabet="ab/\n", max_size=3),
              st.sampled_from(["deployment", "StatefulSet", "DAEMONSET", "pod", "Service", "deploy", ""]),
              st.text(alphabet="ab/\n", max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(ref=REF_TEXT)
def test_workload_ref_pattern_agrees_with_the_config_validator(ref: str) -> None:
    try:
        cfg.Startup(foundation=[ref])
        accepted = True
    except ValidationError:
        accepted = False
    assert k8s_pattern(policy.WORKLOAD_REF_PATTERN, ref) == accepted


@settings(max_examples=300, deadline=None)
@given(ref=REF_TEXT)
def test_object_ref_pattern_agrees_with_the_config_validator(ref: str) -> None:
    try:
        cfg.Flux(bootstrap_objects=[ref])
        accepted = True
    except ValidationError:
        accepted = False
    assert k8s_pattern(policy.OBJECT_REF_PATTERN, ref) == accepted
