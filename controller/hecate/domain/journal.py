"""Journal events: what the executor records, one line each, while a run is in flight.

The executor writes a :class:`RunStarted` (the plan, the trigger, the boot), then a
:class:`StepStarted` and a :class:`StepFinished` per step, and a :class:`RunResumed`
when a new process takes a killed run over. ``hecate.adapters.store`` appends them to
``journal/<run-id>.jsonl`` (fsync'd) and reads them back with :func:`parse`; the executor
keeps what it needs in memory, so the file is read only when a run resumes. The JSON form of each event is
the one earlier versions wrote (``{"event": "step-end", "step": "drain/drain/a1", ...}``),
so a journal one of them left still resumes. Purely computational.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hecate.domain import results
from hecate.domain.plan import Action, Plan
from hecate.domain.results import Done, StepResult


class StepStatus(StrEnum):
    ok = "ok"
    failed = "failed"
    skipped = "skipped"


@dataclass(frozen=True)
class RunStarted:
    plan: Plan
    trigger: dict[str, Any]
    t: float
    """Wall-clock start (seconds since the epoch)."""
    boot_id: str
    """The host's boot: a journal from an earlier boot is recorded as interrupted, never resumed."""


@dataclass(frozen=True)
class RunResumed:
    t: float


@dataclass(frozen=True)
class StepStarted:
    step: str
    """The step's key in the plan (``stage/action/target``)."""
    t: float


@dataclass(frozen=True)
class StepFinished:
    step: str
    status: StepStatus
    detail: str
    """The step's line for its stage's record."""
    result: StepResult
    t: float
    duration_s: float
    attempts: int


Event = RunStarted | RunResumed | StepStarted | StepFinished


def to_json(event: Event) -> dict[str, Any]:
    """The event as one journal line's JSON object."""
    match event:
        case RunStarted():
            return {"event": "run", "plan": event.plan.to_dict(), "trigger": event.trigger, "t": event.t,
                    "boot_id": event.boot_id}
        case RunResumed():
            return {"event": "resume", "t": event.t}
        case StepStarted():
            return {"event": "step-start", "step": event.step, "t": event.t}
        case StepFinished():
            return {"event": "step-end", "step": event.step, "status": event.status.value, "detail": event.detail,
                    "data": event.result.to_data(), "t": event.t, "duration_s": event.duration_s,
                    "attempts": event.attempts}


def from_json(data: Mapping[str, Any]) -> Event | None:
    """Read one journal line's object back; None for an event this version does not know.

    A known event that does not parse raises ``KeyError``, ``TypeError`` or ``ValueError``.
    """
    match data.get("event"):
        case "run":
            return RunStarted(Plan.from_dict(data["plan"]), dict(data["trigger"]), float(data["t"]),
                              str(data.get("boot_id", "")))
        case "resume":
            return RunResumed(float(data["t"]))
        case "step-start":
            return StepStarted(str(data["step"]), float(data["t"]))
        case "step-end":
            key = str(data["step"])
            return StepFinished(key, StepStatus(data["status"]), str(data.get("detail", "")),
                                _result(key, data.get("data") or {}), float(data["t"]),
                                float(data.get("duration_s", 0.0)), int(data.get("attempts", 1)))
    return None


class Corrupt(ValueError):
    """A journal line that is not an event: the journal cannot be trusted (``str(err)`` says where and why)."""


def parse(data: bytes) -> list[Event]:
    """Every event of a journal file, in order.

    A last line without its newline is a write the power (or a kill, or a full disk) tore:
    it is dropped. Every other line must be a JSON object; an event this version does not
    know is skipped (a later version's), anything else raises :class:`Corrupt` -- one bad
    line makes the whole journal untrustworthy, so its run starts again from the plan.
    """
    *lines, tail = data.split(b"\n")
    events = [event for number, line in enumerate(lines, 1) if (event := _line(number, line)) is not None]
    if tail:
        try:
            event = _line(len(lines) + 1, tail)
        except Corrupt:  # torn mid-write
            event = None
        if event is not None:
            events.append(event)
    return events


def _line(number: int, line: bytes) -> Event | None:
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise Corrupt(f"line {number}: not JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise Corrupt(f"line {number}: not a JSON object")
    try:
        return from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise Corrupt(f"line {number}: not a journal event this version can read "
                      f"({type(err).__name__}: {err})") from None


def _result(key: str, data: Mapping[str, Any]) -> StepResult:
    """The step's result, typed by the action its key names (``stage/action/target``)."""
    _, _, rest = key.partition("/")
    try:
        action = Action(rest.partition("/")[0])
    except ValueError:
        return Done()
    return results.from_data(action, data)
