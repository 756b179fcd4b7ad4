"""crds/ and manifests/: valid Kubernetes objects, a structural CRD generated from the model,
and a CRD schema that accepts and rejects exactly what PowerPolicySpec does."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hecate.domain import crd, policy
from hecate.domain.kubeobjects import CACHEABLE_KINDS, KINDS, NODE_LEASE_NAMESPACE
from hecate.domain.policy import PowerPolicySpec, parse_policy

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "powerpolicy.yaml"
MANIFESTS = REPO / "manifests"
KUBERNETES = "1.31"  # oldest Kubernetes the manifests must be valid for (k3s stable channel or newer)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


CRD = load_all(CRD_FILE)[0]
ROOT_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = ROOT_SCHEMA["properties"]["spec"]
EXAMPLE = load_all(MANIFESTS / "powerpolicy-example.yaml")[0]


# -- the CRD -------------------------------------------------------------------------------------


def test_the_crd_file_is_generated_from_the_model(update_docs: ModuleType) -> None:
    assert CRD_FILE.read_text() == update_docs.render_crd(), "crds/powerpolicy.yaml is stale: run `make docs`"
    assert crd.definition() == CRD


def test_the_crd_names_and_version() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "powerpolicies.hecate.io"
    assert spec["group"] == "hecate.io"
    assert spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "PowerPolicy"
    assert spec["names"]["plural"] == "powerpolicies"
    assert spec["names"]["shortNames"] == ["pp"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "UPS", "Runtime", "Threshold", "Budget", "Last run", "Dry run", "Result",
                            "Source", "Age"]
    assert columns["Phase"] == ".status.phase"
    assert columns["UPS"] == ".status.ups.state"
    assert columns["Dry run"] == ".status.lastRun.dryRun"


def test_printer_columns_point_into_the_schema() -> None:
    for column in CRD["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = ROOT_SCHEMA
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        if column["type"] == "date":
            assert node["format"] == "date-time", column
        else:
            assert node["type"] == column["type"], column


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            yield from walk(sub, f"{path}<{key}{i}>")


K8S_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password", "uuid", "duration"}
FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "nullable", "additionalProperties",
                         "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string"}


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """What the API server's structural-schema check would refuse (the rules of apiextensions v1)."""
    problems = []
    for path, node in walk(schema):
        inside_junctor = "<" in path
        for key in ("$ref", "definitions", "$defs", "$schema", "dependencies", "patternProperties", "id"):
            if key in node:
                problems.append(f"{path}: {key} is not allowed")
        if node.get("uniqueItems") is True:
            problems.append(f"{path}: uniqueItems cannot be true")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false is not allowed")
        if "additionalProperties" in node and "properties" in node:
            problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if inside_junctor:
            misplaced = FORBIDDEN_IN_JUNCTORS & set(node)
            problems.extend(f"{path}: {k} is not allowed in anyOf/allOf/oneOf" for k in sorted(misplaced))
        elif "type" not in node and not node.get("x-kubernetes-int-or-string") \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if "format" in node and node["format"] not in K8S_FORMATS:
            problems.append(f"{path}: unknown format {node['format']}")
        if "pattern" in node:
            re.compile(node["pattern"])
        if node.get("nullable") and "enum" in node and None not in node["enum"]:
            problems.append(f"{path}: nullable enum without null")
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "set" and node["items"].get("type") not in ("string", "integer", "number", "boolean"):
            problems.append(f"{path}: list-type set needs scalar items")
        if list_type == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                if key not in items.get("required", []):
                    problems.append(f"{path}: map key {key} must be required")
    return problems


def test_the_crd_schema_is_structural() -> None:
    assert structural_problems(ROOT_SCHEMA) == []
    assert ROOT_SCHEMA["properties"]["metadata"] == {"type": "object"}
    nodes = [node for _, node in walk(ROOT_SCHEMA)]
    assert not [n for n in nodes if "x-kubernetes-preserve-unknown-fields" in n]
    assert not [p for p, n in walk(SPEC_SCHEMA) if "default" in n], "defaults would override the host's values"


