"""How long the lab's cluster takes to come up, and the arithmetic of "true for ``delay`` seconds".

Time is a float (seconds since the epoch); a rule that waits takes the moment its inputs became
true (``since``, tracked by the caller with :func:`held_since`) and the current time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hecate.domain import timestamps


@dataclass(frozen=True)
class Delays:
    """How long the lab's cluster takes to come up, in seconds.

    ``api``: from a quorum of servers running k3s to the API serving; ``node``: from a
    node's k3s starting to its Node being Ready; ``pod``: from a pod's inputs (node
    Ready, not stuck, dependencies available) becoming true to the pod being Ready;
    ``grace``: the node controller's grace period (40 s in Kubernetes), how long a Node
    whose kubelet stopped posting keeps its last status -- counted from its last Lease
    renewal, or from the API coming back when that is later; ``lease``: how often a
    running kubelet renews its Lease (10 s in Kubernetes).
    """

    api: float = 1.0
    node: float = 0.5
    pod: float = 0.5
    grace: float = 1.0
    lease: float = 0.5

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Delays:
        """From the manifest's ``"delays"`` object (missing keys keep their default)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f'"delays" must be an object, not {data!r}')
        known = ("api", "node", "pod", "grace", "lease")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f'unknown delays: {", ".join(unknown)} (known: {", ".join(known)})')
        values: dict[str, float] = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0 or (key == "lease" and value <= 0):
                raise ValueError(f'delays.{key} must be a number of seconds '
                                 f'{"> 0" if key == "lease" else ">= 0"}, not {value!r}')
            values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {"api": self.api, "node": self.node, "pod": self.pod, "grace": self.grace, "lease": self.lease}


def held_since(condition: bool, since: float | None, now: float) -> float | None:
    """Since when ``condition`` has held: ``since`` if it held already, ``now`` if it just became true."""
    if not condition:
        return None
    return now if since is None else since


def elapsed(since: float | None, now: float, delay: float) -> bool:
    """Whether something true since ``since`` has been true for ``delay`` seconds."""
    return since is not None and now - since >= delay


def due_in(since: float | None, now: float, delay: float) -> float | None:
    """Seconds until :func:`elapsed` turns true; None when nothing is pending."""
    if since is None or now - since >= delay:
        return None
    return since + delay - now


def format_time(now: float, *, fraction: bool = False) -> str:
    """RFC 3339 with whole seconds, as the Kubernetes API writes timestamps (``metav1.Time``);
    ``fraction``: with microseconds (``metav1.MicroTime``, e.g. a Lease's ``renewTime``)."""
    return timestamps.rfc3339(dt.datetime.fromtimestamp(now, tz=dt.UTC), fraction=fraction)
