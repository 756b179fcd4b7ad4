"""YAML text in, data out: a syntax error says where, the same way for every file Hecate reads.

``hecate.yaml``, the policy cache and the bootstrap cache are YAML that people edit or a
power cut may tear. PyYAML's own message spans several lines and names ``<unicode
string>``; :class:`YamlSyntaxError` says ``<source>:<line>:<column>: YAML syntax error:
<problem>`` instead, as compilers do, so every caller can put it in one line.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlSyntaxError(ValueError):
    """Text that is not YAML; ``str(err)`` is ``<source>:<line>:<column>: YAML syntax error: <problem>``."""


def load(text: str, source: str) -> Any:
    """The one document in ``text`` (``source`` names it in errors: a path or a file name)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _located(err, source) from None


def load_all(text: str, source: str) -> list[Any]:
    """Every document in ``text``."""
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise _located(err, source) from None


def _located(err: yaml.YAMLError, source: str) -> YamlSyntaxError:
    mark = getattr(err, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    problem = getattr(err, "problem", None) or str(err)
    return YamlSyntaxError(f"{where}: YAML syntax error: {problem}")
