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

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from hecate.adapters import yamlfile
from hecate.domain import validation
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
        data = yamlfile.load(text, str(path))
    except yamlfile.YamlSyntaxError as err:
        raise ConfigError(str(err)) from None
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
    """One line per problem, each naming where the bad value came from: the file or a variable."""
    lines = []
    for problem in validation.problems(err, HecateConfig):
        loc = tuple(str(p) for p in problem.loc)
        source = next((f"environment {var}" for env_path, var in overridden.items()
                       if loc[: len(env_path)] == env_path), str(path))
        lines.append(f"{source}: {problem.text}")
    return "\n".join(lines)


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r})"
