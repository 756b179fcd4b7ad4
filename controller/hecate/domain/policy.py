"""The ``PowerPolicy`` custom resource: its spec and how it overlays ``hecate.yaml``.

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
only what the policy *set*, and only within the host's envelope (:mod:`hecate.domain.envelope`:
``policy.envelope`` in hecate.yaml bounds what a policy may set, beyond what the spec allows).
The CRD is generated from :class:`PowerPolicySpec` by :mod:`hecate.domain.crd`. Unknown keys
are pruned by the API server (structural schemas cannot forbid them); Hecate's own validation
is the one that rejects them.
"""

from __future__ import annotations

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
from hecate.domain import envelope, validation
from hecate.domain.reference import model_in

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
_FLOOR = ("the floor under the learned budget is the host's safety net: whoever can edit the PowerPolicy must not "
          "be able to make the runtime trigger fire later than the host allows; set it in hecate.yaml")
_SANITY = ("which runtime readings are trusted judges the host's own UPS hardware: whoever can edit the PowerPolicy "
           "must not be able to make the runtime trigger ignore (or trust) them; set it in hecate.yaml")
_ARMING = ("arming stays a host decision: whoever can edit the PowerPolicy must not be able to make Hecate "
           "power the cluster off; set it in hecate.yaml on the coordinator")

EXCLUDED_FIELDS: Final[Mapping[str, str]] = MappingProxyType({
    "trigger.min_budget_s": _FLOOR,
    "trigger.max_plausible_runtime_s": _SANITY,
    "trigger.runtime_zero_charge_pct": _SANITY,
    "trigger.runtime_frozen_polls": _SANITY,
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
would own the cluster. ``trigger.min_budget_s`` is the floor under the learned threshold:
lowering it would let a policy delay the runtime trigger past what the host allows. The others
carry commands (argv or a remote command line) or a path on the host.
"""

SECTIONS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(dict(cfg.POLICY_SECTIONS))
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
    Commands, host paths and arming (`shutdown.execute`) stay in hecate.yaml, and what is set
    must lie within the host's envelope (`policy.envelope` in hecate.yaml), which this schema
    cannot show.
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


def _error(loc: tuple[str | int, ...], message: str, value: Any, kind: str = "policy_conflict") -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


def effective_config(config: cfg.HecateConfig, spec: PowerPolicySpec) -> cfg.HecateConfig:
    """The host configuration with the policy's *set* fields laid over it, re-validated.

    Sections merge field by field (nested sections too), lists are replaced whole; ``ups``
    sets every configured UPS's ``protects_cluster``. Raises
    :class:`pydantic.ValidationError` when the combination is invalid: errors Hecate finds
    between policy and host -- a field outside the host's envelope
    (:mod:`hecate.domain.envelope`) among them -- are located in the policy (``spec.ups``),
    errors of the merged configuration's own validators as in hecate.yaml (``startup.wake``).
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
    errors.extend(_error(("spec", *v.path), v.message, v.value, "policy_envelope")
                  for v in envelope.violations(config, spec))
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
