"""The policy in force: the cluster's PowerPolicy, Hecate's cache of it, or hecate.yaml alone.

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

:class:`PolicyState` holds that decision. It is fed by the operator (``accept``,
``deleted``, ``connected``, ...) from the operator's thread, so every method takes one
lock; ``view`` is an immutable snapshot (:class:`PolicyView`) that status and the
operator's status writer read. Whenever the *effective configuration* changes it calls
``on_change`` (the daemon applies it on its own loop).

The cache file is a PowerPolicy document (``apiVersion``, ``kind``, ``metadata.name``,
``uid``, ``resourceVersion``, ``generation``, ``spec``) plus ``cachedAt``, so
:func:`~hecate.domain.policy.parse_policy` reads it back unchanged. It is written
atomically, mode 0600, only when a new object or generation is accepted. At start a
corrupt cache is moved aside (``policy-cache.yaml.corrupt-<time>``) and reported; a valid
one that no longer fits ``hecate.yaml`` (e.g. a renamed UPS) is kept but not used.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hecate.adapters import yamlfile
from hecate.adapters.store import POLICY_CACHE_FILE, StateStore
from hecate.domain import crd, timestamps
from hecate.domain import policy as policy_mod
from hecate.domain.config import HecateConfig

log = logging.getLogger(__name__)


class Source(StrEnum):
    """Where the policy in force comes from (``status.source`` of the PowerPolicy)."""

    cluster = "cluster"
    cache = "cache"
    host = "host"


assert {s.value for s in Source} == set(crd.SOURCES), "Source must match the CRD's status.source enum"


class ClusterObject(StrEnum):
    """What Hecate last learnt about the PowerPolicy object in the cluster."""

    unknown = "unknown"  # not seen since the daemon started
    valid = "valid"
    invalid = "invalid"
    deleted = "deleted"  # seen, then deleted
    missing = "missing"  # the API answered: no object of that name


class Operator(StrEnum):
    """The embedded operator's connection to the API."""

    disabled = "disabled"  # no policy.name
    connecting = "connecting"  # not connected yet since the daemon started
    connected = "connected"
    unavailable = "unavailable"  # API unreachable, CRD missing, kubeconfig unusable...


class PolicyRejected(Exception):
    """The cluster object is not a valid policy for this host; ``str(err)`` names the field."""


class CacheCorrupt(Exception):
    """``policy-cache.yaml`` cannot be read back as a policy."""


