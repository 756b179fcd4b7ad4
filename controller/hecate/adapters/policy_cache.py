"""The policy cache's file format: the last valid PowerPolicy, for when the API is gone.

A PowerPolicy document (``apiVersion``, ``kind``, ``metadata.name``, ``uid``,
``resourceVersion``, ``generation``, ``spec``) plus ``cachedAt``, so
:func:`~hecate.domain.policy.parse_policy` reads it back unchanged. Written by
:meth:`hecate.adapters.store.StateStore.write_policy_cache` (mode 0600) with
:func:`policy_cache_text`, read back by :func:`parse_policy_cache`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hecate.adapters import yamlfile
from hecate.domain import policy, timestamps
from hecate.domain.policy_source import CachedPolicy

POLICY_CACHE_FILE = "policy-cache.yaml"


class PolicyCacheCorrupt(Exception):
    """``policy-cache.yaml`` cannot be read back as a PowerPolicy; ``str(err)`` says why.

    ``aside``: where :meth:`StateStore.read_policy_cache` moved it (None: it could not be moved).
    """

    def __init__(self, why: str, aside: Path | None = None) -> None:
        super().__init__(why)
        self.aside = aside


def policy_cache_document(cached: CachedPolicy) -> dict[str, Any]:
    """The cache as a PowerPolicy document (plus ``cachedAt``)."""
    meta: dict[str, Any] = {"name": cached.name}
    if cached.uid is not None:
        meta["uid"] = cached.uid
    if cached.resource_version is not None:
        meta["resourceVersion"] = cached.resource_version
    if cached.generation is not None:
        meta["generation"] = cached.generation
    return {"apiVersion": policy.API_VERSION, "kind": policy.KIND, "metadata": meta,
            "cachedAt": timestamps.rfc3339(cached.cached_at), "spec": cached.spec}


def policy_cache_text(cached: CachedPolicy) -> str:
    return ("# Hecate's cache of the last valid PowerPolicy: in force while the cluster's cannot be.\n"
            "# Written by the daemon; edit the PowerPolicy in the cluster, not this file.\n"
            + yaml.safe_dump(policy_cache_document(cached), sort_keys=False))


def parse_policy_cache(text: str) -> CachedPolicy:
    """The cache file's policy; :class:`PolicyCacheCorrupt` says what is wrong with it."""
    try:
        data = yamlfile.load(text, POLICY_CACHE_FILE)
    except yamlfile.YamlSyntaxError as err:
        raise PolicyCacheCorrupt(str(err)) from None
    if not isinstance(data, dict):
        raise PolicyCacheCorrupt("not a PowerPolicy document (the top level is not a mapping)")
    try:
        policy.parse_policy(data)
    except ValidationError as err:
        raise PolicyCacheCorrupt(policy.describe_error(err)) from None
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise PolicyCacheCorrupt("metadata.name is missing")
    cached_at = data.get("cachedAt")
    try:
        when = timestamps.parse(str(cached_at))
    except ValueError:
        raise PolicyCacheCorrupt(f"cachedAt is not a time: {cached_at!r}") from None
    return CachedPolicy.from_object(data, when)
