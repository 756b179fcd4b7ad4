"""Signed peer triggers: what a peer host sends the coordinator when its own UPS runs out, and the
one check both sides agree on.

A peer (``role: peer``, e.g. ``tethys`` reading UPS Statera) forwards its shutdown decision to the
coordinator as ``POST /v1/trigger`` with a JSON body (:class:`TriggerBody`) and four headers: the
key id, a timestamp, a nonce and an HMAC-SHA256 signature over method, path, timestamp, nonce and
the body's SHA-256 (:func:`canonical`). The coordinator checks, in this order, so that nothing an
unauthenticated sender controls costs more than a header look-up: size, method and path, headers,
key id, timestamp window, signature (constant time), then -- the caller's part, since it is state
-- the nonce, and last the body's strict schema and that its peer is the key's peer
(:func:`check`). Every refusal has one :class:`Refusal` with its HTTP status.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from hecate.domain import timestamps
from hecate.domain.trigger import Decision, PeerTrigger, Reason

METHOD = "POST"
PATH = "/v1/trigger"
MAX_BODY_BYTES = 4096
"""A trigger is a few hundred bytes; anything larger is refused before it is read further."""
HEADER_KEY_ID = "X-Hecate-Key-Id"
HEADER_TIMESTAMP = "X-Hecate-Timestamp"
HEADER_NONCE = "X-Hecate-Nonce"
HEADER_SIGNATURE = "X-Hecate-Signature"
HEADERS = (HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
NONCE_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


class Refusal(StrEnum):
    """Why a trigger request was refused; the value is the metric label."""

    not_found = "not_found"  # another path
    bad_method = "bad_method"  # the trigger path with another method
    too_large = "too_large"
    unsigned = "unsigned"  # a header missing or malformed
    unknown_key = "unknown_key"
    stale = "stale"  # timestamp outside the replay window, either side
    bad_signature = "bad_signature"
    replayed = "replayed"
    malformed = "malformed"  # not JSON, or not the schema
    wrong_peer = "wrong_peer"  # the body names another peer than the key's

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    Refusal.not_found: 404, Refusal.bad_method: 405, Refusal.too_large: 413, Refusal.unsigned: 401,
    Refusal.unknown_key: 401, Refusal.stale: 401, Refusal.bad_signature: 401, Refusal.replayed: 409,
    Refusal.malformed: 400, Refusal.wrong_peer: 401,
}


ACCEPTED = "accepted"
RESULTS = (ACCEPTED, *(r.value for r in Refusal))
"""Every value of ``hecate_peer_requests_total{result}``: bounded, never anything a sender chooses."""
MAX_NONCES = 4096
"""Nonces remembered at most (only authenticated requests add one); beyond, the oldest are forgotten."""
LOG_EVERY_S = 60.0
"""A refusal is logged once per sender and reason in this time."""
MAX_LOG_KEYS = 256
"""Senders and reasons whose last log line is remembered; beyond, refusals of new ones are not logged."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class UpsReading(_Strict):
    """One of the peer's UPSes as it read it when it decided."""

    name: str = Field(pattern=NAME_PATTERN)
    status: str = Field(max_length=64)
    runtime_s: float | None = Field(default=None, ge=0, le=10**6)
    charge_pct: float | None = Field(default=None, ge=0, le=100)
    load_pct: float | None = Field(default=None, ge=0, le=1000)


class TriggerBody(_Strict):
    """The JSON body of a trigger: who decided, why, when, and on what readings."""

    peer: str = Field(pattern=NAME_PATTERN)
    reason: str = Field(pattern=r"^[a-z_]{1,32}$")
    detail: str = Field(default="", max_length=300)
    decided_at: AwareDatetime
    ups: tuple[UpsReading, ...] = Field(default=(), max_length=8)


@dataclass(frozen=True)
class PeerKey:
    """A peer the coordinator trusts: its name and the secret its key id signs with."""

    peer: str
    secret: bytes


@dataclass(frozen=True)
class Signed:
    """The headers of a signed request."""

    key_id: str
    timestamp: str
    nonce: str
    signature: str

    def headers(self) -> dict[str, str]:
        return {HEADER_KEY_ID: self.key_id, HEADER_TIMESTAMP: self.timestamp, HEADER_NONCE: self.nonce,
                HEADER_SIGNATURE: self.signature}


@dataclass(frozen=True)
class Authenticated:
    """A request whose signature holds: the caller must still check and remember the nonce, then
    :func:`parse_body`."""

    key_id: str
    peer: str
    nonce: str
    timestamp: float


def canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What is signed: one line each for method, path, timestamp, nonce and the body's SHA-256."""
    return "\n".join([method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest()]).encode()


