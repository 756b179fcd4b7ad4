"""The ``Table`` format (``meta.k8s.io/v1``): what ``kubectl get`` asks for and prints.

``kubectl get`` sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`` and
prints the columns the server chose; an API that answers with a plain list makes kubectl
fall back to ``NAME AGE``. For a custom resource the real API server builds the table
from the CRD's ``additionalPrinterColumns`` (``apiextensions-apiserver``'s table
convertor): a ``Name`` column first, then each printer column, the value found at its
``jsonPath`` -- dates as an age (``5m``), numbers and booleans as JSON values, strings
printed, a missing value ``null`` (kubectl leaves the cell blank) -- and, when a CRD has no
printer columns, an ``Age`` column (the API server's defaulting). These are those rules,
pure; the emulator picks the columns of the resource and serves the table. See
docs/lab-kubeapi.md.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hecate_lab.kubeapi.resources import parse_time

TABLE_MEDIA = re.compile(r"as=Table\b")
NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace."}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_SIMPLE_PATH = re.compile(r"^(\.[A-Za-z0-9_-]+)+$")


def wants_table(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for a ``Table`` first (kubectl lists plain JSON as its fallback)."""
    if not accept:
        return False
    first = accept.split(",")[0]
    return bool(TABLE_MEDIA.search(first)) and "g=meta.k8s.io" in first


def printer_columns(crd: Mapping[str, Any], version: str) -> list[dict[str, Any]]:
    """A served version's ``additionalPrinterColumns``; ``[Age]`` when it has none (as the API server defaults)."""
    for served in (crd.get("spec") or {}).get("versions") or []:
        if served.get("name") == version:
            columns = [dict(c) for c in served.get("additionalPrinterColumns") or []]
            for column in columns:
                if not _SIMPLE_PATH.match(str(column.get("jsonPath", ""))):
                    raise ValueError(f"printer column {column.get('name')!r}: only the simple .a.b.c jsonPath form "
                                     f"is served by the lab, not {column.get('jsonPath')!r}")
            return columns or [dict(AGE_COLUMN)]
    return [dict(AGE_COLUMN)]


def find(obj: Any, path: str) -> tuple[bool, Any]:
    """The value at a simple jsonPath (``.status.ups.state``): (found, value)."""
    node = obj
    for part in path.lstrip(".").split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def human_duration(seconds: float) -> str:
    """An age as kubectl prints it (apimachinery's ``duration.HumanDuration``): ``45s``, ``3m20s``, ``5h``, ``2d3h``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _printed(value: Any) -> str:
    """A value as Go's jsonpath printer writes it into a string column."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def cell(column: Mapping[str, Any], value: Any, now: dt.datetime) -> Any:
    """One cell of a printer column (the API server's ``cellForJSONValue``); None prints blank."""
    kind = column.get("type")
    if value is None:
        return None
    if kind == "string":
        return _printed(value)
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        when = parse_time(value)
        return "<invalid>" if when is None else human_duration((now - when).total_seconds())
    return None


def _definition(column: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": column["name"], "type": column.get("type", "string"), "format": column.get("format", ""),
            "description": column.get("description", ""), "priority": int(column.get("priority", 0))}


def _row_object(obj: Mapping[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return dict(obj)
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def table(objects: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]], resource_version: str,
          now: dt.datetime, include_object: str | None = None) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` ``Table`` of objects (``includeObject``: ``None``, ``Object``, default metadata only)."""
    rows = []
    for obj in objects:
        cells: list[Any] = [(obj.get("metadata") or {}).get("name")]
        for column in columns:
            found, value = find(obj, str(column["jsonPath"]))
            cells.append(cell(column, value, now) if found else None)
        row: dict[str, Any] = {"cells": cells}
        partial = _row_object(obj, include_object or "Metadata")
        if partial is not None:
            row["object"] = partial
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [NAME_COLUMN, *(_definition(c) for c in columns)], "rows": rows}
