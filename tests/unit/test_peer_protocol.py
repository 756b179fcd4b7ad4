"""The signed-trigger check (hecate.domain.peer): every refusal, in its order, and the round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.domain import peer

SECRET = b"s" * 32
KEYS = {"tethys-2026": peer.PeerKey("tethys", SECRET)}
NOW = 1_800_000_000.0
NONCE = "n" * 24


def body(**changes: object) -> bytes:
    data = {"peer": "tethys", "reason": "runtime", "detail": "statera: runtime 120 s <= 330 s",
            "decided_at": datetime.fromtimestamp(NOW, UTC).isoformat(),
            "ups": [{"name": "statera", "status": "OB LB", "runtime_s": 120.0, "charge_pct": 20.0}]}
    data.update(changes)
    return json.dumps(data).encode()


def check(raw: bytes, headers: dict[str, str] | None = None, *, method: str = "POST", path: str = peer.PATH,
          now: float = NOW) -> peer.TriggerBody | peer.Refusal:
    if headers is None:
        headers = peer.sign(SECRET, "tethys-2026", raw, now=NOW, nonce=NONCE).headers()
    auth = peer.authenticate(method, path, headers, raw, now=now, keys=KEYS, window_s=30)
    return auth if isinstance(auth, peer.Refusal) else peer.parse_body(raw, auth)


def test_a_signed_trigger_round_trips() -> None:
    parsed = check(body())
    assert isinstance(parsed, peer.TriggerBody)
    assert parsed.peer == "tethys"
    assert parsed.ups[0].runtime_s == 120.0


def test_header_names_are_case_insensitive() -> None:
    raw = body()
    headers = {k.lower(): v for k, v in peer.sign(SECRET, "tethys-2026", raw, now=NOW, nonce=NONCE).headers().items()}
    assert isinstance(check(raw, headers), peer.TriggerBody)


@pytest.mark.parametrize(("case", "refusal"), [
    ("path", peer.Refusal.not_found), ("method", peer.Refusal.bad_method), ("large", peer.Refusal.too_large),
    ("unsigned", peer.Refusal.unsigned), ("bad-nonce", peer.Refusal.unsigned), ("nan", peer.Refusal.unsigned),
    ("unknown-key", peer.Refusal.unknown_key), ("old", peer.Refusal.stale), ("future", peer.Refusal.stale),
    ("wrong-secret", peer.Refusal.bad_signature), ("tampered", peer.Refusal.bad_signature),
    ("not-json", peer.Refusal.malformed), ("extra-field", peer.Refusal.malformed),
    ("array", peer.Refusal.malformed), ("other-peer", peer.Refusal.wrong_peer),
])
def test_every_refusal(case: str, refusal: peer.Refusal) -> None:
    raw = body()
    signed = peer.sign(SECRET, "tethys-2026", raw, now=NOW, nonce=NONCE)
    headers = signed.headers()
    kwargs: dict[str, object] = {}
    if case == "path":
        kwargs["path"] = "/v1/status"
    elif case == "method":
        kwargs["method"] = "PUT"
    elif case == "large":
        raw = b"{" + b" " * peer.MAX_BODY_BYTES + b"}"
    elif case == "unsigned":
        del headers[peer.HEADER_SIGNATURE]
    elif case == "bad-nonce":
        headers[peer.HEADER_NONCE] = "short"
    elif case == "nan":
        headers[peer.HEADER_TIMESTAMP] = "nan"
    elif case == "unknown-key":
        headers[peer.HEADER_KEY_ID] = "tethys-2025"
    elif case == "old":
        kwargs["now"] = NOW + 31
    elif case == "future":
        kwargs["now"] = NOW - 31
    elif case == "wrong-secret":
        headers = peer.sign(b"x" * 32, "tethys-2026", raw, now=NOW, nonce=NONCE).headers()
    elif case == "tampered":
        raw = raw.replace(b"120.0", b"999.0")
    else:
        raw = {"not-json": b"{nope", "extra-field": body(extra=1), "array": b"[]",
               "other-peer": body(peer="rhea")}[case]
        headers = peer.sign(SECRET, "tethys-2026", raw, now=NOW, nonce=NONCE).headers()
    result = check(raw, headers, **kwargs)  # type: ignore[arg-type]
    assert result is refusal
    assert refusal.status in (400, 401, 404, 405, 409, 413)


def test_statuses() -> None:
    assert peer.Refusal.too_large.status == 413
    assert peer.Refusal.replayed.status == 409
    assert peer.Refusal.malformed.status == 400
    assert peer.Refusal.bad_signature.status == 401


@given(st.binary(max_size=600), st.text(min_size=1, max_size=40))
def test_any_change_of_body_or_path_breaks_the_signature(extra: bytes, path: str) -> None:
    raw = body()
    headers = peer.sign(SECRET, "tethys-2026", raw, now=NOW, nonce=NONCE).headers()
    assert peer.signature(SECRET, "POST", peer.PATH, headers[peer.HEADER_TIMESTAMP], NONCE, raw) == \
        headers[peer.HEADER_SIGNATURE]
    if extra:
        assert peer.signature(SECRET, "POST", peer.PATH, headers[peer.HEADER_TIMESTAMP], NONCE, raw + extra) != \
            headers[peer.HEADER_SIGNATURE]
    if path != peer.PATH:
        assert peer.signature(SECRET, "POST", path, headers[peer.HEADER_TIMESTAMP], NONCE, raw) != \
            headers[peer.HEADER_SIGNATURE]


# -- the coordinator's bookkeeping: nonces, log throttle, the decision ---------------------------

def test_nonces_are_remembered_for_the_window_and_bounded() -> None:
    from hecate.domain.peer import MAX_NONCES, Nonces

    nonces = Nonces(30.0)
    nonces.remember("a" * 16, 100.0)
    assert nonces.replayed("a" * 16)
    nonces.remember("b" * 16, 131.0)  # prunes the first: its timestamp would be stale now
    assert not nonces.replayed("a" * 16)
    assert nonces.replayed("b" * 16)
    loaded = Nonces(30.0, {"c" * 16: 100.0, "d" * 16: 125.0, "bad nonce!": 125.0}, now=131.0)
    assert set(loaded.seen) == {"d" * 16}
    for i in range(MAX_NONCES + 10):
        nonces.remember(f"{i:016d}", 131.0)
    assert len(nonces.seen) == MAX_NONCES


def test_a_refusal_is_logged_once_per_sender_and_reason_per_minute() -> None:
    from hecate.domain.peer import LogThrottle

    throttle = LogThrottle(every_s=60, max_keys=2)
    assert throttle.should_log("a", "stale", 0) == (True, 0)
    assert throttle.should_log("a", "stale", 10) == (False, 0)
    assert throttle.should_log("a", "unsigned", 10) == (True, 0)
    assert throttle.should_log("b", "stale", 10) == (False, 0)  # bounded: a third sender is not logged
    assert throttle.should_log("a", "stale", 61) == (True, 1)


def test_an_accepted_trigger_is_a_latched_peer_decision() -> None:
    from hecate.domain import trigger
    from hecate.domain.peer import Authenticated, TriggerBody, decision

    body = TriggerBody.model_validate_json(json.dumps({"peer": "tethys", "reason": "runtime", "detail": "Statera 40 s",
                                       "decided_at": "2026-11-27T03:50:00Z",
                                       "ups": [{"name": "statera", "status": "OB", "runtime_s": 40}]}))
    d = decision(body, Authenticated("tethys-1", "tethys", "n" * 16, 0.0), 5.0)
    assert (d.reason, d.ups, d.runtime_s) == (trigger.Reason.peer, "statera", 40)
    assert d.peer is not None
    assert (d.peer.peer, d.peer.key_id, d.peer.reason) == ("tethys", "tethys-1", "runtime")
    state, fresh = trigger.latch(trigger.State(), d)
    assert fresh
    assert state.latched == d
    other = trigger.Decision("pyrphoros", trigger.Reason.low_battery, 6.0, "LB")
    assert trigger.latch(trigger.State(latched=other), d) == (trigger.State(latched=other), False)
