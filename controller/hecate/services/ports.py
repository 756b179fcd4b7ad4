"""What the services need from Kubernetes, as narrow protocols.

Why this module exists: a service states the capability it uses -- drain a node, suspend
Flux, scale a tier, restore an object -- rather than the concrete client, so that a reader
sees what a step can touch and a test can hand it a fake. They are gathered here rather
than in each consumer because the same client travels between services (``remote`` opens
it, ``shutdown`` and ``startup`` act through it) and they must agree on one vocabulary.
The adapter's :class:`hecate.adapters.kube.Kube` satisfies all of them; each protocol
mirrors one module of that package. Failures are the adapter's errors
(``hecate.adapters.kube.KubeError`` and its subclasses) and references are
``namespace/kind/name`` (:mod:`hecate.domain.kubeobjects`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from hecate.domain.kubeobjects import NodeSignal


class ApiProbe(Protocol):
    async def server_version(self) -> str: ...


class FluxControl(Protocol):
    """Suspend and resume Flux, read its status, steer its GitRepository."""

    async def flux_suspend(self) -> dict[str, list[str]]: ...

    async def flux_resume(self, refs: Iterable[str], *, reconcile: bool = False) -> list[str]: ...

    async def flux_status(self) -> dict[str, dict[str, Any]]: ...

    async def git_repository(self, namespace: str, name: str) -> dict[str, Any]: ...

    async def set_git_branch(self, namespace: str, name: str, branch: str) -> str | None: ...

    async def request_reconcile(self, refs: Iterable[str]) -> list[str]: ...


class Scaler(Protocol):
    """Scale workloads to zero and back; read their availability; restart stuck pods."""

    async def scale_down(self, selector: str, namespace: str | None = None) -> dict[str, int]: ...

    async def scale(self, ref: str, replicas: int) -> None: ...

    async def replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]: ...

    async def restore_replicas(self, selector: str, namespace: str | None = None) -> dict[str, int]: ...

    async def scaled_by_hecate(self) -> list[str]: ...

    async def workload(self, ref: str, since: datetime | None = None) -> dict[str, Any]: ...

    async def restart_unready_pods(self, ref: str) -> list[str]: ...


class Drainer(Protocol):
    """Cordon, drain and uncordon nodes; read their readiness and volume attachments."""

    async def nodes_ready(self, since: datetime | None = None) -> dict[str, bool]: ...

    async def node_signals(self, since: datetime) -> dict[str, NodeSignal]: ...

    async def unschedulable_nodes(self) -> list[str]: ...

    async def cordoned_by_hecate(self) -> list[str]: ...

    async def volume_attachments(self) -> list[str]: ...

    async def cordon(self, node: str) -> bool: ...

    async def uncordon(self, node: str) -> None: ...

    async def drain(self, node: str, timeout_s: float) -> dict[str, Any]: ...


class ObjectStore(Protocol):
    """Get, export, create-if-missing and delete objects by reference (the bootstrap cache)."""

    async def get_object(self, ref: str, api_version: str | None = None) -> dict[str, Any] | None: ...

    async def export(self, refs: Iterable[str]) -> list[dict[str, Any]]: ...

    async def apply_missing(self, manifests: Iterable[Mapping[str, Any]]) -> dict[str, Any]: ...

    async def delete_object(self, ref: str) -> bool: ...


class CacheSource(FluxControl, ObjectStore, Protocol):
    """What a bootstrap-cache refresh reads: is the GitRepository Ready, and the objects."""


class Cluster(ApiProbe, FluxControl, Scaler, Drainer, ObjectStore, Protocol):
    """Everything a run does to the cluster (shutdown, startup, drills)."""

    async def clear_stale_marks(self) -> list[str]: ...
