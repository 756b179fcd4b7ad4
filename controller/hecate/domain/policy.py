"""The ``PowerPolicy`` custom resource: its spec, how it overlays ``hecate.yaml``, its CRD.

A cluster-scoped ``PowerPolicy`` (``hecate.io/v1alpha1``, short name ``pp``) lets the
cluster's operators tune *when* and *how* Hecate shuts the cluster down and brings it
back -- the ``trigger``, ``shutdown``, ``startup`` and ``flux`` sections of
``hecate.yaml``, and which UPSes protect the cluster -- from Git or kubectl.

The spec's sections are generated from the configuration models in
:mod:`hecate.domain.config`, field by field, so types, bounds, defaults, validators and
descriptions cannot drift from the file's. Two deliberate differences:

- **Fields that carry a command or a host path are left out** (:data:`EXCLUDED_FIELDS`):
  anyone who can edit the object would otherwise run commands on every node as root, and
  so is ``shutdown.execute`` -- arming stays with the host. A spec that sets one is
  rejected with a message saying why.
- **Scalars are validated strictly** (``"3"`` is not an integer, ``1`` is not a boolean),
  as the API server validates them against the CRD.

A field the policy leaves out keeps the host's value: :func:`effective_config` overlays
only what the policy *set*. The CRD (:func:`crd`) is generated from :class:`PowerPolicySpec`
by ``scripts/update-docs.py``; its schema carries no ``default`` keywords, because the API
server would write every default into the stored object and the host's values would never
show through. Unknown keys are pruned by the API server (structural schemas cannot forbid
them); Hecate's own validation is the one that rejects them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from hecate.domain import config as cfg
from hecate.domain import validation
from hecate.domain.reference import model_in
from hecate.domain.runs import RunResult
from hecate.domain.trigger import Phase as UpsPhase

GROUP: Final = "hecate.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "PowerPolicy"
PLURAL: Final = "powerpolicies"
SINGULAR: Final = "powerpolicy"
SHORT_NAMES: Final = ("pp",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

_COMMAND = ("a PowerPolicy never carries commands: whoever can edit it would run them on the nodes as root; "
            "set it in hecate.yaml")
_HOST_PATH = "a PowerPolicy never names paths on the Hecate host; set it in hecate.yaml"
_SOURCE = ("which Git branch Flux deploys after a deadlock is a host decision: whoever can edit the PowerPolicy "
           "and push a branch would choose what the cluster runs; set it in hecate.yaml")
_ARMING = ("arming stays a host decision: whoever can edit the PowerPolicy must not be able to make Hecate "
           "power the cluster off; set it in hecate.yaml on the coordinator")

EXCLUDED_FIELDS: Final[Mapping[str, str]] = MappingProxyType({
    "shutdown.execute": _ARMING,
    "shutdown.remote_poweroff_command": _COMMAND,
    "shutdown.local_poweroff_command": _COMMAND,
    "shutdown.storage_quiesce.hooks": _COMMAND,
    "startup.wake_command": _COMMAND,
    "flux.fallback_manifests_dir": _HOST_PATH,
    "flux.fallback_branch": _SOURCE,
})
"""Every ``hecate.yaml`` field a PowerPolicy may not set (dotted path -> why), in one place.

