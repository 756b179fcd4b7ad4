"""What the lab API speaks: the resources it serves by name, its timestamps, its Status bodies.

One name per kmock resource handle the emulator, the simulator and the CRDs refer to, and the
formats the Kubernetes API writes (RFC 3339 timestamps with whole seconds, ``v1`` ``Status``).
See docs/lab-kubeapi.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import kmock

from hecate.domain import timestamps

NODES = kmock.resource("", "v1", "nodes")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
PODS = kmock.resource("", "v1", "pods")
PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
DAEMONSETS = kmock.resource("apps", "v1", "daemonsets")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
GITREPOSITORIES = kmock.resource("source.toolkit.fluxcd.io", "v1", "gitrepositories")
KUSTOMIZATIONS = kmock.resource("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELMRELEASES = kmock.resource("helm.toolkit.fluxcd.io", "v2", "helmreleases")
WORKLOAD_RESOURCES = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS, "DaemonSet": DAEMONSETS}

CRUD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def utcnow() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 with whole seconds, as the Kubernetes API writes timestamps."""
    return timestamps.rfc3339(when)


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return timestamps.parse(value)
    except ValueError:
        return None


def status_body(code: int, message: str, reason: str, *, details: Mapping[str, Any] | None = None,
                success: bool = False) -> dict[str, Any]:
    """A v1 ``Status`` as the API server writes it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success" if success else "Failure", "code": code}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = dict(details)
    return body
