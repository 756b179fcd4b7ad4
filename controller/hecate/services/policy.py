"""The policy in force for one daemon, kept current as the operator reports and the cache says.

Which source wins -- the cluster's PowerPolicy, Hecate's cache of it, or hecate.yaml -- is
decided in :mod:`hecate.domain.policy_source`; the cache file and the moving aside of a
corrupt one belong to the store (:mod:`hecate.adapters.store`). :class:`PolicyInForce`
holds the facts and does the rest: it reads the cache once at start (a valid one that no
longer fits ``hecate.yaml``, e.g. after a UPS was renamed or ``policy.envelope`` tightened,
is kept but not used), takes what the embedded operator reports (``accept``, ``deleted``,
``connected``, ...), writes the cache atomically whenever a new object or generation is
accepted, logs each change of the source and reports problems in the status's warnings.

The operator calls it from its own thread, so every method takes one lock; ``view`` is an
immutable snapshot (:class:`~hecate.domain.policy_source.PolicyView`) that status and the
operator's status writer read. Whenever the *effective configuration* changes it calls
``on_change`` (the daemon applies it on its own loop).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from hecate.adapters.policy_cache import PolicyCacheCorrupt
from hecate.adapters.store import StateStore
from hecate.domain import policy, policy_source, timestamps
from hecate.domain.config import HecateConfig
from hecate.domain.policy_source import CachedPolicy, ClusterObject, Effective, OperatorLink, PolicyView

log = logging.getLogger(__name__)


class PolicyRejected(Exception):
    """The cluster object is not a valid policy for this host; ``str(err)`` names the field."""


def _now() -> datetime:
    return datetime.now(UTC)


class PolicyInForce:
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
        self._facts = policy_source.Facts.at_start(baseline)
        self._view = policy_source.view(self._facts, self.clock())

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
                cached = self.store.read_policy_cache()
            except (OSError, UnicodeDecodeError) as err:
                self._warn(f"{path} cannot be read ({err}); hecate.yaml's policy is in force")
                return self._view
            except PolicyCacheCorrupt as err:
                where = f"moved it to {err.aside}" if err.aside else "could not move it aside"
                self._warn(f"{path} is corrupt ({err}); {where}; hecate.yaml's policy is in force", error=True)
                return self._view
            if cached is None:
                log.info("no policy cache yet (%s): hecate.yaml's policy is in force until PowerPolicy %s is "
                         "read from the cluster", path, self.name)
                return self._view
            if cached.name != self.name:
                self._warn(f"{path} holds PowerPolicy {cached.name!r} but policy.name is {self.name!r}: "
                           "ignored; hecate.yaml's policy is in force until the cluster's is read")
                return self._view
            try:
                config = policy_source.effective(self.baseline, cached.spec)
            except ValidationError as err:
                self._warn(f"{path}: the cached PowerPolicy {cached.name} (generation {cached.generation}) does "
                           f"not fit hecate.yaml ({policy.describe_error(err)}); kept, not used; hecate.yaml's "
                           "policy is in force", error=True)
                return self._view
            log.info("policy cache: PowerPolicy %s generation %s (cached %s) is in force until the cluster's is read",
                     cached.name, cached.generation, timestamps.rfc3339(cached.cached_at))
            return self._update(cached=Effective(cached, config))

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
            facts = self._facts
            candidate = CachedPolicy.from_object(obj, self.clock())
            try:
                policy.parse_policy(obj)
                config = policy_source.effective(self.baseline, candidate.spec)
            except ValidationError as err:
                rejected = policy.describe_error(err)
                self._update(cluster=ClusterObject.invalid, rejected=rejected,
                             observed_generation=candidate.generation)
                raise PolicyRejected(rejected) from None
            for known in (facts.accepted, facts.cached):  # the same object again: keep when it was first taken
                if known is not None and candidate.same_object(known.policy):
                    candidate = known.policy
                    break
            accepted = Effective(candidate, config)
            cached, cache_error = facts.cached, facts.cache_error
            error: OSError | None = None
            if not candidate.same_object(cached.policy if cached else None) or cache_error is not None:
                try:
                    self.store.write_policy_cache(candidate)
                    cached, cache_error = accepted, None
                    log.info("PowerPolicy %s generation %s accepted and cached (%s)", candidate.name,
                             candidate.generation, self.store.policy_cache_path)
                except OSError as err:
                    error = err
                    cache_error = f"cannot write {self.store.policy_cache_path}: {err}"
                    log.error("PowerPolicy %s generation %s accepted but not cached: %s", candidate.name,
                              candidate.generation, cache_error)
            view = self._update(cluster=ClusterObject.valid, rejected=None, observed_generation=candidate.generation,
                                accepted=accepted, cached=cached, cache_error=cache_error)
            if error is not None:
                raise error
            return view

    def deleted(self) -> PolicyView:
        with self._lock:
            return self._update(cluster=ClusterObject.deleted, accepted=None)

    def missing(self) -> PolicyView:
        """The API says there is no such object (never created, or deleted while Hecate was away)."""
        with self._lock:
            return self._update(cluster=ClusterObject.missing, accepted=None)

    def connected(self) -> PolicyView:
        with self._lock:
            return self._update(operator=OperatorLink.connected, operator_detail=None)

    def unavailable(self, detail: str) -> PolicyView:
        with self._lock:
            return self._update(operator=OperatorLink.unavailable, operator_detail=detail)

    # -- the decision -------------------------------------------------------------------------------

    def _update(self, **changes: Any) -> PolicyView:
        """Record what changed, decide again, log a change of source, and call ``on_change`` when
        the effective configuration changed."""
        before = self._view
        self._facts = replace(self._facts, **changes)
        self._view = policy_source.view(self._facts, self.clock(), before)
        if self._view.config != before.config:
            log.warning("policy in force: %s (%s)", self._view.source.value, self._view.detail)
            if self.on_change is not None:
                self.on_change(self._view.config)
        elif (self._view.source, self._view.detail) != (before.source, before.detail):
            log.info("policy in force: %s (%s)", self._view.source.value, self._view.detail)
        return self._view


def load_effective(config: HecateConfig, store: StateStore) -> PolicyView:
    """The policy a daemon starting now would put in force (hecate.yaml + the cache), for one-shot commands."""
    return PolicyInForce(config, store).load()
