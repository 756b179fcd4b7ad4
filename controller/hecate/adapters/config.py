"""Load ``hecate.yaml``: the YAML file first, then ``HECATE_*`` environment overrides.

pydantic-settings merges the two sources (nested keys with ``__``, e.g.
``HECATE_TRIGGER__SAFETY_FACTOR=1.3``; lists as JSON). What pydantic alone cannot do is
say *where* a bad value came from, so every failure here becomes one ``ConfigError``
whose message names the file (or the environment variable), the dotted field path, the
bad value and the reason -- the CLI prints it and exits 2, never a traceback.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from hecate.domain import reference
from hecate.domain.config import HecateConfig, deep_merge

ENV_PREFIX = "HECATE_"
ENV_DELIMITER = "__"
DEFAULT_PATH = Path("/etc/hecate/hecate.yaml")


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(err)`` is the whole readable message."""


class _Settings(HecateConfig, BaseSettings):
    """Carries the environment-source settings; validation itself uses ``HecateConfig``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid", frozen=True
    )


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' ``HECATE_*`` parsing, fed from a given mapping instead of os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = {k.lower(): v for k, v in environ.items()}
        super().__init__(_Settings, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is a ``ConfigError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of settings (key: value), "
            f"found {_yaml_kind(data)}"
        )
    return data


def load(path: Path = DEFAULT_PATH, environ: Mapping[str, str] | None = None) -> HecateConfig:
    """The validated configuration from ``path`` plus the environment overrides."""
    env = dict(os.environ if environ is None else environ)
    data = read_yaml_mapping(path)
    try:
        overrides = _EnvSource(env)()
    except ValueError as err:  # a list or mapping override that is not valid JSON
        field = re.search(r'field "([^"]+)"', str(err))
        var = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "HECATE_*"
        raise ConfigError(f"environment {var}: not valid JSON for a list or mapping setting") from None
    try:
        config = HecateConfig.model_validate(deep_merge(data, overrides))
    except ValidationError as err:
        raise ConfigError(_describe(err, path, _env_paths(env))) from None
    if config.host_name is None:
        config = config.model_copy(update={"host_name": socket.gethostname()})
    return config


def _env_paths(env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Map the dotted path each ``HECATE_*`` variable overrides to the variable's name."""
    paths: dict[tuple[str, ...], str] = {}
    for name in env:
        if name.upper().startswith(ENV_PREFIX):
            parts = name[len(ENV_PREFIX):].lower().split(ENV_DELIMITER)
            paths[tuple(parts)] = name
    return paths


def _describe(err: ValidationError, path: Path, overridden: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for problem in err.errors():
        loc = tuple(str(p) for p in problem["loc"])
        dotted = _dotted(problem["loc"]) or "(top level)"
        source = str(path)
        for env_path, var in overridden.items():
            if loc[: len(env_path)] == env_path:
                source = f"environment {var}"
                break
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(HecateConfig, problem["loc"][:-1])
            hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{source}: {dotted}: unknown key{hint}")
            continue
        if problem["type"] == "missing":
            lines.append(f"{source}: {dotted}: required field is missing")
            continue
        value = problem.get("input")
        shown = f" = {value!r}" if not isinstance(value, (dict, list)) else ""
        lines.append(f"{source}: {dotted}{shown}: {problem['msg']}")
    return "\n".join(lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at ``loc`` (list indexes are skipped); empty when unknown."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            return []
        current = reference.model_in(field.annotation)
    return sorted(current.model_fields) if current is not None else []


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r})"
