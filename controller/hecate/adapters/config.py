"""Load ``hecate.yaml``: the YAML file first, then ``HECATE_*`` environment overrides.

pydantic-settings merges the two sources (nested keys with ``__``, e.g.
``HECATE_TRIGGER__SAFETY_FACTOR=1.3``; lists as JSON). What pydantic alone cannot do is
say *where* a bad value came from, so every failure here becomes one ``ConfigError``
whose message names the file (or the environment variable), the dotted field path, the
bad value and the reason -- the CLI prints it and exits 2, never a traceback.

Every ``HECATE_*`` variable is an override, except :data:`RESERVED_ENV` (not Hecate's
settings: the lab's, a script's): one that names no setting (``HECATE_TRIGER__SAFETY_FACTOR``)
is an error, as an unknown key in the file is -- pydantic-settings alone would ignore it.

:func:`check_files` is what ``hecate config validate`` and the daemon add: the secret
files and the state dir must be the owner's alone (``hecate.domain.permissions``).
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from hecate.adapters import yamlfile
from hecate.domain import permissions, validation
from hecate.domain.config import HecateConfig, deep_merge
from hecate.domain.reference import model_in

ENV_PREFIX = "HECATE_"
ENV_DELIMITER = "__"
DEFAULT_PATH = Path("/etc/hecate/hecate.yaml")
RESERVED_ENV: Final = ("HECATE_CONFIG", "HECATE_LAB_*")
"""``HECATE_*`` variables that are not configuration overrides (``*``: any ending):
``HECATE_CONFIG`` (the configuration file ``scripts/hecate-drills.sh`` passes to ``--config``)
and the lab's ``HECATE_LAB_DIR``, ``HECATE_LAB_NUT_BIN``, ..."""


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
    unknown = env_problems(env)
    if unknown:
        raise ConfigError("\n".join(unknown))
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


def _reserved(name: str) -> bool:
    upper = name.upper()
    return any(upper.startswith(r[:-1]) if r.endswith("*") else upper == r for r in RESERVED_ENV)


def env_problems(env: Mapping[str, str]) -> list[str]:
    """One line per ``HECATE_*`` variable that names no setting (reserved names aside).

    A variable may name a section (its value a JSON mapping) or a list (a JSON list), but
    not a key inside a list item: lists are set whole.
    """
    problems = []
    for name in sorted(env):
        if name.upper().startswith(ENV_PREFIX) and not _reserved(name):
            why = _not_a_setting(name[len(ENV_PREFIX):].lower().split(ENV_DELIMITER))
            if why:
                problems.append(f"environment {name}: {why}")
    return problems


def _variable(parts: list[str]) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(parts).upper()


def _not_a_setting(parts: list[str]) -> str | None:
    """Why ``parts`` (the lower-cased path of a variable) is not a setting; None when it is one."""
    model: type[Any] = HecateConfig
    path: list[str] = []
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = f"in {'.'.join(path)}" if path else "at the top level"
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = (f"did you mean {_variable([*path, close[0], *parts[i + 1:]])}?" if close
                    else f"allowed there: {', '.join(sorted(fields))}")
            return (f"unknown setting: no key {part!r} {where}; {hint} (every {ENV_PREFIX}* variable overrides "
                    f"a setting, except {' and '.join(RESERVED_ENV)})")
        path.append(part)
        if i == len(parts) - 1:
            return None
        annotation = fields[part].annotation
        nested = model_in(annotation)
        if typing.get_origin(annotation) is list:
            return f"{'.'.join(path)} is a list: it is set whole, as JSON, in {_variable(path)}"
        if nested is None:
            return f"{'.'.join(path)} is a single value: it is set in {_variable(path)}"
        model = nested
    return None


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


def check_files(config: HecateConfig) -> None:
    """Refuse secret files (SSH key, NUT credentials, peer secret) others may read, a known_hosts
    others may write, and a state dir that is not the owner's alone; ``ConfigError`` lists them all.

    Files that do not exist are not judged here (each is reported where it is used).
    """
    uid = os.geteuid()
    problems = []
    for field, path, kind in permissions.files_to_check(config):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            problems.append(f"{field}: cannot check {path}: {err.strerror or err}")
            continue
        problems += permissions.problems(field, str(path), kind, permissions.FileMode(st.st_mode, st.st_uid), uid)
    if problems:
        raise ConfigError("\n".join(problems))
