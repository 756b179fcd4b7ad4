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
