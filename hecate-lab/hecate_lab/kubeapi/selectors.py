"""Label and field selectors on list and watch, as the Kubernetes API reads them.

kmock ignores ``labelSelector`` and ``fieldSelector``; the emulator filters with these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    terms: list[str] = []
    depth, current = 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    terms.append(current.strip())
    return [t for t in terms if t]


_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_EQ_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)$")
_KEY_TERM = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def match_label_selector(labels: Mapping[str, str] | None, selector: str | None) -> bool:
    """Whether the labels satisfy a Kubernetes label selector string; ValueError if malformed."""
    labels = labels or {}
    for term in _split_selector(selector or ""):
        if m := _SET_TERM.match(term):
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            inside = labels.get(m["key"]) in values
            if inside != (m["op"] == "in"):
                return False
        elif m := _EQ_TERM.match(term):
            equal = m["key"] in labels and labels[m["key"]] == m["value"]
            if equal != (m["op"] != "!="):
                return False
        elif m := _KEY_TERM.match(term):
            if (m["key"] in labels) == bool(m["neg"]):
                return False
        else:
            raise ValueError(f"invalid label selector term: {term!r}")
    return True


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def match_field_selector(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Whether the object satisfies a field selector (``a.b=v``, ``a.b==v``, ``a.b!=v``)."""
    for term in _split_selector(selector or ""):
        m = _EQ_TERM.match(term)
        if not m:
            raise ValueError(f"invalid field selector term: {term!r}")
        equal = _field_value(obj, m["key"]) == m["value"]
        if equal != (m["op"] != "!="):
            return False
    return True
