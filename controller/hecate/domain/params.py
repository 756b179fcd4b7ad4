"""Typed step parameters: what each plan action needs beyond its target.

The plan builders (``hecate.domain.plan``) fill these from the configuration, so an
action reads ``step.params_as(DrainParams).timeout_s`` instead of a key of a free dict.
They are frozen values: a plan stays data, printed by a dry-run and written into the
journal. In the journal they are plain JSON objects with the keys earlier versions
wrote (``drain_timeout_s``, ``command_timeout_s``...), so a journal left by one of
those still resumes. Purely computational.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from hecate.domain.config import Wake


@dataclass(frozen=True)
class NoParams:
    """The action needs nothing but its target (written as ``{}``)."""


@dataclass(frozen=True)
class ScaleParams:
    """scale-down and restore: the workloads of one tier (an empty selector: whatever Hecate scaled)."""

    selector: str
    namespace: str | None = None


@dataclass(frozen=True)
class WaitParams:
    """A wait bounded by its own timeout (volume attachments, the API, a node Ready)."""

    timeout_s: float


@dataclass(frozen=True)
class HostCommandParams:
    """A command the coordinator runs itself (a storage hook, its own power-off)."""

    argv: tuple[str, ...]


@dataclass(frozen=True)
class DrainParams:
    timeout_s: Annotated[float, Field(alias="drain_timeout_s")]
    """Give up on evictions blocked by PodDisruptionBudgets after this long."""


@dataclass(frozen=True)
class NodeCommandParams:
    """A command run on a node over SSH (k3s-killall.sh)."""

    command_timeout_s: float


@dataclass(frozen=True)
class StopServiceParams:
    unit: str
    command_timeout_s: float


@dataclass(frozen=True)
class PoweroffParams:
    command: str
    command_timeout_s: float


@dataclass(frozen=True)
class HostStopParams:
    """A ``hosts:`` machine's stop commands (argv lists), run over SSH in order."""

    commands: tuple[tuple[str, ...], ...]
    command_timeout_s: float


@dataclass(frozen=True)
class PreflightParams:
    min_charge_percent: float
    timeout_s: float


@dataclass(frozen=True)
class WakeParams:
    method: Wake
    mac: str | None
    argv: tuple[str, ...]
    """The host's wake command for this node (``{node}`` already substituted)."""
    wait_s: float = 0.0
    """Then wait this long for its sshd to answer (a ``hosts:`` machine with ``wait_ssh``); 0: do not wait."""


@dataclass(frozen=True)
class StartServiceParams:
    unit: str
    boot_timeout_s: float
    """Longest to wait for the node's sshd to answer."""
    command_timeout_s: float


@dataclass(frozen=True)
class WorkloadParams:
    """A foundation workload: wait until available, recover it after ``recovery_after_s``."""

    timeout_s: float
    recovery_after_s: float
    manifests_dir: str


@dataclass(frozen=True)
class FluxResumeParams:
    force_branch: str | None = None


@dataclass(frozen=True)
class FluxBootstrapParams:
    fallback: bool
    detection_window_s: float
    ready_timeout_s: float
    gitea_workload: str
    branch: str | None
    manifests_dir: str


@dataclass(frozen=True)
class VerifyParams:
    timeout_s: float
    nodes: tuple[str, ...]
    foundation: tuple[str, ...]
    git_repository: str
    """``namespace/name`` of the GitRepository."""


StepParams = (NoParams | ScaleParams | WaitParams | HostCommandParams | DrainParams | NodeCommandParams
              | StopServiceParams | HostStopParams | PoweroffParams | PreflightParams | WakeParams | StartServiceParams
              | WorkloadParams | FluxResumeParams | FluxBootstrapParams | VerifyParams)

_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(kind: type[Any]) -> TypeAdapter[Any]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def to_dict(params: StepParams) -> dict[str, Any]:
    """The journal's (and a dry-run's JSON) form of ``params``."""
    data: dict[str, Any] = _adapter(type(params)).dump_python(params, mode="json", by_alias=True)
    return data


def from_dict(kind: type[StepParams], data: dict[str, Any]) -> StepParams:
    """Read back what :func:`to_dict` wrote for an action whose parameters are ``kind``.

    ``{}`` is :class:`NoParams` whatever the action; a ``ValueError`` when the data does not fit.
    """
    if not data:
        return NoParams()
    params: StepParams = _adapter(kind).validate_python(data)
    return params