def _now() -> datetime:
    return datetime.now(UTC)


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

    def document(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        if self.uid is not None:
            meta["uid"] = self.uid
        if self.resource_version is not None:
            meta["resourceVersion"] = self.resource_version
        if self.generation is not None:
            meta["generation"] = self.generation
        return {"apiVersion": policy_mod.API_VERSION, "kind": policy_mod.KIND, "metadata": meta,
                "cachedAt": timestamps.rfc3339(self.cached_at), "spec": self.spec}

    def text(self) -> str:
        return ("# Hecate's cache of the last valid PowerPolicy: in force while the cluster's cannot be.\n"
                "# Written by the daemon; edit the PowerPolicy in the cluster, not this file.\n"
                + yaml.safe_dump(self.document(), sort_keys=False))


def parse_cache(text: str) -> CachedPolicy:
    """The cache file's policy; :class:`CacheCorrupt` says what is wrong with it."""
    try:
        data = yamlfile.load(text, POLICY_CACHE_FILE)
    except yamlfile.YamlSyntaxError as err:
        raise CacheCorrupt(str(err)) from None
    if not isinstance(data, dict):
        raise CacheCorrupt("not a PowerPolicy document (the top level is not a mapping)")
    try:
        policy_mod.parse_policy(data)
    except ValidationError as err:
        raise CacheCorrupt(policy_mod.describe_error(err)) from None
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise CacheCorrupt("metadata.name is missing")
    cached_at = data.get("cachedAt")
    try:
        when = timestamps.parse(str(cached_at))
    except ValueError:
        raise CacheCorrupt(f"cachedAt is not a time: {cached_at!r}") from None
    return replace(CachedPolicy.from_object(data, when), cached_at=when)


def _effective(baseline: HecateConfig, spec: Mapping[str, Any]) -> HecateConfig:
    """The baseline with this spec laid over it; ValidationError located from the object's root."""
    document = {"apiVersion": policy_mod.API_VERSION, "kind": policy_mod.KIND, "spec": dict(spec)}
    return policy_mod.effective_config(baseline, policy_mod.parse_policy(document))


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
    operator: Operator
    operator_detail: str | None

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The ``policy`` block of the status document."""
        now = now or _now()
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


def baseline_view(config: HecateConfig, detail: str) -> PolicyView:
    """A view of hecate.yaml alone (e.g. ``hecate status`` polling directly)."""
    return PolicyView(name=config.policy.name, source=Source.host, detail=detail, since=_now(), config=config,
                      policy=None, cached=None, cluster=ClusterObject.unknown, observed_generation=None, rejected=None,
                      cache_error=None, operator=Operator.disabled, operator_detail=None)


class PolicyState:
    """The policy in force for one daemon; thread-safe (the operator runs in its own thread)."""

    def __init__(self, baseline: HecateConfig, store: StateStore, *,
                 on_change: Callable[[HecateConfig], None] | None = None,
                 clock: Callable[[], datetime] = _now) -> None:
        self.baseline = baseline
        self.store = store
        self.name = baseline.policy.name
        self.on_change = on_change
        self.clock = clock
        self._lock = threading.RLock()
        self._cached: CachedPolicy | None = None
        self._cached_config: HecateConfig | None = None
        self._accepted: CachedPolicy | None = None  # the cluster object, as last accepted
        self._accepted_config: HecateConfig | None = None
        self._cluster = ClusterObject.unknown
        self._observed: int | None = None
        self._rejected: str | None = None
        self._cache_error: str | None = None
        self._operator = Operator.connecting if self.name else Operator.disabled
        self._operator_detail: str | None = None
        self._view = self._compute(self.clock(), None)

    # -- reading ------------------------------------------------------------------------------

    @property
    def view(self) -> PolicyView:
        return self._view

    @property
    def config(self) -> HecateConfig:
        return self._view.config

    # -- the cache at start ---------------------------------------------------------------------

    def load(self) -> PolicyView:
        """Read the cache (once, at daemon start); every problem is logged and leaves the baseline."""
        with self._lock:
            if self.name is None:
                return self._view
            path = self.store.policy_cache_path
            try:
                text = self.store.read_policy_cache()
            except (OSError, UnicodeDecodeError) as err:
                self._warn(f"{path} cannot be read ({err}); hecate.yaml's policy is in force")
                return self._view
            if text is None:
                log.info("no policy cache yet (%s): hecate.yaml's policy is in force until PowerPolicy %s is "
                         "read from the cluster", path, self.name)
                return self._view
            try:
                cached = parse_cache(text)
            except CacheCorrupt as err:
                aside = _quarantine(path)
                where = f"moved it to {aside}" if aside else "could not move it aside"
                self._warn(f"{path} is corrupt ({err}); {where}; hecate.yaml's policy is in force", error=True)
                return self._view
            if cached.name != self.name:
                self._warn(f"{path} holds PowerPolicy {cached.name!r} but policy.name is {self.name!r}: "
                           "ignored; hecate.yaml's policy is in force until the cluster's is read")
                return self._view
            try:
                config = _effective(self.baseline, cached.spec)
            except ValidationError as err:
                self._warn(f"{path}: the cached PowerPolicy {cached.name} (generation {cached.generation}) does "
                           f"not fit hecate.yaml ({policy_mod.describe_error(err)}); kept, not used; hecate.yaml's "
                           "policy is in force", error=True)
                return self._view
            self._cached, self._cached_config = cached, config
            log.info("policy cache: PowerPolicy %s generation %s (cached %s) is in force until the cluster's is read",
                     cached.name, cached.generation, timestamps.rfc3339(cached.cached_at))
            return self._update()

    def _warn(self, message: str, *, error: bool = False) -> None:
        (log.error if error else log.warning)("%s", message)
        if message not in self.store.warnings:
            self.store.warnings.append(message)

    # -- what the operator reports ------------------------------------------------------------------

    def accept(self, obj: Mapping[str, Any]) -> PolicyView:
        """A cluster object was created/changed/seen again: validate it, cache it, put it in force.

        Raises :class:`PolicyRejected` (after recording it) when it is invalid; the last
        valid policy stays in force. A cache write that fails is recorded
        (``cache_error``) and re-raised as ``OSError``; the object is still in force.
        """
        with self._lock:
            now = self.clock()
            candidate = CachedPolicy.from_object(obj, now)
            self._observed = candidate.generation
            try:
                policy_mod.parse_policy(obj)
                config = _effective(self.baseline, candidate.spec)
            except ValidationError as err:
                self._cluster, self._rejected = ClusterObject.invalid, policy_mod.describe_error(err)
                self._update()
                raise PolicyRejected(self._rejected) from None
            self._cluster, self._rejected = ClusterObject.valid, None
            for known in (self._accepted, self._cached):  # the same object again: keep when it was first taken
                if known is not None and candidate.same_object(known):
                    candidate = known
                    break
            self._accepted, self._accepted_config = candidate, config
            error: OSError | None = None
            if not candidate.same_object(self._cached) or self._cache_error is not None:
                try:
                    self.store.write_policy_cache(candidate.text())
                    self._cached, self._cached_config, self._cache_error = candidate, config, None
                    log.info("PowerPolicy %s generation %s accepted and cached (%s)", candidate.name,
                             candidate.generation, self.store.policy_cache_path)
                except OSError as err:
                    error = err
                    self._cache_error = f"cannot write {self.store.policy_cache_path}: {err}"
                    log.error("PowerPolicy %s generation %s accepted but not cached: %s", candidate.name,
                              candidate.generation, self._cache_error)
            view = self._update()
            if error is not None:
                raise error
            return view

    def deleted(self) -> PolicyView:
        with self._lock:
            self._cluster = ClusterObject.deleted
            self._accepted = self._accepted_config = None
            return self._update()

    def missing(self) -> PolicyView:
        """The API says there is no such object (never created, or deleted while Hecate was away)."""
        with self._lock:
            self._cluster = ClusterObject.missing
            self._accepted = self._accepted_config = None
            return self._update()

    def connected(self) -> PolicyView:
        with self._lock:
            self._operator, self._operator_detail = Operator.connected, None
            return self._update()

    def unavailable(self, detail: str) -> PolicyView:
        with self._lock:
            self._operator, self._operator_detail = Operator.unavailable, detail
            return self._update()

    # -- the decision -------------------------------------------------------------------------------

    def _update(self) -> PolicyView:
        before = self._view
        self._view = self._compute(self.clock(), before)
        if self._view.config != before.config:
            log.warning("policy in force: %s (%s)", self._view.source.value, self._view.detail)
            if self.on_change is not None:
                self.on_change(self._view.config)
        elif (self._view.source, self._view.detail) != (before.source, before.detail):
            log.info("policy in force: %s (%s)", self._view.source.value, self._view.detail)
        return self._view

    def _compute(self, now: datetime, before: PolicyView | None) -> PolicyView:
        source, config, detail = self._decide()
        since = before.since if before is not None and before.source is source else now
        policy = {Source.cluster: self._accepted, Source.cache: self._cached, Source.host: None}[source]
        return PolicyView(name=self.name, source=source, detail=detail, since=since, config=config,
                          policy=policy, cached=self._cached,
                          cluster=self._cluster, observed_generation=self._observed, rejected=self._rejected,
                          cache_error=self._cache_error, operator=self._operator,
                          operator_detail=self._operator_detail)

    def _decide(self) -> tuple[Source, HecateConfig, str]:
        name = self.name
        if name is None:
            return Source.host, self.baseline, "policy.name is not set: hecate.yaml alone"
        if (self._operator is Operator.connected and self._cluster is ClusterObject.valid
                and self._accepted is not None and self._accepted_config is not None):
            return (Source.cluster, self._accepted_config,
                    f"PowerPolicy {name} generation {self._accepted.generation} from the cluster")
        if self._cluster is ClusterObject.deleted:
            why = "cluster object deleted"
        elif self._cluster is ClusterObject.missing:
            why = f"PowerPolicy {name} not found in the cluster"
        elif self._cluster is ClusterObject.invalid:
            why = f"cluster object generation {self._observed} rejected ({self._rejected})"
        elif self._operator is Operator.unavailable:
            why = f"cluster not reachable ({self._operator_detail})"
        else:
            why = "not connected to the cluster yet"
        if self._cached is not None and self._cached_config is not None:
            return Source.cache, self._cached_config, f"{why}; cache in force"
        return Source.host, self.baseline, f"{why}; no valid PowerPolicy cached: hecate.yaml in force"


def _quarantine(path: Path) -> Path | None:
    """Move a corrupt cache aside (``<name>.corrupt-<time>``), as the store does for runs.json."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError:
        return None
    return aside


def load_effective(config: HecateConfig, store: StateStore) -> PolicyView:
    """The policy a daemon starting now would put in force (hecate.yaml + the cache), for one-shot commands."""
    state = PolicyState(config, store)
    return state.load()
