"""The Eviction subresource's rule: may a pod be evicted, given its PodDisruptionBudgets?

Pure (:func:`eviction_verdict`); the emulator serves ``POST .../pods/{name}/eviction`` with
it: a refusal is the real API's ``429 TooManyRequests``, an allowed eviction deletes the pod.
See docs/lab-kubeapi.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hecate_lab.cluster_sim import match_selector_object

EVICTION_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."
MULTIPLE_BUDGETS = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class EvictionVerdict:
    """What the API answers to an eviction: ``code`` 201 (allowed), 429 (budget) or 500."""

    allowed: bool
    code: int
    message: str = ""
    budget: str | None = None  # the PodDisruptionBudget that decided, if any
    cause: str | None = None  # the DisruptionBudget cause, as the real API words it


def scaled_value(value: int | str, total: int) -> int:
    """An int-or-percent (``2``, ``"50%"``) against ``total``, percentages rounded up (as k8s)."""
    if isinstance(value, str) and value.endswith("%"):
        percent = int(value[:-1])
        return -(-percent * total // 100)
    return int(value)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) \
        or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def eviction_verdict(pod: Mapping[str, Any], budgets: Iterable[Mapping[str, Any]],
                     pods: Iterable[Mapping[str, Any]]) -> EvictionVerdict:
    """May ``pod`` be evicted, given its namespace's PodDisruptionBudgets and pods?

    Pure; a simplified version of the API server's rule. A pod that is already being
    deleted or has finished (``Succeeded``/``Failed``) may always go. Otherwise the
    budgets whose selector matches the pod's labels apply: none -- allowed; more than
    one -- refused with 500, as the real API does. With one, its *healthy* pods are the
    pods it selects that are neither being deleted nor finished, and the eviction is
    allowed when ``healthy - 1 >= desired``, where ``desired`` is ``minAvailable``, or
    ``selected - maxUnavailable`` (percentages of the selected pods, rounded up), or 0
    when the budget sets neither. Refusals answer 429 with the real API's message.
    """
    if _terminating(pod):
        return EvictionVerdict(allowed=True, code=201)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    matching = [b for b in budgets if not (b.get("metadata") or {}).get("deletionTimestamp")
                and match_selector_object((b.get("spec") or {}).get("selector"), labels)]
    if not matching:
        return EvictionVerdict(allowed=True, code=201)
    if len(matching) > 1:
        return EvictionVerdict(allowed=False, code=500, message=MULTIPLE_BUDGETS)
    budget = matching[0]
    name = str((budget.get("metadata") or {}).get("name"))
    spec = budget.get("spec") or {}
    selected = [p for p in pods if match_selector_object(spec.get("selector"),
                                                         (p.get("metadata") or {}).get("labels"))]
    healthy = sum(1 for p in selected if not _terminating(p))
    if spec.get("minAvailable") is not None:
        desired = scaled_value(spec["minAvailable"], len(selected))
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, len(selected) - scaled_value(spec["maxUnavailable"], len(selected)))
    else:
        desired = 0
    if healthy - 1 >= desired:
        return EvictionVerdict(allowed=True, code=201, budget=name)
    return EvictionVerdict(
        allowed=False, code=429, message=EVICTION_REFUSED, budget=name,
        cause=f"The disruption budget {name} needs {desired} healthy pods and has {healthy} currently")
