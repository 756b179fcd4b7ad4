"""The PowerPolicy's CustomResourceDefinition, generated (``crds/powerpolicy.yaml``).

``scripts/update-docs.py`` writes :func:`definition` to ``crds/powerpolicy.yaml`` and a
test keeps the file in step. The ``spec`` schema is generated from
:class:`hecate.domain.policy.PowerPolicySpec` (itself generated from hecate.yaml's models)
and turned into a Kubernetes *structural* schema: no ``$ref``, ``anyOf`` only as
``nullable``, no keywords the API server refuses. It carries no ``default`` keywords,
because the API server would write every default into the stored object and the host's
values would never show through; each default is named in the description instead. The
``status`` schema is written here by hand: Hecate alone writes the status. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from hecate.domain import policy, policy_source
from hecate.domain.runs import RunResult
from hecate.domain.trigger import Phase as UpsPhase

_CRD_EXTRAS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType({
    # What the models check in validators, said in the schema's own words so that
    # `kubectl apply` and Flux refuse it too (tests/unit/test_policy.py checks both agree).
    "ups": {"x-kubernetes-list-type": "set"},
    "shutdown.scale_down": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    "startup.foundation": {"x-kubernetes-list-type": "set", "items": {"pattern": policy.WORKLOAD_REF_PATTERN}},
    "flux.gitea_workload": {"pattern": policy.WORKLOAD_REF_PATTERN},
    "flux.bootstrap_objects": {"x-kubernetes-list-type": "set", "items": {"pattern": policy.OBJECT_REF_PATTERN}},
})

_KEY_ORDER = ("type", "format", "nullable", "description", "enum", "minimum", "exclusiveMinimum", "maximum",
              "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "required",
              "properties", "items")
_DROPPED = frozenset({"title", "default", "additionalProperties", "$defs", "uniqueItems"})
_K8S_FORMATS = frozenset({"int32", "int64", "float", "double", "byte", "date", "date-time", "password"})


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def _structural(node: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A pydantic JSON schema node as a Kubernetes structural schema node."""
    node = dict(node)
    if "$ref" in node:
        node = {**defs[node.pop("$ref").rsplit("/", 1)[-1]], **node}
    if "anyOf" in node:
        options = node.pop("anyOf")
        solid = [o for o in options if o.get("type") != "null"]
        if len(solid) != 1:
            raise TypeError(f"{path}: only `X | None` unions have a structural schema")
        node = {**_structural(solid[0], defs, path), **node}
        if len(solid) < len(options):
            node["nullable"] = True
            if "enum" in node:  # the API server checks a null against the enum too
                node["enum"] = [*node["enum"], None]
    out: dict[str, Any] = {}
    if "default" in node:
        default = f"hecate.yaml default: {_show(node['default'])}."
        node["description"] = f"{node['description']} {default}" if node.get("description") else default
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            node[key.replace("exclusiveM", "m")] = node.pop(key)
            node[key] = True
    if node.get("format") not in _K8S_FORMATS:
        node.pop("format", None)
    if "properties" in node:
        node["properties"] = {name: _structural(sub, defs, f"{path}.{name}".lstrip("."))
                              for name, sub in node["properties"].items()}
    if "items" in node:
        node["items"] = _structural(node["items"], defs, f"{path}[]")
    for key, value in _CRD_EXTRAS.get(path, {}).items():
        node[key] = {**node[key], **value} if isinstance(value, Mapping) else value
    if "type" not in node:
        raise TypeError(f"{path or 'spec'}: no type in {node}")
    for key in _KEY_ORDER:
        if key in node:
            out[key] = node[key]
    for key, value in node.items():
        if key not in out and key not in _DROPPED:
            if not key.startswith("x-kubernetes-"):
                raise TypeError(f"{path or 'spec'}: {key} has no structural form")
            out[key] = value
    return out


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``spec``, generated from :class:`~hecate.domain.policy.PowerPolicySpec`."""
    raw = policy.PowerPolicySpec.model_json_schema(mode="validation")
    missing = [p for p in _CRD_EXTRAS if not _has_path(raw, p)]
    if missing:
        raise TypeError(f"_CRD_EXTRAS names fields the spec does not have: {missing}")
    return _structural(raw, raw.get("$defs", {}), "")


def _has_path(raw: Mapping[str, Any], path: str) -> bool:
    node: Any = raw
    defs = raw.get("$defs", {})
    for part in path.split("."):
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = node.get("properties", {}).get(part)
        if node is None:
            return False
    return True


PHASES: Final = ("Pending", "Active", "Invalid", "ShuttingDown", "StartingUp")
"""``status.phase``: not yet seen by Hecate, in force, rejected (the last valid policy or the
host's baseline stays in force), a shutdown or a startup in progress."""

_TIME: Final = {"type": "string", "format": "date-time"}


def _obj(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, **extra, "properties": properties}


def _num(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "number", "description": description, **extra}


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def status_schema() -> dict[str, Any]:
    """``status``, written by Hecate only (through the status subresource)."""
    ups_states = [p.value for p in UpsPhase]
    member = _obj("One UPS from hecate.yaml.", {
        "name": _str("UPS name."),
        "state": _str("Its trigger state.", enum=ups_states),
        "protectsCluster": {"type": "boolean", "description": "Whether it protects the cluster (can trigger)."},
        "reachable": {"type": "boolean", "description": "Whether upsd answered with current data."},
        "onBattery": {"type": "boolean", "description": "Whether it reports `OB`."},
        "runtimeSeconds": _num("Battery runtime it reports; null when not known.", nullable=True),
        "chargePercent": _num("Battery charge; null when not known.", nullable=True),
    }, required=["name", "state"])
    condition = _obj("A metav1.Condition.", {
        "type": _str("Condition type: `Ready` (this generation is valid and in force), `Stalled` (kstatus: True "
                     "when it is rejected), `Cached` (saved on the host for when the API is gone), `Armed` (the "
                     "host's shutdown.execute), `ShutdownInProgress`.", maxLength=316),
        "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _str("CamelCase reason.", maxLength=1024),
        "message": _str("Human-readable detail, e.g. the field a rejected policy got wrong.", maxLength=32768),
        "lastTransitionTime": {**_TIME, "description": "When the status last changed."},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "metadata.generation the condition was set for."},
    }, required=["type", "status", "reason", "message", "lastTransitionTime"])
    return _obj("What Hecate made of this policy and the state of the power, written by Hecate.", {
        "phase": _str("Pending, Active, Invalid, ShuttingDown or StartingUp.", enum=list(PHASES)),
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "metadata.generation Hecate last processed."},
        "conditions": {"type": "array", "description": "Standard conditions.", "items": condition,
                       "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        "ups": _obj("The UPSes that protect the cluster, summarised by the one closest to a shutdown.", {
            "state": _str("Worst trigger state among the protecting UPSes.", enum=ups_states),
            "name": _str("The UPS the summary is about."),
            "runtimeSeconds": _num("Its battery runtime; null when not known.", nullable=True),
            "chargePercent": _num("Its battery charge; null when not known.", nullable=True),
            "onBattery": {"type": "boolean", "description": "Whether any protecting UPS is on battery."},
            "members": {"type": "array", "description": "Every UPS in hecate.yaml.", "items": member,
                        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        }),
        "budgetSeconds": _num("The shutdown budget in force.", minimum=0),
        "budgetSource": _str("`measured` from recent shutdowns, or the `default`.", enum=["measured", "default"]),
        "thresholdSeconds": _num("Runtime at or below which a protecting UPS on battery triggers a shutdown.",
                                 minimum=0),
        "lastRun": _obj("The last run in runs.json.", {
            "id": _str("Run id."),
            "kind": _str("shutdown, startup or drill.", enum=["shutdown", "startup", "drill"]),
            "result": _str("Outcome; absent while in flight.", enum=[r.value for r in RunResult]),
            "dryRun": {"type": "boolean", "description": "True for a dry run (shutdown.execute false): the "
                                                     "decision was recorded, nothing was stopped or powered off."},
            "startedAt": {**_TIME, "description": "Start."},
            "finishedAt": {**_TIME, "nullable": True, "description": "End; null while in flight."},
            "durationSeconds": _num("How long it took.", minimum=0, nullable=True),
        }),
        "source": _str("Where the policy in force comes from: this object (`cluster`), Hecate's cache of the last "
                       "valid one (`cache`, e.g. while this one is invalid or the API was unreachable), or "
                       "hecate.yaml alone (`host`).", enum=[s.value for s in policy_source.Source]),
        "cachedAt": {**_TIME, "description": "When the policy in force was written to Hecate's cache."},
    })


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def definition() -> dict[str, Any]:
    """The PowerPolicy CustomResourceDefinition (``crds/powerpolicy.yaml``)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": policy.CRD_NAME, "labels": {"app.kubernetes.io/name": "hecate"}},
        "spec": {
            "group": policy.GROUP,
            "scope": "Cluster",
            "names": {"kind": policy.KIND, "listKind": f"{policy.KIND}List", "plural": policy.PLURAL,
                      "singular": policy.SINGULAR, "shortNames": list(policy.SHORT_NAMES), "categories": ["hecate"]},
            "versions": [{
                "name": policy.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    _column("Phase", "string", ".status.phase", "Pending, Active, Invalid, ShuttingDown, StartingUp"),
                    _column("UPS", "string", ".status.ups.state", "Worst state among the protecting UPSes"),
                    _column("Runtime", "number", ".status.ups.runtimeSeconds", "Battery runtime (s)"),
                    _column("Threshold", "number", ".status.thresholdSeconds", "Shutdown threshold (s)"),
                    _column("Budget", "number", ".status.budgetSeconds", "Shutdown budget (s)"),
                    _column("Last run", "date", ".status.lastRun.finishedAt", "When the last run ended"),
                    _column("Dry run", "boolean", ".status.lastRun.dryRun",
                            "Whether the last run was a dry run (nothing powered off)"),
                    _column("Result", "string", ".status.lastRun.result", "How the last run ended", priority=1),
                    _column("Source", "string", ".status.source", "Where the policy in force comes from",
                            priority=1),
                    _column("Age", "date", ".metadata.creationTimestamp", "Age"),
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": ("The cluster's power policy for Hecate: when and how to shut the cluster down "
                                    "and bring it back. Hecate validates it again with the models of hecate.yaml; "
                                    "keys this schema does not know are pruned by the API server (ignored). spec "
                                    "keys are hecate.yaml's own (snake_case), status keys camelCase."),
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }
