"""Validation errors as people read them: where, the bad value, why -- one line per problem.

pydantic says *what* is wrong. hecate.yaml, a PowerPolicy and runs.json all need the same
more: *where*, as the dotted path one would write in YAML (``cluster.nodes[0].role``),
the value that was given, and for an unknown key the keys allowed there. This is the one
formatter for all three; each caller only adds where the document came from (a file, an
environment variable, a status condition). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from hecate.domain.reference import model_in

Loc = tuple[int | str, ...]


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
        where = dotted(loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            allowed = allowed_keys(model, loc[:-1])
            text = f"{where}: unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else "")
        elif problem["type"] == "missing":
            text = f"{where}: required field is missing"
        else:
            value = problem.get("input")
            # Not shown: a whole document or section, or what Hecate's own errors (policy_*) already say.
            hidden = not loc or isinstance(value, (dict, list)) or problem["type"].startswith("policy_")
            text = f"{where}{'' if hidden else f' = {value!r}'}: {problem['msg'].removeprefix('Value error, ')}"
        out.append(Problem(loc, text))
    return out