def test_the_structural_check_catches_what_pydantic_emits_raw() -> None:
    raw = PowerPolicySpec.model_json_schema()
    problems = structural_problems(raw)
    assert any("$defs is not allowed" in p for p in problems)
    assert any("additionalProperties: false" in p for p in problems)


def test_the_spec_schema_mirrors_the_model() -> None:
    props = SPEC_SCHEMA["properties"]
    assert set(props) == {"trigger", "shutdown", "startup", "flux", "ups"}
    trigger = props["trigger"]["properties"]["safety_factor"]
    assert trigger == {"type": "number", "description": trigger["description"], "minimum": 1.0, "maximum": 10.0}
    assert trigger["description"].endswith("hecate.yaml default: 1.1.")
    poll = props["trigger"]["properties"]["poll_interval_s"]
    assert (poll["minimum"], poll["exclusiveMinimum"], poll["maximum"]) == (0, True, 86400)
    assert props["startup"]["properties"]["wake"]["enum"] == ["none", "wol", "command"]
    tier = props["shutdown"]["properties"]["scale_down"]["items"]
    assert tier["required"] == ["name", "selector"]
    assert tier["properties"]["namespace"]["nullable"] is True
    assert props["flux"]["properties"]["git_repository"]["type"] == "string"
    assert props["ups"]["minItems"] == 1
    for path in policy.EXCLUDED_FIELDS:
        node = SPEC_SCHEMA
        *parents, leaf = path.split(".")
        for part in parents:
            node = node["properties"][part]
        assert leaf not in node["properties"], path


def test_the_crd_is_a_valid_customresourcedefinition() -> None:
    assert kubernetes_validate.validate(CRD, KUBERNETES, strict=True) == KUBERNETES
    broken = copy.deepcopy(CRD)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["minimum"] = "zero"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


# -- manifests/ -----------------------------------------------------------------------------------


def _group(kind: str) -> str:
    return KINDS[kind].group


def test_rbac_is_valid_and_grants_only_what_the_steps_need() -> None:
    role, binding, lease_role, lease_binding = load_all(MANIFESTS / "rbac.yaml")
    for obj in (role, binding, lease_role, lease_binding):
        assert kubernetes_validate.validate(obj, KUBERNETES, strict=True) == KUBERNETES
    # Startup reads the kubelets' Leases, in kube-node-lease only and read-only.
    assert (lease_role["kind"], lease_role["metadata"]["namespace"]) == ("Role", NODE_LEASE_NAMESPACE)
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]}]
    assert lease_binding["metadata"]["namespace"] == NODE_LEASE_NAMESPACE
    assert lease_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                        "name": lease_role["metadata"]["name"]}
    assert lease_binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "hecate"}]
    granted: set[tuple[str, str, str]] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    wanted = {
        *(("kustomize.toolkit.fluxcd.io", "kustomizations", v) for v in ("get", "list", "patch")),
        *(("helm.toolkit.fluxcd.io", "helmreleases", v) for v in ("get", "list", "patch")),
        *(("source.toolkit.fluxcd.io", "gitrepositories", v) for v in ("get", "list", "patch")),
        *(("apps", r, v) for r in ("deployments", "statefulsets") for v in ("get", "list", "patch", "create")),
        ("apps", "daemonsets", "get"), ("apps", "daemonsets", "list"),
        ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "patch"),
        ("", "pods", "list"), ("", "pods", "delete"), ("", "pods/eviction", "create"),
        ("storage.k8s.io", "volumeattachments", "list"),
        *(("hecate.io", "powerpolicies", v) for v in ("get", "list", "watch", "patch")),
        ("hecate.io", "powerpolicies/status", "patch"),
        ("", "events", "create"),
        # The bootstrap cache: get + create on exactly the kinds the kube adapter can cache.
        *((_group(kind), KINDS[kind].plural, v) for kind in CACHEABLE_KINDS for v in ("get", "create")),
        # Drills delete the workloads they expect startup to re-create.
        *(("apps", r, "delete") for r in ("deployments", "statefulsets", "daemonsets")),
    }
    assert granted == wanted
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hecate"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "hecate"}]


