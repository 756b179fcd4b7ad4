"""The coordinator's trigger listener: ``POST /v1/trigger`` from trusted peer hosts (docs/peers.md).

A peer host whose own UPS runs out sends the coordinator a signed trigger
(:mod:`hecate.domain.peer`); an accepted one is a shutdown decision like a UPS's. This listener
exists only when ``peer.listen`` is set, apart from the status/metrics listener (which stays
local), and serves nothing but that one endpoint. It is built so that nobody it refuses can
hurt the monitor: it binds in the background like the status listener (a taken port is retried
with an alert), reads at most :data:`~hecate.domain.peer.MAX_BODY_BYTES` + 1 bytes of a body,
gives a connection :data:`CONNECTION_MAX_S` in all and serves a bounded number at once, does
the cheap checks first (:func:`~hecate.domain.peer.authenticate`), and logs a refusal once per
sender and reason per minute. Every request is counted by result
(``hecate_peer_requests_total``).

The secrets of ``peer.trusted[]`` are read from their root-only files at start and whenever a
configuration is applied; a key whose secret cannot be read is refused (an alert says why) and
the daemon goes on. The nonce of every authenticated request is remembered for the replay
window in memory and in ``<state_dir>/peer-nonces.json`` (atomic writes, bounded, pruned by
age; a corrupt file is moved aside and reads as empty), so a replay is refused across a restart
too. A failed write of that file is counted and logged, never a reason to drop the trigger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from hecate.adapters import http
from hecate.adapters.statefiles import atomic_write, move_aside, read_nofollow
from hecate.adapters.store import NONCES, StateStore
from hecate.domain import peer, permissions, timestamps
from hecate.domain.config import HecateConfig
from hecate.domain.trigger import Decision

log = logging.getLogger(__name__)

NONCES_FILE = "peer-nonces.json"
MAX_CONNECTIONS = 16
"""Connections the trigger listener serves at once; more are closed as soon as they are accepted."""
CONNECTION_MAX_S = 10.0
"""A connection is closed this long after it was accepted, whatever it is doing (a trigger takes
milliseconds; a sender that trickles its headers or body cannot hold a slot)."""
BODY_TIMEOUT_S = 5.0
"""How long reading a body may take."""
MIN_SECRET_BYTES = 16

TriggerHandler = Callable[[Decision], Awaitable[tuple[int, dict[str, Any]]]]
"""Acts on an accepted trigger's decision; returns the HTTP status and JSON to answer."""


def read_secret(path: Path) -> bytes:
    """A shared secret: the file's content without surrounding whitespace (e.g. ``openssl rand
    -hex 32``). Raises ``OSError`` (missing, unreadable) or ``ValueError`` (others may read it,
    or it is shorter than :data:`MIN_SECRET_BYTES`)."""
    st = os.stat(path)
    found = permissions.problems("secret_file", str(path), permissions.Kind.secret,
                                 permissions.FileMode(st.st_mode, st.st_uid), os.geteuid())
    if found:
        raise ValueError("; ".join(found))
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes: a secret needs at least {MIN_SECRET_BYTES}")
    return secret


