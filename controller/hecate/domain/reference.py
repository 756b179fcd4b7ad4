"""Markdown reference tables generated from the models' field docstrings.

The configuration and run-record references in docs/ are this module's output, and a
test keeps them in step, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[Node]`` or ``Path | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    """A field's type as the reference shows it: ``float \\| None``, an enum as its values, constraints
    (``Annotated[float, Field(gt=0)]``) as their type alone -- wherever they are nested."""
    return _plain_type(annotation).replace("|", "\\|")


def _plain_type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _plain_type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_plain_type(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(str(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_plain_type(arg) for arg in args)}]"
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " | ".join(str(m.value) for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field, nested sections expanded."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = model_in(field.annotation)
        is_list = str(field.annotation).startswith("list[")
        shown_type = f"list of {nested.__name__}" if nested and is_list else (
            "section" if nested else _type_name(field.annotation))
        out.append((key, shown_type, _default(field), field.description or ""))
        if nested is not None:
            out.extend(rows(nested, f"{key}[]." if is_list else f"{key}."))
    return out


def markdown_table(model: type[BaseModel]) -> str:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, type_name, default, description in rows(model):
        lines.append(f"| `{key}` | {type_name} | {default} | {description} |")
    return "\n".join(lines) + "\n"
