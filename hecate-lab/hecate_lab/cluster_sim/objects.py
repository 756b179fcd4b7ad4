"""Reading the emulated cluster's objects, as every rule does: plain dicts, never mutated.

The annotations the rules read, how a rule names an object (:data:`ObjRef`), metadata and
conditions, ``LabelSelector`` objects, and JSON merge patches (what a status write changes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hecate.domain.kubeobjects import WORKLOAD_KINDS, format_ref
from hecate_lab.cluster_sim.timing import format_time

LOST_ON_COLD_START = "lab.hecate.io/lost-on-cold-start"
"""``"true"``: the object (and what it owns or selects) is deleted when the API comes back."""
STUCK = "lab.hecate.io/stuck"
"""``"true"`` on a pod: it never becomes Ready (a crash-looping container); delete it to fix."""
DEPENDS_ON = "lab.hecate.io/depends-on"
"""On a workload: ``"ns/kind/name,..."`` (kind lower-case) that must be available for its pods to be Ready."""
SERVED_BY = "lab.hecate.io/served-by"
"""On a GitRepository: ``"ns/kind/name"`` of the workload serving the Git repository (e.g. Gitea)."""
BRANCHES = "lab.hecate.io/branches"
"""On a GitRepository: the comma-separated branches the repository has."""
RENDERS = "lab.hecate.io/renders"
"""On a Kustomization or HelmRelease: a JSON list of the manifests it applies."""
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""Flux's "reconcile now" annotation; a handled request is echoed in ``status.lastHandledReconcileAt``."""

KIND_BY_LOWER = {k.lower(): k for k in WORKLOAD_KINDS}
"""A workload kind from its lower-case spelling in ``ns/kind/name`` references."""

ObjRef = tuple[str, str | None, str]
"""(kind, namespace, name) -- how the rules name an object."""


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = meta_of(obj).get("annotations")
    return value if isinstance(value, Mapping) else {}


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = meta_of(obj).get("labels")
    return value if isinstance(value, Mapping) else {}


def spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("spec")
    return value if isinstance(value, Mapping) else {}


def status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("status")
    return value if isinstance(value, Mapping) else {}


def ref_of(obj: Mapping[str, Any]) -> ObjRef:
    meta = meta_of(obj)
    return str(obj.get("kind")), meta.get("namespace"), str(meta.get("name"))


def ref_text(ref: ObjRef) -> str:
    """``namespace/kind/name`` (``/kind/name`` for cluster objects), as Hecate's refs read."""
    kind, namespace, name = ref
    return format_ref(namespace, kind, name)


def is_true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool(meta_of(obj).get("deletionTimestamp"))


def condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in status_of(obj).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return None


def condition_true(obj: Mapping[str, Any], ctype: str = "Ready") -> bool:
    cond = condition(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def make_condition(ctype: str, ok: bool, reason: str, message: str, previous: Mapping[str, Any] | None,
                   now: float, *, update_time: bool = False) -> dict[str, Any]:
    """A status condition whose ``lastTransitionTime`` moves only when its status changes."""
    status = "True" if ok else "False"
    prev = previous or {}
    transition = prev.get("lastTransitionTime") if prev.get("status") == status else None
    cond: dict[str, Any] = {"type": ctype, "status": status, "reason": reason, "message": message}
    if update_time:  # Deployments also carry lastUpdateTime: moved on any change of the condition
        unchanged = (prev.get("status"), prev.get("reason"), prev.get("message")) == (status, reason, message)
        cond["lastUpdateTime"] = prev.get("lastUpdateTime") if unchanged and prev.get("lastUpdateTime") \
            else format_time(now)
    cond["lastTransitionTime"] = transition or format_time(now)
    return cond


def match_selector_object(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether labels satisfy a ``LabelSelector`` object (``matchLabels`` + ``matchExpressions``).

    A missing (null) selector selects nothing, an empty one (``{}``) everything, as for a
    policy/v1 PodDisruptionBudget. Unknown operators select nothing.
    """
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) applied: objects merge, ``None`` removes, the rest replaces."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = merge_patch({}, value)
        else:
            result[key] = value
    return result


def status_changed(obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether merge-patching ``status`` into the object's status would change anything."""
    current = dict(status_of(obj))
    return merge_patch(current, status) != current
