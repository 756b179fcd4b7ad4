"""Validation errors as people read them: where, the bad value, why -- one line per problem.

pydantic says *what* is wrong. hecate.yaml, a PowerPolicy and runs.json all need the same
more: *where*, as the dotted path one would write in YAML (``cluster.nodes[0].role``),
the value that was given, and for an unknown key the keys allowed there. This is the one
formatter for all three; each caller only adds where the document came from (a file, an
environment variable, a status condition). Pure.

A validator that judges a whole list or section (unique names, say) would be located at
the list or section; :func:`field_error` locates its problem at the one field it is about
(``cluster.nodes[2].name``), and the messages never carry pydantic's own prefixes
(``Value error, ``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from hecate.domain.reference import model_in

Loc = tuple[int | str, ...]

FIELD_ERROR: Final = "hecate_field"
"""The error type of :func:`field_error`."""
_NOISE: Final = ("Value error, ", "Assertion failed, ")
"""What pydantic puts before a validator's own message."""
_NO_VALUE: Final = object()


def field_error(loc: Loc, message: str, value: Any = _NO_VALUE) -> PydanticCustomError:
    """The error a validator raises about one field inside what it validates.

    ``loc`` is relative to the validated value: ``(2, "name")`` from a validator of
    ``cluster.nodes`` (or of the ``cluster`` section with ``("nodes", 2, "name")``) is
    reported at ``cluster.nodes[2].name``, with ``value`` shown when given.
    """
    context: dict[str, Any] = {"message": message, "loc": tuple(loc)}
    if value is not _NO_VALUE:
        context["value"] = value
    return PydanticCustomError(FIELD_ERROR, "{message}", context)


@dataclass(frozen=True)
class Problem:
    """One problem of a validation error."""

    loc: Loc
    """Where, as pydantic locates it (field names and list indexes)."""
    text: str
    """``trigger.safety_factor = 0.5: Input should be greater than or equal to 1``."""


def dotted(loc: Loc) -> str:
    """``cluster.nodes[0].role``; empty for the top level."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def allowed_keys(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    """The keys valid at ``loc`` inside ``model`` (list indexes skipped, excluded fields left out);
    empty when not known."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            return []
        current = model_in(field.annotation)
    if current is None:
        return []
    return sorted(name for name, field in current.model_fields.items() if not field.exclude)


def problems(err: ValidationError, model: type[BaseModel] | None = None) -> list[Problem]:
    """Every problem of ``err`` as one line; ``model`` (what was validated) names the keys an
    unknown key could have been."""
    out = []
    for problem in err.errors(include_url=False):
        loc = problem["loc"]
        value = problem.get("input")
        hidden = False
        if problem["type"] == FIELD_ERROR:
            context = problem.get("ctx") or {}
            loc = (*loc, *context.get("loc", ()))
            value = context.get("value", _NO_VALUE)
            hidden = value is _NO_VALUE
        where = dotted(loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            allowed = allowed_keys(model, loc[:-1])
            text = f"{where}: unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else "")
        elif problem["type"] == "missing":
            text = f"{where}: required field is missing"
        else:
            # Not shown: a whole document or section, or what Hecate's own errors (policy_*) already say.
            hidden = hidden or not loc or isinstance(value, (dict, list)) or problem["type"].startswith("policy_")
            text = f"{where}{'' if hidden else f' = {value!r}'}: {_message(problem['msg'])}"
        out.append(Problem(loc, text))
    return out


def _message(msg: str) -> str:
    for noise in _NOISE:
        msg = msg.removeprefix(noise)
    return msg