``shutdown.execute`` is here although it is a plain boolean: whether the daemon acts on its
decision at all is the one switch between "records what it would do" and "powers hardware
off". It belongs to whoever administers the coordinator, not to whoever can edit a custom
resource (a namespace admin with a wide ClusterRole, a Git repository's committers); a
policy tunes an armed Hecate, it never arms or disarms it. ``flux.fallback_branch`` chooses
what Flux deploys when Hecate breaks a deadlock: with it, an editor who can also push a branch
would own the cluster. The others carry commands (argv or a remote command line) or a path on
the host.
"""

SECTIONS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType({
    "trigger": cfg.Trigger,
    "shutdown": cfg.Shutdown,
    "startup": cfg.Startup,
    "flux": cfg.Flux,
})
"""The ``hecate.yaml`` sections a PowerPolicy overlays, with their configuration models."""


def _case_insensitive(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in word)


WORKLOAD_REF_PATTERN: Final = (
    "^[^/]*/(" + "|".join(_case_insensitive(k) for k in cfg.WORKLOAD_KINDS) + ")/[^/]+$"
)
"""``namespace/kind/name`` of a workload (any case of the kind), as the configuration's validator accepts
it (for the CRD)."""
OBJECT_REF_PATTERN: Final = (
    "^([^/]+/(" + "|".join(_case_insensitive(k) for k in cfg.CACHEABLE_KINDS if k != "namespace") + ")|/"
    + _case_insensitive("namespace") + ")/[^/]+$"
)
"""``namespace/kind/name`` of an object the bootstrap cache can hold (``/namespace/name`` for a
Namespace), as the configuration's validator accepts it (for the CRD)."""

_CRD_EXTRAS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType({
    # What the models check in validators, said in the schema's own words so that
    # `kubectl apply` and Flux refuse it too (tests/unit/test_policy.py checks both agree).
    "ups": {"x-kubernetes-list-type": "set"},
    "shutdown.scale_down": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    "startup.foundation": {"x-kubernetes-list-type": "set", "items": {"pattern": WORKLOAD_REF_PATTERN}},
    "flux.gitea_workload": {"pattern": WORKLOAD_REF_PATTERN},
    "flux.bootstrap_objects": {"x-kubernetes-list-type": "set", "items": {"pattern": OBJECT_REF_PATTERN}},
})


# -- the spec model ---------------------------------------------------------------------------


_Hidden = SkipJsonSchema[Any]


class _Overlay(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _refuse(path: str) -> Callable[[Any, ValidationInfo], Any]:
    def refuse(value: Any, info: ValidationInfo) -> Any:
        field = f"{path}.{info.field_name}"
        raise PydanticCustomError("policy_forbidden", "{field} cannot be set in a PowerPolicy: {reason}",
                                  {"field": field, "reason": EXCLUDED_FIELDS[field]})
    return refuse


def _is_enum(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Enum)


def overlay_model(model: type[BaseModel], path: str) -> type[BaseModel]:
    """``model`` as a PowerPolicy section: the same fields (minus :data:`EXCLUDED_FIELDS`),
    field validators and descriptions; scalars strict; nested sections generated likewise.

    Model validators are not copied: they judge a whole section, which only exists once the
    policy is laid over the host's (:func:`effective_config` re-validates it then).
    """
    fields: dict[str, Any] = {}
    refused: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{path}.{name}"
        annotation = info.annotation
        nested = model_in(annotation)
        if dotted in EXCLUDED_FIELDS:
            refused.append(name)
            fields[name] = (_Hidden, Field(default=None, exclude=True, repr=False))
        elif nested is not None:
            if isinstance(annotation, type):  # the section itself
                sub = overlay_model(nested, dotted)
                fields[name] = (sub, Field(default_factory=sub, description=info.description))
            elif get_origin(annotation) is list and get_args(annotation) == (nested,):
                generic_list: Any = list
                fields[name] = (generic_list[overlay_model(nested, f"{dotted}[]")], info)
            else:
                raise TypeError(f"{dotted}: {annotation} has no PowerPolicy form yet")
        elif _is_enum(annotation):
            fields[name] = (annotation, info)
        else:
            fields[name] = (Annotated[annotation, Strict()], info)
    stale = {p for p in EXCLUDED_FIELDS if p.startswith(f"{path}.") and p.count(".") == path.count(".") + 1}
    missing = stale - {f"{path}.{n}" for n in refused}
    if missing:
        raise TypeError(f"EXCLUDED_FIELDS names fields {model.__name__} does not have: {sorted(missing)}")
    validators: dict[str, Any] = {}
    for vname, dec in model.__pydantic_decorators__.field_validators.items():
        if not set(dec.info.fields) & set(refused):
            raw = getattr(dec.func, "__func__", None)  # a classmethod arrives bound to the original model
            func: Any = classmethod(raw) if raw is not None else dec.func
            validators[vname] = field_validator(*dec.info.fields, mode=dec.info.mode)(func)
    if refused:
        validators["_refuse_excluded"] = field_validator(*refused, mode="plain")(_refuse(path))
    section: type[BaseModel] = create_model(
        f"{model.__name__}Policy",
        __base__=_Overlay,
        __module__=__name__,
        __doc__=f"An item of `{path[:-2]}`." if path.endswith("[]") else f"The `{path}` section of hecate.yaml.",
        __validators__=validators,
        **fields,
    )
    return section


def _ups_name() -> Any:
    return Annotated[str, Strict(), *cfg.Ups.model_fields["name"].metadata]


if TYPE_CHECKING:  # the generated classes, as mypy sees them
    TriggerPolicy = BaseModel
    ShutdownPolicy = BaseModel
    StartupPolicy = BaseModel
    FluxPolicy = BaseModel
    UpsName = str
else:
    TriggerPolicy = overlay_model(cfg.Trigger, "trigger")
    ShutdownPolicy = overlay_model(cfg.Shutdown, "shutdown")
    StartupPolicy = overlay_model(cfg.Startup, "startup")
    FluxPolicy = overlay_model(cfg.Flux, "flux")
    UpsName = _ups_name()


def _section_doc(name: str) -> str:
    return f"{cfg.HecateConfig.model_fields[name].description} Fields left out keep hecate.yaml's value."


class PowerPolicySpec(BaseModel):
    """The spec of a PowerPolicy: the cluster's power policy, laid over hecate.yaml.

    Every section and field is optional; one left out keeps the Hecate host's value.
    Commands, host paths and arming (`shutdown.execute`) stay in hecate.yaml.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger: TriggerPolicy = Field(default_factory=TriggerPolicy, description=_section_doc("trigger"))
    shutdown: ShutdownPolicy = Field(default_factory=ShutdownPolicy, description=_section_doc("shutdown"))
    startup: StartupPolicy = Field(default_factory=StartupPolicy, description=_section_doc("startup"))
    flux: FluxPolicy = Field(default_factory=FluxPolicy, description=_section_doc("flux"))
    ups: list[UpsName] = Field(
        default_factory=list, min_length=1,
        description="Names of the UPSes (from hecate.yaml's `ups`) that protect the cluster; the others only "
                    "alert. Left out: hecate.yaml's `protects_cluster` flags.")

    @field_validator("ups")
    @classmethod
    def _unique_ups(cls, value: list[str]) -> list[str]:
        dupes = sorted({n for n in value if value.count(n) > 1})
        if dupes:
            raise ValueError(f"UPS names must be unique; repeated: {', '.join(dupes)}")
        return value


class _Document(BaseModel):
    """A whole PowerPolicy object; metadata and status are not Hecate's to validate."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    apiVersion: Literal["hecate.io/v1alpha1"]
    kind: Literal["PowerPolicy"]
    spec: PowerPolicySpec = Field(default_factory=PowerPolicySpec)


def parse_policy(obj: Mapping[str, Any]) -> PowerPolicySpec:
    """The validated spec of a whole PowerPolicy object (as the API returns it, or as cached).

    Raises :class:`pydantic.ValidationError` located from the object's root
    (``spec.trigger.safety_factor``); :func:`describe_error` turns it into a status message.
    """
    return _Document.model_validate(obj).spec


# -- the overlay ------------------------------------------------------------------------------


def _error(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return {"type": PydanticCustomError("policy_conflict", message), "loc": loc, "input": value}


def effective_config(config: cfg.HecateConfig, spec: PowerPolicySpec) -> cfg.HecateConfig:
    """The host configuration with the policy's *set* fields laid over it, re-validated.

    Sections merge field by field (nested sections too), lists are replaced whole; ``ups``
    sets every configured UPS's ``protects_cluster``. Raises
    :class:`pydantic.ValidationError` when the combination is invalid: errors Hecate finds
    between policy and host are located in the policy (``spec.ups``), errors of the merged
    configuration's own validators as in hecate.yaml (``startup.wake``).
    """
    overlay = spec.model_dump(exclude_unset=True, include=set(SECTIONS))
    merged = cfg.deep_merge(config.model_dump(), overlay)
    errors: list[InitErrorDetails] = []
    if "ups" in spec.model_fields_set:
        known = [u.name for u in config.ups]
        unknown = [n for n in spec.ups if n not in known]
        if unknown:
            errors.append(_error(("spec", "ups"), f"not in hecate.yaml's ups: {', '.join(unknown)} "
                                 f"(known: {', '.join(known) or 'none'})", unknown))
        merged["ups"] = [{**u, "protects_cluster": u["name"] in spec.ups} for u in merged["ups"]]
    wake = overlay.get("startup", {}).get("wake")
    if wake == cfg.Wake.command and not config.startup.wake_command:
        errors.append(_error(("spec", "startup", "wake"),
                             "wake: command needs startup.wake_command in hecate.yaml (a policy cannot carry it)",
                             wake.value))
    if errors:
        raise ValidationError.from_exception_data(KIND, errors)
    return cfg.HecateConfig.model_validate(merged)


# -- messages ---------------------------------------------------------------------------------


def describe_error(err: Exception) -> str:
    """One line for a status condition: ``spec.trigger.safety_factor = 11: Input should be ...``,
    problems joined with ``; ``."""
    if not isinstance(err, ValidationError):
        return str(err)
    return "; ".join(p.text for p in validation.problems(err, _Document))


# -- the CRD ----------------------------------------------------------------------------------

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
    """The structural OpenAPI v3 schema of ``spec``, generated from :class:`PowerPolicySpec`."""
    raw = PowerPolicySpec.model_json_schema(mode="validation")
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
SOURCES: Final = ("cluster", "cache", "host")

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
        "type": _str("Condition type: `Accepted` (the spec is valid), `Cached` (saved on the host for when the API "
                     "is gone), `Armed` (the host's shutdown.execute), `ShutdownInProgress`.", maxLength=316),
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
            "dryRun": {"type": "boolean", "description": "True when nothing was touched."},
            "startedAt": {**_TIME, "description": "Start."},
            "finishedAt": {**_TIME, "nullable": True, "description": "End; null while in flight."},
            "durationSeconds": _num("How long it took.", minimum=0, nullable=True),
        }),
        "source": _str("Where the policy in force comes from: this object (`cluster`), Hecate's cache of the last "
                       "valid one (`cache`, e.g. while this one is invalid or the API was unreachable), or "
                       "hecate.yaml alone (`host`).", enum=list(SOURCES)),
        "cachedAt": {**_TIME, "description": "When the policy in force was written to Hecate's cache."},
    })


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def crd() -> dict[str, Any]:
    """The PowerPolicy CustomResourceDefinition (``crds/powerpolicy.yaml``)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "hecate"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": ["hecate"]},
            "versions": [{
                "name": VERSION,
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
                    _column("Result", "string", ".status.lastRun.result", "How the last run ended", priority=1),
                    _column("Source", "string", ".status.source", "Where the policy in force comes from",
                            priority=1),
                    _column("Age", "date", ".metadata.creationTimestamp", "Age"),
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": ("The cluster's power policy for Hecate: when and how to shut the cluster down "
                                    "and bring it back. Hecate validates it again with the models of hecate.yaml; "
                                    "keys this schema does not know are pruned by the API server (ignored)."),
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