class PeerListener:
    """``POST /v1/trigger`` on ``peer.listen``; :meth:`start` returns at once (binds in the background)."""

    def __init__(self, config: HecateConfig, store: StateStore, on_trigger: TriggerHandler, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 retry_first_s: float = http.RETRY_FIRST_S, retry_max_s: float = http.RETRY_MAX_S) -> None:
        assert config.peer.listen is not None
        self.address = config.peer.listen
        self.store = store
        self.on_trigger = on_trigger
        self.clock = clock
        self.monotonic = monotonic
        self.retry = (retry_first_s, retry_max_s)
        self.listener = http.Listener("peer", self.address)
        self.counts: dict[str, int] = dict.fromkeys(peer.RESULTS, 0)
        self.keys: dict[str, peer.PeerKey] = {}
        self.trusted: list[tuple[str, str]] = []
        """(peer, key id) of every configured key, usable or not."""
        self.key_problems: dict[str, str] = {}
        """Key id -> why its secret could not be read (the key is refused meanwhile)."""
        self.last: dict[str, dict[str, Any]] = {}
        """Per trusted peer: the last request that named one of its keys (time, result)."""
        self.window_s = config.peer.replay_window_s
        self.nonces_path = config.state_dir / NONCES_FILE
        self.nonces = self._load_nonces()
        self._throttle = peer.LogThrottle()
        self._write_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self.load_keys(config)

    # -- keys and nonces ---------------------------------------------------------------------

    def load_keys(self, config: HecateConfig) -> None:
        """(Re-)read every trusted secret; a key that cannot be read is refused and alerted on."""
        keys: dict[str, peer.PeerKey] = {}
        problems: dict[str, str] = {}
        for trusted in config.peer.trusted:
            try:
                keys[trusted.key_id] = peer.PeerKey(trusted.name, read_secret(trusted.secret_file))
            except (OSError, ValueError) as err:
                problems[trusted.key_id] = str(err)
        for key_id, why in problems.items():
            if self.key_problems.get(key_id) != why:
                log.error("peer key %s refused: its secret cannot be used (%s); triggers signed with it are "
                          "refused", key_id, why)
        for key_id in set(self.key_problems) - set(problems):
            if key_id in keys:
                log.warning("peer key %s: its secret is readable again", key_id)
        self.keys, self.key_problems = keys, problems
        self.trusted = [(t.name, t.key_id) for t in config.peer.trusted]
        self.window_s = config.peer.replay_window_s
        self.nonces.window_s = self.window_s

    def _load_nonces(self) -> peer.Nonces:
        try:
            data = read_nofollow(self.nonces_path)
        except FileNotFoundError:
            return peer.Nonces(self.window_s)
        except OSError as err:
            self._warn(f"{self.nonces_path} cannot be read ({err}); replays from before this start are not "
                       "recognised")
            return peer.Nonces(self.window_s)
        try:
            doc = json.loads(data)
            seen = doc["nonces"]
            if not isinstance(seen, dict) or not all(isinstance(v, int | float) for v in seen.values()):
                raise ValueError("not a map of nonces to times")
        except (ValueError, KeyError, TypeError) as err:
            try:
                aside = move_aside(self.nonces_path)
            except OSError as move_err:
                self._warn(f"{self.nonces_path} is corrupt ({err}) and could not be moved aside ({move_err}); "
                           "it reads as empty")
            else:
                self._warn(f"{self.nonces_path} is corrupt ({err}); moved it to {aside}; it reads as empty")
            return peer.Nonces(self.window_s)
        return peer.Nonces(self.window_s, seen, now=self.clock())

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        if message not in self.store.warnings:
            self.store.warnings.append(message)

    async def _persist(self) -> None:
        """Write the nonces (atomically, one writer at a time); a failure is counted, never raised."""
        async with self._write_lock:
            data = json.dumps({"nonces": self.nonces.seen}).encode()
            try:
                await asyncio.to_thread(atomic_write, self.nonces_path, data)
            except OSError as err:
                self.store.write_failed(NONCES, self.nonces_path, err)
            else:
                self.store.write_ok(NONCES)

    # -- serving -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=http.SHUTDOWN_TIMEOUT_S, keepalive_timeout=http.IDLE_TIMEOUT_S)
        await self._runner.setup()
        host, _, port = self.address.rpartition(":")
        self._task = asyncio.create_task(
            http.keep_bound(self.listener, self._runner, lambda: http.bind_tcp(host.strip("[]") or "0.0.0.0",
                                                                               int(port)),
                            self.retry, MAX_CONNECTIONS, "POST /v1/trigger", max_lifetime_s=CONNECTION_MAX_S),
            name="http-peer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        method, path = request.method, request.path
        if path != peer.PATH:
            return self._refuse(request, peer.Refusal.not_found, None)
        if method.upper() != peer.METHOD:
            return self._refuse(request, peer.Refusal.bad_method, None)
        length = request.content_length
        if length is not None and length > peer.MAX_BODY_BYTES:
            return self._refuse(request, peer.Refusal.too_large, None)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await _read_bounded(request, peer.MAX_BODY_BYTES + 1)
        except (TimeoutError, ConnectionError):
            response = web.json_response({"accepted": False, "reason": "timeout"}, status=408)
            response.force_close()
            return response
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() in _SIGNED_HEADERS}
        key_id = headers.get(peer.HEADER_KEY_ID.lower(), "")
        auth = peer.authenticate(method, path, headers, body, now=self.clock(), keys=self.keys,
                                 window_s=self.window_s)
        if isinstance(auth, peer.Refusal):
            return self._refuse(request, auth, key_id)
        if self.nonces.replayed(auth.nonce):
            return self._refuse(request, peer.Refusal.replayed, key_id)
        self.nonces.remember(auth.nonce, self.clock())
        parsed = peer.parse_body(body, auth)
        if isinstance(parsed, peer.Refusal):
            await self._persist()
            return self._refuse(request, parsed, key_id)
        decision = peer.decision(parsed, auth, self.monotonic())
        # Decided first, written after: a state dir that cannot be written never costs the trigger.
        status, answer = await self.on_trigger(decision)
        await self._persist()
        self.counts[peer.ACCEPTED] += 1
        self._note(auth.peer, auth.key_id, peer.ACCEPTED)
        log.warning("peer %s (key %s): trigger accepted (%s: %s)%s", auth.peer, auth.key_id, parsed.reason,
                    parsed.detail or "-", "; a shutdown was already decided" if status == 200 else "")
        return web.json_response(answer, status=status)

    def _refuse(self, request: web.Request, refusal: peer.Refusal, key_id: str | None) -> web.Response:
        self.counts[refusal.value] += 1
        owner = self._owner(key_id)
        if owner is not None:
            self._note(owner, key_id or "", refusal.value)
            who = f"peer {owner} (key {key_id})"
        elif key_id and len(key_id) <= 64:
            who = f"key id {key_id!r}"
        else:
            who = f"address {request.remote or 'unknown'}"
        logged, more = self._throttle.should_log(who, refusal.value, self.monotonic())
        if logged:
            log.warning("trigger refused from %s: %s (HTTP %d)%s", who, refusal.value, refusal.status,
                        f"; {more} more of the same in the last minute" if more else "")
        response = web.json_response({"accepted": False, "reason": refusal.value}, status=refusal.status)
        if refusal is peer.Refusal.too_large:
            response.force_close()  # the rest of the body is never read
        return response

    def _owner(self, key_id: str | None) -> str | None:
        return next((name for name, kid in self.trusted if kid == key_id), None) if key_id else None

    def _note(self, name: str, key_id: str, result: str) -> None:
        self.last[name] = {"at": timestamps.rfc3339(datetime.now(UTC), fraction=True), "result": result,
                           "key_id": key_id}

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``peer_listener`` in the status document (docs/metrics.md)."""
        peers = []
        for name, key_id in self.trusted:
            peers.append({"name": name, "key_id": key_id, "key_ok": key_id in self.keys,
                          "key_error": self.key_problems.get(key_id)})
        return {"listen": self.address, "listening": self.listener.listening, "error": self.listener.error,
                "replay_window_s": self.window_s, "nonces": len(self.nonces.seen),
                "requests": dict(self.counts), "keys": peers,
                "last_trigger": {name: dict(last) for name, last in sorted(self.last.items())}}

    def alerts(self) -> list[dict[str, Any]]:
        return [{"ups": None, "kind": "peer_key", "message": f"peer key {key_id} refused: {why}"}
                for key_id, why in sorted(self.key_problems.items())]


_SIGNED_HEADERS = {h.lower() for h in peer.HEADERS}


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """At most ``limit`` bytes of the body: never more is buffered, whatever the sender says."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
