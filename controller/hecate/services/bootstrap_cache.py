"""The cached bootstrap manifests: what Hecate applies when Flux and Gitea deadlock.

After a cold start Flux cannot fetch from Gitea and Gitea (or what it needs) waits for
Flux. Hecate breaks that cycle by creating, directly, the objects Gitea needs -- from
copies taken while the cluster was healthy. The directory is
``flux.fallback_manifests_dir``: every ``*.yaml``/``*.yml`` file in it (multi-document
YAML, one Kubernetes object per document) is part of the cache. Operators may drop
their own files there (e.g. ``flux build`` output); the daemon keeps
``hecate-snapshot.yaml`` current by exporting ``flux.bootstrap_objects`` from the live
cluster, but only while the GitRepository is Ready (a copy of a broken cluster would
not help). Applying creates only what is missing and never overwrites a live object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hecate.adapters import kube as kube_mod
from hecate.adapters import store as store_mod
from hecate.adapters import yamlfile
from hecate.adapters.statefiles import atomic_write
from hecate.domain import kubeobjects, timestamps
from hecate.domain.config import HecateConfig
from hecate.services import ports

log = logging.getLogger(__name__)

SNAPSHOT = "hecate-snapshot.yaml"


@dataclass
class RefreshState:
    """How the daemon's refreshes went (status ``bootstrap_cache``, metrics): the last one that wrote the
    snapshot, and the refreshes that failed since the daemon started."""

    last_refresh_at: datetime | None = None
    errors: int = 0
    last_error: str | None = None

    @classmethod
    def from_snapshot(cls, directory: Path) -> RefreshState:
        """Seeded with the snapshot file's time, so a daemon that restarts does not forget the last refresh."""
        try:
            mtime = (directory / SNAPSHOT).stat().st_mtime
        except OSError:
            return cls()
        return cls(last_refresh_at=datetime.fromtimestamp(mtime, UTC))

    def failed(self, err: BaseException) -> None:
        self.errors += 1
        self.last_error = str(err) or type(err).__name__

    def refreshed(self) -> None:
        self.last_refresh_at = datetime.now(UTC)
        self.last_error = None

    def as_dict(self) -> dict[str, Any]:
        return {"last_refresh_at": None if self.last_refresh_at is None
                else timestamps.rfc3339(self.last_refresh_at, fraction=True),
                "errors": self.errors, "last_error": self.last_error}


class CacheError(Exception):
    """A cache file that cannot be used (names the file and the document)."""


def load(directory: Path) -> list[dict[str, Any]]:
    """Every object in the cache directory, files in name order (empty if there is none)."""
    if not directory.is_dir():
        return []
    objects: list[dict[str, Any]] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            documents = yamlfile.load_all(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as err:
            raise CacheError(f"{path}: cannot read: {err}") from err
        except yamlfile.YamlSyntaxError as err:
            raise CacheError(f"cannot read {err}") from err
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            if not isinstance(doc, dict) or not doc.get("kind") or not (doc.get("metadata") or {}).get("name"):
                raise CacheError(f"{path}: document {index + 1} is not a Kubernetes object (kind, metadata.name)")
            if doc["kind"] not in kubeobjects.CACHEABLE_KINDS:
                raise CacheError(f"{path}: document {index + 1}: kind {doc['kind']} cannot be applied from the cache "
                                 f"(one of {', '.join(sorted(kubeobjects.CACHEABLE_KINDS))})")
            if kubeobjects.KINDS[doc["kind"]].namespaced and not doc["metadata"].get("namespace"):
                raise CacheError(f"{path}: document {index + 1}: {doc['kind']} {doc['metadata']['name']} has no "
                                 "metadata.namespace (`flux build` output may omit it: add it)")
            objects.append(doc)
    # Namespaces before what lives in them.
    return sorted(objects, key=lambda o: o["kind"] != "Namespace")


async def refresh(config: HecateConfig, kube: ports.CacheSource) -> dict[str, Any]:
    """Export ``flux.bootstrap_objects`` into the snapshot file if the GitRepository is Ready.

    Returns ``{"written": bool, "objects": n, "missing": [refs not found], "reason": str}``;
    Kubernetes errors other than a missing object propagate.
    """
    flux = config.flux
    if not flux.bootstrap_objects:
        return {"written": False, "objects": 0, "reason": "flux.bootstrap_objects is empty"}
    repo = await kube.git_repository(flux.namespace, flux.git_repository)
    if not repo["ready"]:
        return {"written": False, "objects": 0,
                "reason": f"GitRepository {flux.namespace}/{flux.git_repository} is not Ready: kept the last copy"}
    manifests: list[dict[str, Any]] = []
    missing: list[str] = []
    for ref in flux.bootstrap_objects:  # one that is gone (deleted in Git) drops out of the snapshot
        try:
            manifests += await kube.export([kubeobjects.canonical_ref(ref)])
        except kube_mod.KubeNotFound:
            missing.append(ref)
    if missing:
        log.warning("bootstrap cache: %s not found in the cluster; left out of the snapshot", ", ".join(missing))
    directory = flux.fallback_manifests_dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    header = (f"# Written by hecate at {timestamps.rfc3339(datetime.now(UTC))} from the live cluster "
              "(flux.bootstrap_objects).\n# Applied (missing objects only) when Flux and Gitea deadlock.\n")
    body = yaml.safe_dump_all(manifests, sort_keys=False)
    atomic_write(directory / SNAPSHOT, (header + body).encode(), mode=0o600)  # configuration may be sensitive
    return {"written": True, "objects": len(manifests), "missing": missing, "reason": ""}


async def keep_fresh(config_now: Callable[[], HecateConfig], stop: asyncio.Event,
                     busy: Callable[[], bool] = lambda: False, store: store_mod.StateStore | None = None,
                     state: RefreshState | None = None) -> None:
    """The daemon's loop: refresh the snapshot now and every ``flux.cache_refresh_interval_s``.

    ``config_now`` gives the policy in force at each round (a PowerPolicy may change the
    bootstrap objects). Skipped while a run is busy with the cluster or nothing is listed;
    a failure is logged and retried next time. A snapshot that cannot be written (a full or
    read-only disk) is counted in ``store``'s write failures and logged once. ``state``
    records each refresh that wrote the snapshot and counts each that failed.
    """
    state = state if state is not None else RefreshState()
    first = config_now()
    kube = kube_mod.Kube(first.cluster.kubeconfig, first.cluster.api_timeout_s)
    try:
        while not stop.is_set():
            config = config_now()
            if not busy() and config.flux.bootstrap_objects:
                try:
                    result = await refresh(config, kube)
                except kube_mod.KubeError as err:
                    state.failed(err)
                    log.warning("bootstrap cache not refreshed: %s", err)
                except OSError as err:  # e.g. a full disk: the loop goes on, the old copy stays
                    state.failed(err)
                    if store is not None:
                        store.write_failed(store_mod.SNAPSHOT, config.flux.fallback_manifests_dir / SNAPSHOT, err)
                    else:
                        log.warning("bootstrap cache not refreshed: %s", err)
                except Exception as err:  # the loop must go on, the old copy stays
                    state.failed(err)
                    log.exception("bootstrap cache not refreshed")
                else:
                    if result["written"]:
                        state.refreshed()
                        if store is not None:
                            store.write_ok(store_mod.SNAPSHOT)
                        log.info("bootstrap cache refreshed: %d objects", result["objects"])
                    else:
                        log.info("bootstrap cache not refreshed: %s", result["reason"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=config.flux.cache_refresh_interval_s)
    finally:
        kube.close()
