"""Which policy is in force, and why: the cluster's PowerPolicy, Hecate's cache of it, or hecate.yaml.

Precedence, highest first:

``cluster``
    The PowerPolicy named by ``policy.name``, while the embedded operator is connected to
    the API and the object is valid (:func:`hecate.domain.policy.parse_policy` and
    :func:`~hecate.domain.policy.effective_config` accept it).
``cache``
    ``policy-cache.yaml`` in the state dir: the last object that was valid. It is in force
    whenever the cluster object cannot be: the API is unreachable (a power cut takes it
    down first), the operator has not connected yet, the object is invalid, or it was
    deleted -- **deleting the PowerPolicy does not disarm the host**.
``host``
    ``hecate.yaml`` alone: no ``policy.name``, or no valid policy cached yet.

This is the decision alone, purely computational: :class:`Facts` is everything Hecate
knows about the three sources at one instant, :func:`decide` picks one, and :func:`view`
is the immutable snapshot (:class:`PolicyView`) that status and the operator's status
writer read. Keeping the facts current as the operator reports, and the cache on disk, is
:mod:`hecate.services.policy`'s job.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from hecate.domain import policy, timestamps
from hecate.domain.config import HecateConfig


class Source(StrEnum):
    """Where the policy in force comes from (``status.source`` of the PowerPolicy)."""

    cluster = "cluster"
    cache = "cache"
    host = "host"


class ClusterObject(StrEnum):
    """What Hecate last learnt about the PowerPolicy object in the cluster."""

    unknown = "unknown"  # not seen since the daemon started
    valid = "valid"
    invalid = "invalid"
    deleted = "deleted"  # seen, then deleted
    missing = "missing"  # the API answered: no object of that name


class OperatorLink(StrEnum):
    """The embedded operator's connection to the API."""

    disabled = "disabled"  # no policy.name
    connecting = "connecting"  # not connected yet since the daemon started
    connected = "connected"
    unavailable = "unavailable"  # API unreachable, CRD missing, kubeconfig unusable...


@dataclass(frozen=True)
class CachedPolicy:
    """One PowerPolicy object as Hecate keeps it (in the cache, or as last accepted)."""

    name: str
    uid: str | None
    resource_version: str | None
    generation: int | None
    spec: dict[str, Any]
    cached_at: datetime

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], now: datetime) -> CachedPolicy:
        meta = obj.get("metadata") or {}
        generation = meta.get("generation")
        return cls(name=str(meta.get("name") or ""), uid=meta.get("uid"),
                   resource_version=None if meta.get("resourceVersion") is None else str(meta["resourceVersion"]),
                   generation=generation if isinstance(generation, int) else None,
                   spec=copy.deepcopy(dict(obj.get("spec") or {})), cached_at=now)

    def same_object(self, other: CachedPolicy | None) -> bool:
        """The same object at the same generation with the same spec (nothing new to cache)."""
        return (other is not None and other.name == self.name and other.uid == self.uid
                and other.generation == self.generation and other.spec == self.spec)


def effective(baseline: HecateConfig, spec: Mapping[str, Any]) -> HecateConfig:
    """``baseline`` with this spec laid over it; a ``ValidationError`` is located from the object's root."""
    document = {"apiVersion": policy.API_VERSION, "kind": policy.KIND, "spec": dict(spec)}
    return policy.effective_config(baseline, policy.parse_policy(document))


@dataclass(frozen=True)
class Effective:
    """A valid PowerPolicy object and the configuration it puts in force."""

    policy: CachedPolicy
    config: HecateConfig


@dataclass(frozen=True)
class Facts:
    """Everything known about the three sources at one instant."""

    baseline: HecateConfig
    """hecate.yaml (with its environment overrides)."""
    cached: Effective | None = None
    """The cache's content, when it fits hecate.yaml."""
    accepted: Effective | None = None
    """The cluster object, as last accepted (None once it is deleted or missing)."""
    cluster: ClusterObject = ClusterObject.unknown
    observed_generation: int | None = None
    """metadata.generation of the cluster object last processed (accepted or rejected)."""
    rejected: str | None = None
    """Why the cluster object was rejected."""
    cache_error: str | None = None
    """Why the last valid object could not be cached (e.g. a full disk)."""
    operator: OperatorLink = OperatorLink.connecting
    operator_detail: str | None = None

    @property
    def name(self) -> str | None:
        return self.baseline.policy.name

    @classmethod
    def at_start(cls, baseline: HecateConfig) -> Facts:
        """Nothing known yet: the operator is connecting (or disabled without ``policy.name``)."""
        return cls(baseline, operator=OperatorLink.connecting if baseline.policy.name else OperatorLink.disabled)


