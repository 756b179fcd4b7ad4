"""The host's envelope around a PowerPolicy: which fields it may set, and within which limits.

Whoever can edit the PowerPolicy -- anyone who can push to the Flux path, or a namespace admin
with a wide ClusterRole -- must not be able to switch protection off or make a blip power the
cluster off. The spec's own bounds (the CRD's) only say what is *valid*; ``policy.envelope``
in hecate.yaml says what this host *accepts*:

- polls, deadtime, debounce, safety factor, default budget, budget history, cache refresh and
  the startup charge lie within the envelope's static limits;
- a timeout or wait lies between ``min_timeout_fraction`` of hecate.yaml's own value and that
  value: a policy may shorten it, never hold the power-off back longer than the host would;
- an optional trigger hecate.yaml sets may only be tightened: ``trigger.charge_floor_pct`` raised
  (up to the envelope's maximum), ``trigger.max_on_battery_s`` shortened (down to its minimum),
  never switched off -- a floor of 0 % or a day on battery would switch it off all the same;
- ``shutdown.parallelism`` may be raised, never lowered below hecate.yaml's (a hung node would
  keep the others from their power-off until the stage deadline cancels them);
- ``shutdown.ups_power_cycle`` (the UPS cuts its outputs) may be switched off, never on when
  hecate.yaml leaves it off;
- ``ups`` may add UPSes, never drop one hecate.yaml marks ``protects_cluster``;
- ``policy.envelope.locked`` names fields or sections a policy may not set at all;
- a value equal to hecate.yaml's own is always inside the limits: it changes nothing.

Every field a policy can set has a rule in :data:`RULES` -- a limit, or :class:`Free` with the
reason none is needed -- and a field without one cannot be set (fail closed; a test keeps the
table complete). :func:`violations` is purely computational; :func:`hecate.domain.policy.effective_config`
calls it, so a policy is checked when the operator accepts it *and* when the cache is loaded: a
cache written before the envelope tightened does not bypass it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from pydantic import BaseModel

from hecate.domain.config import Envelope, HecateConfig


@dataclass(frozen=True)
class Between:
    """Within the envelope's static limits: ``low`` and ``high`` name ``policy.envelope`` fields
    (None: no limit on that side beyond the spec's own)."""

    low: str | None
    high: str | None
    tighten: Literal["raise", "lower"] | None = None
    """When hecate.yaml sets the field, a policy may only tighten it: ``raise`` never below hecate.yaml's value,
    ``lower`` never above it (None: hecate.yaml's value is no limit)."""


@dataclass(frozen=True)
class HostTimeout:
    """A timeout or wait: between ``min_timeout_fraction`` x hecate.yaml's value and that value."""


@dataclass(frozen=True)
class NotBelowHost:
    """At least hecate.yaml's value: a policy may raise it, never lower it."""


@dataclass(frozen=True)
class NeverOn:
    """A switch that cuts power: a policy may turn it off, never on when hecate.yaml leaves it off."""


@dataclass(frozen=True)
class KeepProtecting:
    """``ups``: may add UPSes, never drop one hecate.yaml marks ``protects_cluster``."""


@dataclass(frozen=True)
class Free:
    """No limit beyond the spec's own; ``reason`` says why none is needed."""

    reason: str


Rule = Between | HostTimeout | NotBelowHost | NeverOn | KeepProtecting | Free

_TIMEOUT: Final = HostTimeout()
_NAMES = ("names cluster objects the editor can reach through the API anyway; a wrong name makes a Kubernetes "
          "step fail or skip, never the stop and power-off steps")

RULES: Final[Mapping[str, Rule]] = MappingProxyType({
    "trigger.poll_interval_s": Between("min_poll_interval_s", "max_poll_interval_s"),
    "trigger.poll_interval_on_battery_s": Between("min_poll_interval_s", "max_poll_interval_s"),
    "trigger.debounce_polls": Between("min_debounce_polls", "max_debounce_polls"),
    "trigger.safety_factor": Between("min_safety_factor", "max_safety_factor"),
    "trigger.default_budget_s": Between("min_default_budget_s", "max_default_budget_s"),
    "trigger.budget_history": Between("min_budget_history", None),
    "trigger.deadtime_s": Between("min_deadtime_s", "max_deadtime_s"),
    "trigger.charge_floor_pct": Between(None, "max_charge_floor_pct", tighten="raise"),
    "trigger.max_on_battery_s": Between("min_on_battery_limit_s", None, tighten="lower"),
    "shutdown.parallelism": NotBelowHost(),
    "shutdown.flux_suspend": Free("off, Flux may re-create what is scaled down; the stop and power-off steps "
                                  "run all the same"),
    "shutdown.scale_down": Free("label selectors of workloads to scale to zero, never commands; one stage bounded "
                                "by shutdown.stage_timeout_s"),
    "shutdown.drain_timeout_s": _TIMEOUT,
    "shutdown.storage_quiesce.enabled": Free("adds a wait for volumes (storage_quiesce.timeout_s, bounded) and runs "
                                             "only the hooks hecate.yaml itself lists"),
    "shutdown.storage_quiesce.timeout_s": _TIMEOUT,
    "shutdown.stop_servers_one_by_one": Free("orders the servers' stops; each stop keeps hecate.yaml's SSH "
                                             "timeouts"),
    "shutdown.ups_power_cycle": NeverOn(),
    "shutdown.stage_timeout_s": _TIMEOUT,
    "startup.min_charge_percent": Between("min_startup_charge_percent", None),
    "startup.preflight_timeout_s": _TIMEOUT,
    "startup.wake": Free("how nodes are woken; `command` runs hecate.yaml's own startup.wake_command only"),
    "startup.api_timeout_s": _TIMEOUT,
    "startup.node_ready_timeout_s": _TIMEOUT,
    "startup.foundation": Free("which workloads startup waits for, within startup.foundation_timeout_s (bounded)"),
    "startup.foundation_timeout_s": _TIMEOUT,
    "startup.recovery_after_s": _TIMEOUT,
    "startup.boot_timeout_s": _TIMEOUT,
    "startup.verify_timeout_s": _TIMEOUT,
    "startup.parallelism": Free("how fast the cluster starts; every startup stage keeps its deadline"),
    "flux.namespace": Free(_NAMES),
    "flux.git_repository": Free(_NAMES),
    "flux.gitea_workload": Free(_NAMES),
    "flux.detection_window_s": _TIMEOUT,
    "flux.bootstrap_fallback": Free("off, startup waits and reports a Flux/Gitea deadlock instead of breaking it"),
    "flux.bootstrap_objects": Free("which objects the host caches for the fallback; Secrets cannot be named"),
    "flux.cache_refresh_interval_s": Between("min_cache_refresh_interval_s", None),
    "flux.ready_timeout_s": _TIMEOUT,
    "ups": KeepProtecting(),
})
"""Every field a PowerPolicy can set (dotted path; a list is one field) -> how the envelope bounds it."""


@dataclass(frozen=True)
class Violation:
    """One field of a policy outside the envelope."""

    path: tuple[str, ...]
    """Where, inside the spec (``("trigger", "poll_interval_s")``)."""
    value: Any
    message: str
    """The value and the limit, e.g. ``86400 is above the host's limit 5 (policy.envelope.max_poll_interval_s)``."""

    @property
    def field(self) -> str:
        return ".".join(self.path)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def show(value: Any) -> str:
    """A value as hecate.yaml would write it: ``true``, ``5`` (not ``5.0``), ``0.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def set_fields(spec: BaseModel, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every field ``spec`` *sets*, nested sections descended, in declaration order."""
    for name in type(spec).model_fields:
        if name not in spec.model_fields_set:
            continue
        value = getattr(spec, name)
        if isinstance(value, BaseModel):
            yield from set_fields(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def host_value(host: HecateConfig, path: tuple[str, ...]) -> Any:
    """hecate.yaml's own value of a policy field."""
    value: Any = host
    for part in path:
        value = getattr(value, part)
    return value


def locked_by(envelope: Envelope, field: str) -> str | None:
    """The ``policy.envelope.locked`` entry that covers ``field`` (itself or a section above it)."""
    return next((entry for entry in envelope.locked if field == entry or field.startswith(f"{entry}.")), None)


def _below_product(value: float, limit: float) -> bool:
    """``value < limit`` for a computed limit (0.3 x 100 is 30.000000000000004: 30 is not below it)."""
    return value < limit and not math.isclose(value, limit, rel_tol=1e-9)


def check(rule: Rule, host: HecateConfig, path: tuple[str, ...], value: Any) -> str | None:
    """Why ``value`` for ``path`` is outside ``rule`` (None: inside)."""
    envelope = host.policy.envelope
    field = ".".join(path)
    if isinstance(rule, Free):
        return None
    if isinstance(rule, KeepProtecting):
        dropped = [u.name for u in host.ups if u.protects_cluster and u.name not in value]
        if dropped:
            return (f"leaves out {', '.join(dropped)}, which hecate.yaml marks as protecting the cluster "
                    "(ups[].protects_cluster): a policy may add UPSes, never drop those")
        return None
    own = host_value(host, path)
    if value == own:
        return None  # hecate.yaml's own value changes nothing
    if isinstance(rule, NeverOn):
        if value and not own:
            return (f"{show(value)} is not allowed: hecate.yaml's {field} is false (a policy may switch it off, "
                    "never on)")
        return None
    if isinstance(rule, NotBelowHost):
        if value < own:
            return (f"{show(value)} is below the host's limit {show(own)} (hecate.yaml's {field}: a policy may raise "
                    "it, never lower it)")
        return None
    if isinstance(rule, HostTimeout):
        if value > own:
            return (f"{show(value)} is above the host's limit {show(own)} (hecate.yaml's {field}: a policy may "
                    "shorten it, never lengthen it)")
        floor = envelope.min_timeout_fraction * own
        if _below_product(value, floor):
            return (f"{show(value)} is below the host's limit {show(round(floor, 6))} "
                    f"(policy.envelope.min_timeout_fraction {show(envelope.min_timeout_fraction)} x hecate.yaml's "
                    f"{show(own)})")
        return None
    if value is None:  # an optional trigger switched off: only where hecate.yaml leaves it off (own is not None)
        return (f"off is not allowed: hecate.yaml sets {field} to {show(own)} (a policy may change it within the "
                "limits, never switch it off)")
    if rule.tighten == "raise" and own is not None and value < own:
        return (f"{show(value)} is below the host's limit {show(own)} (hecate.yaml's {field}: a policy may raise "
                "it, never lower it)")
    if rule.tighten == "lower" and own is not None and value > own:
        return (f"{show(value)} is above the host's limit {show(own)} (hecate.yaml's {field}: a policy may lower "
                "it, never raise it)")
    if rule.low is not None and value < getattr(envelope, rule.low):
        return (f"{show(value)} is below the host's limit {show(getattr(envelope, rule.low))} "
                f"(policy.envelope.{rule.low})")
    if rule.high is not None and value > getattr(envelope, rule.high):
        return (f"{show(value)} is above the host's limit {show(getattr(envelope, rule.high))} "
                f"(policy.envelope.{rule.high})")
    return None


def violations(host: HecateConfig, spec: BaseModel) -> list[Violation]:
    """Every field ``spec`` (a :class:`~hecate.domain.policy.PowerPolicySpec`) sets outside ``host``'s envelope.

    Only what the policy *sets* is judged -- a field left out keeps hecate.yaml's value, which the
    envelope does not bind. Purely computational.
    """
    envelope = host.policy.envelope
    out: list[Violation] = []
    for path, value in set_fields(spec):
        field = ".".join(path)
        entry = locked_by(envelope, field)
        if entry is not None:
            why = f"hecate.yaml does not let a PowerPolicy set it (policy.envelope.locked: {entry})"
            out.append(Violation(path, value, why))
            continue
        rule = RULES.get(field)
        if rule is None:  # a field added to the models without a rule: refused until it has one
            out.append(Violation(path, value, "the host's policy envelope has no rule for this field, so a "
                                              "PowerPolicy cannot set it"))
            continue
        problem = check(rule, host, path, value)
        if problem is not None:
            out.append(Violation(path, value, problem))
    return out
