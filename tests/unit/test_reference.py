"""The reference tables' type column: what a reader of docs/configuration.md and docs/runs.md sees is the
type (``float | None``), never pydantic's internals (``Annotated[float, FieldInfo(...)]``), however nested."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from hecate.domain.config import HecateConfig
from hecate.domain.reference import rows
from hecate.domain.runs import RunRecord

Seconds = Annotated[float, Field(gt=0, le=86400)]


class Colour(StrEnum):
    red = "red"
    blue = "blue"


class Sample(BaseModel):
    limit: Seconds | None = None
    limits: list[Seconds] = Field(default_factory=list)
    bounded: Annotated[int, Field(ge=1)] = 1
    colour: Colour | None = None
    mode: Literal["wol", "command"] = "wol"
    extra: dict[str, Any] = Field(default_factory=dict)


def types_of(model: type[BaseModel]) -> dict[str, str]:
    return {key: type_name for key, type_name, _, _ in rows(model)}


def test_constraints_inside_unions_and_containers_show_as_their_type() -> None:
    assert types_of(Sample) == {
        "limit": "float \\| None",
        "limits": "list[float]",
        "bounded": "int",
        "colour": "red \\| blue \\| None",
        "mode": "wol \\| command",
        "extra": "dict[str, Any]",
    }


@pytest.mark.parametrize("model", [HecateConfig, RunRecord])
def test_no_generated_type_shows_pydantic_internals(model: type[BaseModel]) -> None:
    raw = {key: name for key, name in types_of(model).items()
           if any(word in name for word in ("FieldInfo", "Annotated", "Optional", "typing", "metadata"))}
    assert raw == {}
