"""A peer's side of a trigger: how long it keeps trying, what ends its tries, what it sends. Pure.

A peer (``role: peer``) decides on its own UPSes with the same rules as the coordinator and,
instead of shutting a cluster down, forwards the decision as a signed ``POST /v1/trigger``
(:mod:`hecate.domain.peer`). It tries again with backoff (:func:`backoff`) for at most
``peer.forward_for_s``; an answer that no retry can change (a 4xx such as a bad signature or an
unknown key, :func:`classify`) ends the tries at once. A forward that is not accepted in time is
a failure, and the peer falls back to shutting down only itself (``peer.fallback_local_shutdown``).

:class:`ForwardRecord` is what the peer remembers of its last forward (``peer-forward.json`` in
the state dir, and ``hecate status``); :func:`trigger_body` builds the body from a decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hecate.domain import peer, text
from hecate.domain.trigger import Decision
from hecate.domain.ups import Snapshot

BACKOFF_FIRST_S = 0.5
"""The wait after the first failed attempt; it doubles after each further one ..."""
BACKOFF_MAX_S = 5.0
"""... up to this, then stays there."""
ATTEMPT_TIMEOUT_S = 3.0
"""Longest one attempt (connect, send, answer) may take: a coordinator on the LAN answers in milliseconds."""
MIN_ATTEMPT_S = 0.25
"""The last attempt starts at least this long before ``peer.forward_for_s`` runs out: the whole time is used."""
ANSWER_CHARS = 200
"""How much of the coordinator's answer is kept (status, log)."""
RETRY_STATUSES = frozenset({408, 409, 425, 429})
"""4xx answers a later attempt can change: a timeout, a replayed nonce (every attempt has a fresh one), too early,
too many requests."""


class Answer(StrEnum):
    """What one attempt's outcome means for the forward."""

    accepted = "accepted"  # 2xx: the coordinator has the trigger
    retry = "retry"  # no answer, 5xx, or a 4xx a retry can change: try again while time is left
    refused = "refused"  # any other answer: the same request would be refused again


class ForwardResult(StrEnum):
    """How a forward ended; the values are the labels of ``hecate_peer_forwards_total``."""

    forwarding = "forwarding"  # still trying
    accepted = "accepted"
    refused = "refused"  # the coordinator answered with a refusal no retry can change
    failed = "failed"  # no acceptance within peer.forward_for_s (down, unreachable, 5xx)


FINAL_RESULTS = (ForwardResult.accepted, ForwardResult.refused, ForwardResult.failed)


class Fallback(StrEnum):
    """What became of the local fallback after a forward that was not accepted."""

    ran = "ran"  # the local shutdown was started (shutdown.execute: true)
    dry_run = "dry_run"  # recorded as a dry-run (shutdown.execute: false)
    disabled = "disabled"  # peer.fallback_local_shutdown: false
    power_back = "power_back"  # mains was back on the protecting UPSes: nothing to do


def backoff(attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): 0.5, 1, 2, 4, 5, 5, ... s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** max(0, attempt - 1))


def next_wait(attempt: int, left_s: float) -> float | None:
    """How long to wait after failed attempt number ``attempt`` with ``left_s`` of the forwarding time left;
    None: out of time. The backoff, cut short so that one last attempt still starts before the end."""
    if left_s <= MIN_ATTEMPT_S:
        return None
    return min(backoff(attempt), left_s - MIN_ATTEMPT_S)


def schedule(window_s: float, attempt_s: float = ATTEMPT_TIMEOUT_S) -> list[float]:
    """When attempts start (seconds after the first) if every attempt fails after ``attempt_s`` (an attempt's
    timeout never runs past the window)."""
    starts, at = [0.0], 0.0
    while True:
        end = at + min(attempt_s, window_s - at)
        wait = next_wait(len(starts), window_s - end)
        if wait is None:
            return starts
        at = end + wait
        starts.append(at)


def classify(status: int | None) -> Answer:
    """What an attempt's HTTP status (None: no answer at all) means for the forward."""
    if status is None or status >= 500 or status in RETRY_STATUSES:
        return Answer.retry
    if 200 <= status < 300:
        return Answer.accepted
    return Answer.refused  # 4xx (bad signature, unknown key, malformed, too large), and redirects or 1xx


def _name(value: str) -> str | None:
    """``value`` as a trigger name (lower case, ``_`` as ``-``), or None when it cannot be one."""
    name = value.lower().replace("_", "-")
    return name if re.fullmatch(peer.NAME_PATTERN, name) else None


def _bounded(value: float | None, high: float) -> float | None:
    return None if value is None else min(max(value, 0.0), high)


def readings(snapshots: Iterable[Snapshot]) -> tuple[peer.UpsReading, ...]:
    """The readings a trigger carries: UPSes that answered, their values held within the schema's bounds (a
    charge of 101 % is still sent), at most the schema's eight; a name the schema cannot hold is left out."""
    out = []
    for snap in snapshots:
        name = _name(snap.ups)
        if name is None or not snap.ok:
            continue
        out.append(peer.UpsReading(name=name, status=(snap.status or "")[:64],
                                   runtime_s=_bounded(snap.runtime_s, 10**6), charge_pct=_bounded(snap.charge_pct, 100),
                                   load_pct=_bounded(snap.load_pct, 1000)))
    return tuple(out[:8])


def trigger_body(host_name: str, decision: Decision, decided_at: datetime,
                 snapshots: Iterable[Snapshot]) -> peer.TriggerBody:
    """The body a peer sends for ``decision``; ``ValueError`` when ``host_name`` cannot name a peer."""
    name = _name(host_name)
    if name is None:
        raise ValueError(f"host_name {host_name!r} cannot name a peer in a trigger: lower-case letters, digits, "
                         "dots and hyphens (set host_name to the name the coordinator's peer.trusted[] gives it)")
    return peer.TriggerBody(peer=name, reason=decision.reason.value, detail=decision.detail[:300],
                            decided_at=decided_at, ups=readings(snapshots))


def answer_text(body: bytes) -> str:
    """The coordinator's answer as it is kept: one cleaned line, at most :data:`ANSWER_CHARS`."""
    return text.clean(body.decode("utf-8", "replace"), ANSWER_CHARS)


class ForwardRecord(BaseModel):
    """The peer's last forward: kept in ``peer-forward.json`` (survives a restart) and shown in status."""

    model_config = ConfigDict(extra="forbid")

    coordinator_url: str
    peer: str
    reason: str
    detail: str = ""
    decided_at: AwareDatetime
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    attempts: int = Field(default=0, ge=0)
    result: ForwardResult = ForwardResult.forwarding
    status: int | None = None
    """The last HTTP status the coordinator answered (None: it never answered)."""
    answer: str = ""
    """The coordinator's last answer (cleaned, shortened)."""
    error: str = ""
    """Why the last attempt got no answer, or why the forward could not be sent at all."""
    fallback: Fallback | None = None
    fallback_run: str | None = None
    """The run id of the local shutdown (or its dry-run record)."""