def signature(secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hmac.new(secret, canonical(method, path, timestamp, nonce, body), hashlib.sha256).hexdigest()


def sign(secret: bytes, key_id: str, body: bytes, *, now: float, nonce: str) -> Signed:
    """The headers for ``POST /v1/trigger`` with ``body``; ``nonce`` fresh and random for every request
    (e.g. ``secrets.token_urlsafe(18)``)."""
    timestamp = f"{now:.3f}"
    return Signed(key_id, timestamp, nonce, signature(secret, METHOD, PATH, timestamp, nonce, body))


def authenticate(method: str, path: str, headers: Mapping[str, str], body: bytes, *, now: float,
                 keys: Mapping[str, PeerKey], window_s: float) -> Authenticated | Refusal:
    """Everything but the nonce and the body's schema, cheapest first (``headers``: case as sent is fine)."""
    if path != PATH:
        return Refusal.not_found
    if method.upper() != METHOD:
        return Refusal.bad_method
    if len(body) > MAX_BODY_BYTES:
        return Refusal.too_large
    lower = {k.lower(): v for k, v in headers.items()}
    key_id, stamp, nonce, sig = (lower.get(h.lower(), "") for h in HEADERS)
    if not (key_id and stamp and nonce and sig) or len(key_id) > 64 or len(sig) != 64:
        return Refusal.unsigned
    if not re.fullmatch(NONCE_PATTERN, nonce):
        return Refusal.unsigned
    try:
        sent = float(stamp)
    except ValueError:
        return Refusal.unsigned
    if sent != sent or len(stamp) > 32:  # NaN
        return Refusal.unsigned
    key = keys.get(key_id)
    if key is None:
        return Refusal.unknown_key
    if abs(now - sent) > window_s:
        return Refusal.stale
    if not hmac.compare_digest(sig, signature(key.secret, method, path, stamp, nonce, body)):
        return Refusal.bad_signature
    return Authenticated(key_id=key_id, peer=key.peer, nonce=nonce, timestamp=sent)


def parse_body(body: bytes, auth: Authenticated) -> TriggerBody | Refusal:
    """The body, strictly: JSON of exactly :class:`TriggerBody`'s shape, naming the key's own peer."""
    try:
        parsed = TriggerBody.model_validate_json(body)
    except ValidationError:
        return Refusal.malformed
    if parsed.peer != auth.peer:
        return Refusal.wrong_peer
    return parsed


def encode_body(body: TriggerBody) -> bytes:
    return body.model_dump_json().encode()


def decision(body: TriggerBody, auth: Authenticated, now: float) -> Decision:
    """The shutdown decision an accepted trigger is (``now``: the monitor's clock)."""
    readings = tuple(r.model_dump() for r in body.ups)
    names = ", ".join(r.name for r in body.ups) or "-"
    detail = f"peer {body.peer}: {body.reason}" + (f": {body.detail}" if body.detail else "")
    runtime = min((r.runtime_s for r in body.ups if r.runtime_s is not None), default=None)
    return Decision(names, Reason.peer, now, detail, runtime_s=runtime, peer=PeerTrigger(
        peer=body.peer, key_id=auth.key_id, reason=body.reason, detail=body.detail,
        decided_at=timestamps.rfc3339(body.decided_at, fraction=True), ups=readings))


class Nonces:
    """The nonces of accepted requests, each remembered for the replay window (wall-clock seconds)."""

    def __init__(self, window_s: float, seen: Mapping[str, float] | None = None, *, now: float = 0.0) -> None:
        self.window_s = window_s
        self.seen: dict[str, float] = {}
        for nonce, at in sorted((seen or {}).items(), key=lambda kv: kv[1]):
            if re.fullmatch(NONCE_PATTERN, nonce) and now - at <= window_s:
                self.seen[nonce] = at
        self._bound()

    def replayed(self, nonce: str) -> bool:
        return nonce in self.seen

    def remember(self, nonce: str, now: float) -> None:
        self.prune(now)
        self.seen[nonce] = now
        self._bound()

    def prune(self, now: float) -> None:
        """Forget the nonces older than the window: their timestamps are refused as stale anyway."""
        for nonce in [n for n, at in self.seen.items() if now - at > self.window_s]:
            del self.seen[nonce]

    def _bound(self) -> None:
        while len(self.seen) > MAX_NONCES:
            del self.seen[next(iter(self.seen))]


class LogThrottle:
    """Whether to log a refusal: once per (sender, reason) per :data:`LOG_EVERY_S`; bounded memory."""

    def __init__(self, every_s: float = LOG_EVERY_S, max_keys: int = MAX_LOG_KEYS) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self.last: dict[tuple[str, str], float] = {}
        self.suppressed: dict[tuple[str, str], int] = {}

    def should_log(self, who: str, reason: str, now: float) -> tuple[bool, int]:
        """(log it?, how many of the same were not logged since the last line)."""
        key = (who, reason)
        at = self.last.get(key)
        if at is not None and now - at < self.every_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False, 0
        if at is None and len(self.last) >= self.max_keys:
            for old in [k for k, t in self.last.items() if now - t >= self.every_s]:
                del self.last[old]
                self.suppressed.pop(old, None)
            if len(self.last) >= self.max_keys:
                return False, 0
        self.last[key] = now
        return True, self.suppressed.pop(key, 0)