def decide(facts: Facts) -> tuple[Source, Effective | None, str]:
    """The source in force, its object and configuration (None: hecate.yaml alone), and why."""
    name = facts.name
    if name is None:
        return Source.host, None, "policy.name is not set: hecate.yaml alone"
    if (facts.operator is OperatorLink.connected and facts.cluster is ClusterObject.valid
            and facts.accepted is not None):
        return (Source.cluster, facts.accepted,
                f"PowerPolicy {name} generation {facts.accepted.policy.generation} from the cluster")
    if facts.cluster is ClusterObject.deleted:
        why = "cluster object deleted"
    elif facts.cluster is ClusterObject.missing:
        why = f"PowerPolicy {name} not found in the cluster"
    elif facts.cluster is ClusterObject.invalid:
        why = f"cluster object generation {facts.observed_generation} rejected ({facts.rejected})"
    elif facts.operator is OperatorLink.unavailable:
        why = f"cluster not reachable ({facts.operator_detail})"
    else:
        why = "not connected to the cluster yet"
    if facts.cached is not None:
        return Source.cache, facts.cached, f"{why}; cache in force"
    return Source.host, None, f"{why}; no valid PowerPolicy cached: hecate.yaml in force"


@dataclass(frozen=True)
class PolicyView:
    """Which policy is in force and why, at one instant (immutable)."""

    name: str | None
    source: Source
    detail: str
    since: datetime
    config: HecateConfig
    """The effective configuration (hecate.yaml with the policy laid over it)."""
    policy: CachedPolicy | None
    """The object whose spec is in force (None: hecate.yaml alone)."""
    cached: CachedPolicy | None
    """The cache's content (the last valid object), if any."""
    cluster: ClusterObject
    observed_generation: int | None
    """metadata.generation of the cluster object last processed (accepted or rejected)."""
    rejected: str | None
    """Why the cluster object was rejected (its generation ``observed_generation``)."""
    cache_error: str | None
    """Why the last valid object could not be cached (e.g. a full disk)."""
    operator: OperatorLink
    operator_detail: str | None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """The ``policy`` block of the status document."""
        force = self.policy
        return {
            "name": self.name,
            "source": self.source.value,
            "detail": self.detail,
            "since": timestamps.rfc3339(self.since),
            "age_s": None if force is None else round(max(0.0, (now - force.cached_at).total_seconds()), 1),
            "cached_at": timestamps.rfc3339(force.cached_at) if force else None,
            "generation": force.generation if force else None,
            "resource_version": force.resource_version if force else None,
            "cache": None if self.cached is None else {
                "generation": self.cached.generation, "resource_version": self.cached.resource_version,
                "cached_at": timestamps.rfc3339(self.cached.cached_at)},
            "cluster_object": self.cluster.value,
            "observed_generation": self.observed_generation,
            "rejected": self.rejected,
            "cache_error": self.cache_error,
            "operator": self.operator.value,
            "operator_detail": self.operator_detail,
        }


def view(facts: Facts, now: datetime, before: PolicyView | None = None) -> PolicyView:
    """The policy in force given ``facts``; ``since`` carries over from ``before`` while the source stays."""
    source, in_force, detail = decide(facts)
    since = before.since if before is not None and before.source is source else now
    return PolicyView(name=facts.name, source=source, detail=detail, since=since,
                      config=facts.baseline if in_force is None else in_force.config,
                      policy=None if in_force is None else in_force.policy,
                      cached=None if facts.cached is None else facts.cached.policy,
                      cluster=facts.cluster, observed_generation=facts.observed_generation, rejected=facts.rejected,
                      cache_error=facts.cache_error, operator=facts.operator, operator_detail=facts.operator_detail)


def baseline_view(config: HecateConfig, detail: str, now: datetime) -> PolicyView:
    """A view of hecate.yaml alone (e.g. ``hecate status`` polling directly)."""
    return PolicyView(name=config.policy.name, source=Source.host, detail=detail, since=now, config=config,
                      policy=None, cached=None, cluster=ClusterObject.unknown, observed_generation=None, rejected=None,
                      cache_error=None, operator=OperatorLink.disabled, operator_detail=None)
