"""Kubernetes: the executor's capability to quiesce the cluster and to bring it back.

Why this package exists: the plan's Kubernetes steps -- suspend Flux, scale workloads to
zero, wait for volume detachment, cordon and drain nodes, and for startup resume, restore
and check readiness -- must never hang a shutdown and must tell "the API is gone" apart
from "the API said no". Shutdown never depends on the cluster being healthy: when the API
cannot be reached the executor *skips* Kubernetes steps and goes on stopping the nodes over
SSH.

One module per concern, each a class over one shared :class:`~.transport.Transport`;
:class:`Kube` is all of them on one connection:

- ``transport``: kubeconfig, threads, timeouts, the cool-down, error translation;
- ``errors``: :class:`KubeError`, :class:`ApiUnavailable` (the executor skips Kubernetes
  steps on it), :class:`KubeNotFound` (404);
- ``flux``: suspend, resume, status, the GitRepository, reconcile requests;
- ``workloads``: scale down and back, availability, restarting stuck pods;
- ``nodes``: readiness, cordon, drain, uncordon, volume attachments;
- ``objects``: get, export, create-if-missing and delete by reference (the bootstrap cache);
- ``powerpolicy``: the operator's PowerPolicy calls and kopf's credentials.

What an object is, how it is named and what is read off it is pure and lives in
:mod:`hecate.domain.kubeobjects`: references are ``namespace/kind/name``
(``apps/deployment/web``, ``flux-system/kustomization/apps``, ``/node/a1``); pods in drain
results are ``namespace/name``. The services see this client through the narrow protocols of
:mod:`hecate.services.ports`.

The operations over many objects (:meth:`Kube.flux_suspend`, :meth:`Kube.scale_down`,
:meth:`Kube.drain`) are best effort: one object's refusal does not stop the others, and
whenever they raise part-way (:class:`ApiUnavailable` included) ``err.partial`` holds the
same-shaped result of what was already changed, so the caller can record it and startup can
undo exactly that. ``Kube.writes`` counts the mutating requests sent: a dry-run must leave it
at zero.
"""

from __future__ import annotations

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound
from hecate.adapters.kube.flux import FluxOps
from hecate.adapters.kube.nodes import NodeOps
from hecate.adapters.kube.objects import ObjectOps
from hecate.adapters.kube.transport import COOLDOWN_S, Transport
from hecate.adapters.kube.workloads import WorkloadOps

__all__ = ["COOLDOWN_S", "ApiUnavailable", "Kube", "KubeError", "KubeNotFound", "Transport"]


class Kube(FluxOps, WorkloadOps, NodeOps, ObjectOps):
    """The Kubernetes API as the executor uses it: every concern on one connection and one cool-down."""

    async def clear_stale_marks(self) -> list[str]:
        """Drop Hecate's ownership annotations from objects no longer in the state they recorded.

        A person who ran ``kubectl uncordon`` or ``flux resume`` by hand leaves Hecate's
        ``cordoned-by``/``suspended-by`` behind; if they later cordon or suspend the object on
        purpose, the next startup must not take it for Hecate's and undo it.
        """
        return [*await self.clear_stale_cordon_marks(), *await self.clear_stale_suspend_marks()]
