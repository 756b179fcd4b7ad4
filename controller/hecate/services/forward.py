"""A peer forwarding its shutdown decision to the coordinator, until accepted or out of time.

:meth:`Forwarder.forward` sends the signed trigger (:mod:`hecate.adapters.peer_client`) again
and again -- each attempt with its own short timeout and a fresh nonce, a backoff between them
(:func:`hecate.domain.forward.backoff`) -- until the coordinator accepts it (2xx), answers with a
refusal no retry can change (:func:`hecate.domain.forward.classify`), or ``peer.forward_for_s``
has passed. The record of the forward (:class:`~hecate.domain.forward.ForwardRecord`) is updated
after every attempt, so status shows it live, and written to the state dir when it starts and
when it ends, so it survives a restart. What follows a forward that was not accepted (the local
fallback) is the daemon's part. Nothing here raises: a secret that cannot be read or a host name
that cannot name a peer is a failed forward, with the reason in the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from hecate.adapters import peer_client
from hecate.adapters.store import StateStore
from hecate.domain import forward, peer
from hecate.domain.config import Peer
from hecate.domain.forward import Answer, ForwardRecord, ForwardResult

log = logging.getLogger(__name__)

Post = Callable[[str, bytes, str, bytes, float], Awaitable[peer_client.Reply]]


class Forwarder:
    """The peer's forwards: the last one (loaded from the state dir at start) and how many ended how."""

    def __init__(self, store: StateStore, post: Post = peer_client.post_trigger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.post = post
        self.clock = clock
        self.last: ForwardRecord | None = peer_client.load_forward(store)
        self.counts: Counter[ForwardResult] = Counter()
        """Forwards ended since the daemon started, by result (``hecate_peer_forwards_total``)."""

    def _update(self, **changes: object) -> ForwardRecord:
        assert self.last is not None
        self.last = self.last.model_copy(update=changes)
        return self.last

    async def forward(self, settings: Peer, body: peer.TriggerBody | None, started: ForwardRecord) -> ForwardRecord:
        """Forward ``body`` (None: it could not be built; ``started.error`` says why) and return the final record."""
        self.last = started
        await peer_client.save_forward(self.store, started)
        record = await self._attempts(settings, body) if body is not None else self._update(
            result=ForwardResult.failed)
        record = self._update(finished_at=datetime.now(UTC))
        self.counts[record.result] += 1
        await peer_client.save_forward(self.store, record)
        if record.result is ForwardResult.accepted:
            log.warning("trigger accepted by the coordinator %s after %d attempt(s): %s %s",
                        settings.coordinator_url, record.attempts, record.status, record.answer)
        else:
            log.error("trigger NOT forwarded to the coordinator %s (%s after %d attempt(s)): %s",
                      settings.coordinator_url, record.result.value, record.attempts,
                      record.answer or record.error)
        return record

    async def _attempts(self, settings: Peer, body: peer.TriggerBody) -> ForwardRecord:
        # The configuration requires all three on a peer.
        assert settings.coordinator_url is not None
        assert settings.key_id is not None
        assert settings.secret_file is not None
        try:
            secret = await asyncio.to_thread(peer_client.read_secret, settings.secret_file)
        except peer_client.SecretError as err:
            return self._update(result=ForwardResult.failed, error=str(err))
        data = peer.encode_body(body)
        deadline = self.clock() + settings.forward_for_s
        attempt = 0
        while True:
            attempt += 1
            timeout = max(forward.MIN_ATTEMPT_S, min(forward.ATTEMPT_TIMEOUT_S, deadline - self.clock()))
            try:
                reply = await self.post(settings.coordinator_url, secret, settings.key_id, data, timeout)
            except peer_client.NoAnswer as err:
                status, answer = None, forward.classify(None)
                self._update(attempts=attempt, error=str(err))
            else:
                status, answer = reply.status, forward.classify(reply.status)
                self._update(attempts=attempt, status=status, answer=forward.answer_text(reply.body), error="")
            if answer is Answer.accepted:
                return self._update(result=ForwardResult.accepted)
            if answer is Answer.refused:
                return self._update(result=ForwardResult.refused)
            wait = forward.next_wait(attempt, deadline - self.clock())
            log.warning("forwarding the trigger, attempt %d: %s; %s", attempt,
                        f"HTTP {status}" if status is not None else self.last.error if self.last else "",
                        "out of time" if wait is None else f"again in {wait:.3g} s")
            if wait is None:
                return self._update(result=ForwardResult.failed)
            await asyncio.sleep(wait)
