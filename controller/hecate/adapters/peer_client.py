"""A peer's I/O for forwarding: the shared secret, one signed ``POST /v1/trigger``, the last forward's file.

The secret is read from ``peer.secret_file`` (a root-only file, checked like every secret by
``hecate config validate`` and the daemon): its bytes, surrounding whitespace such as a trailing
newline removed -- the coordinator reads its ``peer.trusted[].secret_file`` the same way. One
attempt is one request with its own timeout and a fresh nonce (:func:`post_trigger`); every
failure to get an answer is one :class:`NoAnswer` with a readable reason, so the caller only
decides (``hecate.domain.forward``). The last forward is kept in ``peer-forward.json`` in the state
dir, written atomically; a failed write is counted like every state write and never stops the
forward or the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from hecate.adapters import statefiles
from hecate.adapters.store import PEER_FORWARD, StateStore
from hecate.domain import peer
from hecate.domain.forward import ForwardRecord

log = logging.getLogger(__name__)

FORWARD_FILE = "peer-forward.json"
MAX_ANSWER_BYTES = 4096
"""Read at most this much of the coordinator's answer."""


class SecretError(Exception):
    """The secret file cannot be used; ``str(err)`` names the file and why."""


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise SecretError(f"peer.secret_file {path}: cannot read: {err.strerror or err}") from err
    if not secret:
        raise SecretError(f"peer.secret_file {path}: empty: it must hold the shared secret")
    return secret


class NoAnswer(Exception):
    """The coordinator did not answer (refused connection, unreachable, timeout, broken answer)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


async def post_trigger(url: str, secret: bytes, key_id: str, body: bytes, timeout: float) -> Reply:
    """One signed attempt: ``url`` (the coordinator's base URL) + ``/v1/trigger``, a fresh nonce, ``timeout`` in all."""
    signed = peer.sign(secret, key_id, body, now=time.time(), nonce=secrets.token_urlsafe(18))
    headers = {**signed.headers(), "Content-Type": "application/json"}
    target = url.rstrip("/") + peer.PATH
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.post(target, data=body, headers=headers, allow_redirects=False) as resp:
            return Reply(resp.status, await resp.content.read(MAX_ANSWER_BYTES))
    except TimeoutError as err:
        raise NoAnswer(f"no answer within {timeout:g} s") from err
    except aiohttp.ClientConnectorError as err:
        raise NoAnswer(f"cannot connect to {err.host}:{err.port}: {err.os_error.strerror or err.os_error}") from err
    except (aiohttp.ClientError, OSError, ValueError) as err:
        raise NoAnswer(f"{type(err).__name__}: {err}") from err


def forward_path(store: StateStore) -> Path:
    return store.dir / FORWARD_FILE


def load_forward(store: StateStore) -> ForwardRecord | None:
    """The last forward recorded, or None (none yet; a corrupt file is moved aside and reported)."""
    path = forward_path(store)
    try:
        data = statefiles.read_nofollow(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("cannot read %s: %s", path, err)
        return None
    try:
        return ForwardRecord.model_validate_json(data)
    except ValidationError:
        try:
            aside = statefiles.move_aside(path)
            log.warning("%s is not a forward record: moved aside to %s", path, aside)
        except OSError as err:
            log.warning("%s is not a forward record and cannot be moved aside: %s", path, err)
        return None


async def save_forward(store: StateStore, record: ForwardRecord) -> None:
    """Write the forward record atomically; a failure is counted in the store's write failures, never raised."""
    path = forward_path(store)
    try:
        await asyncio.to_thread(statefiles.atomic_write, path, record.model_dump_json(indent=2).encode())
    except OSError as err:
        store.write_failed(PEER_FORWARD, path, err)
    else:
        store.write_ok(PEER_FORWARD)