def test_every_rbac_rule_says_which_step_needs_it() -> None:
    lines = (MANIFESTS / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            above = lines[i - 1].strip()
            assert above.startswith("#") or lines[i - 3].strip().startswith("- apiGroups"), f"line {i + 1}"


def test_the_example_policy_is_valid_for_the_crd_and_for_hecate() -> None:
    assert EXAMPLE["apiVersion"] == "hecate.io/v1alpha1"
    assert EXAMPLE["kind"] == "PowerPolicy"
    assert "namespace" not in EXAMPLE["metadata"]  # cluster-scoped
    crd_validator(ROOT_SCHEMA).validate(EXAMPLE)
    assert prune(EXAMPLE["spec"], SPEC_SCHEMA) == EXAMPLE["spec"]  # nothing the API server would drop
    parsed = parse_policy(EXAMPLE)
    assert parsed.ups == ["pyrphoros"]
    assert parsed.trigger.safety_factor == pytest.approx(1.25)  # type: ignore[attr-defined]


FLUX_KUSTOMIZATION = {  # the part of kustomize.toolkit.fluxcd.io/v1 Kustomization the example uses
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kustomize.toolkit.fluxcd.io/v1"},
        "kind": {"const": "Kustomization"},
        "metadata": {"type": "object", "required": ["name", "namespace"], "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}},
        "spec": {
            "type": "object", "required": ["interval", "prune", "sourceRef"], "additionalProperties": False,
            "properties": {
                "interval": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
                "retryInterval": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
                "timeout": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
                "path": {"type": "string"},
                "prune": {"type": "boolean"},
                "sourceRef": {"type": "object", "required": ["kind", "name"], "additionalProperties": False,
                              "properties": {"kind": {"enum": ["OCIRepository", "GitRepository", "Bucket"]},
                                             "name": {"type": "string"}, "namespace": {"type": "string"}}},
            },
        },
    },
}


def test_the_flux_kustomization_example() -> None:
    [obj] = load_all(MANIFESTS / "flux-kustomization.yaml")
    jsonschema.Draft202012Validator(FLUX_KUSTOMIZATION).validate(obj)
    assert obj["spec"]["path"] == "./infrastructure/hecate"
    assert obj["spec"]["prune"] is True
    assert obj["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "flux-system"}
    assert obj["metadata"]["namespace"] == "flux-system"


def test_the_kustomization_lists_files_of_its_own_directory() -> None:
    [kustomization] = load_all(MANIFESTS / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) == {"apiVersion", "kind", "resources"}
    assert kustomization["resources"] == ["rbac.yaml", "powerpolicy-example.yaml"]
    for resource in kustomization["resources"]:
        path = (MANIFESTS / resource).resolve()
        assert path.parent == MANIFESTS.resolve(), f"{resource}: kustomize's load restrictor refuses it"
        assert load_all(path)
    assert "kubectl apply -f crds/" in (MANIFESTS / "kustomization.yaml").read_text()


# -- the CRD schema and the model agree -------------------------------------------------------------


def _k8s_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    # Go's RE2 in the API server (and Rust's regex in pydantic): `$` is the end of the text only.
    if isinstance(instance, str) and not re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern,
                                                   instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _list_type(validator: Any, list_type: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list):
        return
    if list_type == "set":
        keys = [repr(item) for item in instance]
    elif list_type == "map":
        names = schema["x-kubernetes-list-map-keys"]
        keys = [repr([item.get(n) for n in names]) for item in instance if isinstance(item, dict)]
    else:
        return
    if len(keys) != len(set(keys)):
        yield jsonschema.ValidationError(f"duplicate entries in a list-type {list_type}")


def _openapi_to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if node.pop("nullable", False):
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {k: _openapi_to_jsonschema(v) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = _openapi_to_jsonschema(node["items"])
    return node


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI v3.0's keywords: exclusiveMinimum is a boolean
    {"pattern": _k8s_pattern, "x-kubernetes-list-type": _list_type},
)


def crd_validator(schema: dict[str, Any]) -> Any:
    """The API server's verdict on an object, as far as the schema goes (after pruning)."""
    converted = _openapi_to_jsonschema(schema)
    CrdValidator.check_schema(converted)
    return CrdValidator(converted)


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server stores: fields the schema does not know are dropped."""
    if isinstance(value, dict) and "properties" in schema:
        return {k: prune(v, schema["properties"][k]) for k, v in value.items() if k in schema["properties"]}
    if isinstance(value, list) and "items" in schema:
        return [prune(v, schema["items"]) for v in value]
    return value


SPEC_VALIDATOR = crd_validator(SPEC_SCHEMA)


def crd_accepts(doc: Any) -> bool:
    return SPEC_VALIDATOR.is_valid(prune(doc, SPEC_SCHEMA))


def model_accepts(doc: Any) -> bool:
    try:
        PowerPolicySpec.model_validate(doc)
    except ValidationError:
        return False
    return True


CASES: dict[str, tuple[Any, bool]] = {
    "empty": ({}, True),
    "every section": ({"trigger": {"safety_factor": 1.3, "debounce_polls": 2}, "shutdown": {"parallelism": 4},
                       "startup": {"wake": "wol"}, "flux": {"detection_window_s": 60}, "ups": ["pyrphoros"]}, True),
    "int for a number": ({"trigger": {"safety_factor": 2}}, True),
    "bounds inclusive": ({"trigger": {"safety_factor": 10, "debounce_polls": 100}}, True),
    "nullable null": ({"shutdown": {"scale_down": [{"name": "a", "namespace": None, "selector": "x"}]}}, True),
    "cluster-scoped object ref": ({"flux": {"bootstrap_objects": ["/namespace/gitea"]}}, True),
    "Kind in any case": ({"startup": {"foundation": ["kube-system/Deployment/coredns"]}}, True),
    "string for an int": ({"trigger": {"debounce_polls": "3"}}, False),
    "float for an int": ({"trigger": {"debounce_polls": 2.5}}, False),
    "bool for an int": ({"trigger": {"debounce_polls": True}}, False),
    "int for a bool": ({"shutdown": {"flux_suspend": 1}}, False),
    "number for a string": ({"flux": {"namespace": 3}}, False),
    "above maximum": ({"trigger": {"safety_factor": 10.5}}, False),
    "below minimum": ({"trigger": {"debounce_polls": 0}}, False),
    "exclusive minimum": ({"trigger": {"poll_interval_s": 0}}, False),
    "above a day": ({"shutdown": {"drain_timeout_s": 86401}}, False),
    "percent above 100": ({"startup": {"min_charge_percent": 101}}, False),
    "bad enum": ({"startup": {"wake": "ipmi"}}, False),
    "missing required": ({"shutdown": {"scale_down": [{"name": "apps"}]}}, False),
    "empty required string": ({"shutdown": {"scale_down": [{"name": "", "selector": "x"}]}}, False),
    "null section": ({"trigger": None}, False),
    "null non-nullable": ({"flux": {"namespace": None}}, False),
    "section not an object": ({"startup": []}, False),
    "list not a list": ({"startup": {"foundation": "gitea/deployment/gitea"}}, False),
    "bad workload kind": ({"startup": {"foundation": ["kube-system/pod/coredns"]}}, False),
    "bad workload ref": ({"flux": {"gitea_workload": "gitea"}}, False),
    "bad object ref": ({"flux": {"bootstrap_objects": ["gitea/service/"]}}, False),
    "duplicate refs": ({"startup": {"foundation": ["a/deployment/b", "a/deployment/b"]}}, False),
    "duplicate tiers": ({"shutdown": {"scale_down": [{"name": "a", "selector": "x"},
                                                     {"name": "a", "selector": "y"}]}}, False),
    "no UPS": ({"ups": []}, False),
    "duplicate UPS": ({"ups": ["a", "a"]}, False),
    "bad UPS name": ({"ups": ["pyrphoros\n"]}, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_crd_and_model_give_the_same_verdict(name: str) -> None:
    doc, valid = CASES[name]
    assert model_accepts(doc) is valid
    assert crd_accepts(doc) is valid


@pytest.mark.parametrize("doc", [
    {"trigger": {"safety_factr": 1.2}},
    {"bogus": {}},
    {"shutdown": {"scale_down": [{"name": "a", "selector": "x", "extra": 1}]}},
    {"shutdown": {"execute": True}},
    {"shutdown": {"remote_poweroff_command": "reboot", "storage_quiesce": {"hooks": [["rm", "-rf", "/"]]}}},
    {"startup": {"wake_command": ["sh"]}},
    {"flux": {"fallback_manifests_dir": "/"}},
])
def test_unknown_and_excluded_keys_are_pruned_by_the_api_server_and_rejected_by_hecate(doc: dict[str, Any]) -> None:
    assert crd_accepts(doc)
    assert prune(doc, SPEC_SCHEMA) != doc
    assert not model_accepts(doc)
    assert model_accepts(prune(doc, SPEC_SCHEMA))


def _values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values near and beyond what ``schema`` allows, plus some of the wrong type."""
    wrong = st.sampled_from([None, True, False, 0, -1, 1.5, "", "x", "3", [], {}, ["x"]])
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        right: st.SearchStrategy[Any] = st.fixed_dictionaries({}, optional={k: _values(v) for k, v in props.items()})
    elif kind == "array":
        right = st.lists(_values(schema["items"]), max_size=3)
    elif kind in ("integer", "number"):
        low, high = schema.get("minimum", -10), schema.get("maximum", 10**6)
        edges = [low, high, low - 1, high + 1, (low + high) // 2]
        if kind == "number":
            edges += [low + 0.5, high - 0.5, high + 0.001, float(low)]
            right = st.one_of(st.sampled_from(edges), st.floats(low - 2, high + 2, allow_nan=False))
        else:
            right = st.one_of(st.sampled_from(edges), st.integers(low - 2, high + 2))
    elif kind == "boolean":
        right = st.booleans()
    elif "enum" in schema:
        right = st.sampled_from([*schema["enum"], "bogus", schema["enum"][0].upper()])
    elif "pattern" in schema:
        right = st.one_of(
            st.sampled_from(["gitea/deployment/gitea", "a/StatefulSet/b", "/namespace/x", "ns/pod/p", "pyrphoros",
                             "a_b.c-1", "bad name", "x\n", "a/b", "a//b"]),
            st.text(alphabet="ab/.-_ \nDdeploymentS", max_size=20),
        )
    else:
        right = st.one_of(st.sampled_from(["", "a", "flux-system", "tier=apps"]), st.text(max_size=5))
    if schema.get("nullable"):
        right = st.one_of(right, st.none())
    return st.one_of(right, right, right, wrong)


def _fields(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield (*prefix, name), sub
        yield from _fields(sub, (*prefix, name))


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for part in reversed(path[1:]):
        value = {part: value}
    return {path[0]: value}


FIELDS = list(_fields(SPEC_SCHEMA))
ONE_FIELD = st.sampled_from(FIELDS).flatmap(lambda f: _values(f[1]).map(lambda v: _nest(f[0], v)))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(ONE_FIELD, _values(SPEC_SCHEMA)))
def test_crd_and_model_agree_on_generated_documents(doc: Any) -> None:
    assert crd_accepts(doc) == model_accepts(doc), doc
