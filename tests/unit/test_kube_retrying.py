"""A shutdown's Kubernetes call through an API blip: retried within its deadline, skipped only after it.

``Remote.k8s`` with fake calls (the real client against a paused lab API is in
tests/integration/test_shutdown.py); the window arithmetic of ``shutdown.api_window``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from hecate.adapters.kube import ApiUnavailable, KubeError
from hecate.domain.plan import Action, Step
from hecate.domain.results import ScaledDown
from hecate.services.executor import Skipped, StepFailed
from hecate.services.remote import Remote
from hecate.services.shutdown import api_window

pytestmark = pytest.mark.timeout(30)


class Flaky:
    """Unreachable for the first ``failures`` calls, then returns ``{"ok": n}``."""

    def __init__(self, failures: int, *, retry_after: float = 0.0, partial: Any = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.partial = partial
        self.calls: list[float] = []

    async def __call__(self) -> dict[str, int]:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise ApiUnavailable("connection refused", retry_after=self.retry_after, partial=self.partial)
        return {"ok": len(self.calls)}


def remote() -> Remote:
    return Remote(None, None)  # type: ignore[arg-type]  # k8s() uses neither the pool nor the client


async def test_a_blip_shorter_than_the_deadline_is_retried_until_the_call_gets_through() -> None:
    conn, call = remote(), Flaky(2)
    started = time.monotonic()
    assert await conn.k8s("flux-suspend", call, until=started + 10) == {"ok": 3}
    assert len(call.calls) == 3
    gaps = [b - a for a, b in zip(call.calls, call.calls[1:], strict=False)]
    assert gaps[0] >= 0.45
    assert gaps[1] >= 0.95
    assert not conn.api_down


async def test_the_client_cool_down_is_waited_for_not_spun_on() -> None:
    conn, call = remote(), Flaky(1, retry_after=1.2)
    await conn.k8s("scale-down", call, until=time.monotonic() + 10)
    assert call.calls[1] - call.calls[0] >= 1.15  # the cool-down (1.2 s), not the 0.5 s backoff

    late = Flaky(100, retry_after=1.2)
    started = time.monotonic()
    with pytest.raises(Skipped):  # the client would not try the network again before the deadline
        await remote().k8s("scale-down", late, until=started + 1.0)
    assert len(late.calls) == 1
    assert time.monotonic() - started < 0.1


async def test_an_api_down_for_the_whole_deadline_skips_the_step_with_what_it_had_done() -> None:
    conn, call = remote(), Flaky(100, partial={"web": 2})
    started = time.monotonic()
    with pytest.raises(Skipped) as skipped:
        await conn.k8s("scale-down", call, ScaledDown, until=started + 2.0)
    took = time.monotonic() - started
    assert 1.95 <= took < 2.4  # attempts at 0, 0.5, 1.5 s and the last one at the deadline
    assert len(call.calls) == 4
    assert str(skipped.value).startswith("Kubernetes API unreachable for 2.0 s (4 attempts), scale-down skipped")
    assert skipped.value.result == ScaledDown({"web": 2})
    assert conn.api_down


async def test_after_one_deadline_spent_in_vain_later_calls_try_once_until_one_gets_through() -> None:
    conn = remote()
    with pytest.raises(Skipped):
        await conn.k8s("flux-suspend", Flaky(100), until=time.monotonic() + 0.6)
    dead = Flaky(100)
    started = time.monotonic()
    with pytest.raises(Skipped, match=r"^Kubernetes API unreachable, drain skipped"):
        await conn.k8s("drain", dead, until=time.monotonic() + 30)
    assert len(dead.calls) == 1
    assert time.monotonic() - started < 0.1
    assert await conn.k8s("cordon", Flaky(0), until=time.monotonic() + 30) == {"ok": 1}
    assert not conn.api_down  # the API is back: the next blip is waited for again
    assert await conn.k8s("drain", Flaky(1), until=time.monotonic() + 30) == {"ok": 2}


async def test_without_a_deadline_one_attempt_and_a_refusal_is_never_retried() -> None:
    conn = remote()
    once = Flaky(1)
    with pytest.raises(Skipped):
        await conn.k8s("undo", once)
    assert len(once.calls) == 1
    assert not conn.api_down

    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise KubeError("patch /node/a1: 403 Forbidden")

    with pytest.raises(StepFailed, match="cordon: patch /node/a1: 403 Forbidden"):
        await conn.k8s("cordon", refused, until=time.monotonic() + 10)
    assert calls == 1


@pytest.mark.parametrize(
    ("timeout_s", "stage_timeout_s", "api_timeout_s", "expected"),
    [
        (40.0, 300.0, 10.0, 29.5),  # flux-suspend at the defaults: 4 x api_timeout, less one call and the margin
        (8.0, 300.0, 2.0, 5.5),
        (40.0, 20.0, 10.0, 9.5),  # never past shutdown.stage_timeout_s
        (10.0, 300.0, 10.0, 0.0),  # no room for a second attempt: one try
    ],
)
def test_the_retry_window_fits_in_the_step_and_the_stage(timeout_s: float, stage_timeout_s: float,
                                                         api_timeout_s: float, expected: float) -> None:
    step = Step(Action.flux_suspend, "flux", timeout_s=timeout_s)
    assert api_window(step, stage_timeout_s, api_timeout_s) == pytest.approx(expected)
