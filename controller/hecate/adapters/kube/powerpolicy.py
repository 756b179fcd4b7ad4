"""The operator's own calls to the API: is it there, is the CRD there, write the status.

Why this module exists: the operator (``hecate.operator``) watches the PowerPolicy
through kopf but must not speak to Kubernetes itself. :class:`PolicyApi` has the same
kubeconfig, timeouts and error translation as the shutdown's Kubernetes steps
(``ApiUnavailable`` for "the API is gone", ``KubeNotFound`` for a 404), and
:meth:`PolicyApi.connection_info` gives kopf the same kubeconfig (``cluster.kubeconfig``),
never in-cluster config or ``~/.kube``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf

from hecate.adapters.kube.errors import ApiUnavailable, KubeNotFound
from hecate.adapters.kube.transport import MERGE_PATCH, Transport
from hecate.domain import policy as policy_mod

ROOT = f"/apis/{policy_mod.GROUP}/{policy_mod.VERSION}"


class CrdMissing(Exception):
    """The API serves no ``powerpolicies.hecate.io``."""


class PolicyApi(Transport):
    def __init__(self, kubeconfig: Path, timeout: float) -> None:
        # A short cool-down: the supervisor paces its own retries.
        super().__init__(kubeconfig, timeout, cooldown=0.5)

    def object_path(self, name: str) -> str:
        return f"{ROOT}/{policy_mod.PLURAL}/{name}"

    async def probe(self, name: str) -> bool:
        """Whether PowerPolicy ``name`` exists; raises ApiUnavailable, or CrdMissing."""
        try:
            data = await self._raw(f"discover {policy_mod.API_VERSION}", "GET", ROOT)
        except KubeNotFound:
            raise CrdMissing(f"the API serves no {policy_mod.CRD_NAME} (apply crds/powerpolicy.yaml)") from None
        if not any(r.get("name") == policy_mod.PLURAL for r in (data or {}).get("resources") or []):
            raise CrdMissing(f"the API serves no {policy_mod.CRD_NAME} (apply crds/powerpolicy.yaml)")
        try:
            await self._raw(f"get PowerPolicy {name}", "GET", self.object_path(name))
        except KubeNotFound:
            return False
        return True

    async def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch ``status`` through the status subresource; KubeNotFound if the object is gone."""
        await self._raw(f"patch PowerPolicy {name} status", "PATCH", self.object_path(name) + "/status",
                        {"status": status}, write=True, content_type=MERGE_PATCH)

    def connection_info(self) -> kopf.ConnectionInfo:
        """kopf's credentials from ``cluster.kubeconfig``, read now (raises ApiUnavailable if it is unusable)."""
        cfg = self._configuration()
        header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        scheme: str | None = None
        token: str | None = None
        if header:
            parts = header.split(" ", 1)
            scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        if not cfg.host:
            raise ApiUnavailable(f"kubeconfig {self.kubeconfig} names no server")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert or None,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file or None,
            private_key_path=cfg.key_file or None,
        )
