"""The shape of ``hecate.yaml``: host settings plus the baseline power policy.

This module only describes and validates; it never reads files or the environment
(``hecate.adapters.config`` does that). Every section is a frozen pydantic model that
forbids unknown keys, so a typo in the file is an error rather than a silently ignored
setting, and every field carries a default where one makes sense and a one-line
description -- the configuration reference (docs/configuration.md) is generated from them.

The trigger, shutdown, startup and flux sections are also the vocabulary of the
``PowerPolicy`` custom resource, which is validated with the same models.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hecate.domain import kubeobjects, validation

Seconds = Annotated[float, Field(gt=0, le=86_400)]


def deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge: mappings merged key by key, the overlay wins, everything else (lists too) replaced.

    How environment overrides lie over hecate.yaml, and a PowerPolicy over the host's config.
    """
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _unique(names: list[str], what: str, field: str | None = None) -> None:
    """Refuse the first repeated name, located at its item (``[2]``, or ``[2].name`` with ``field``)."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            loc: validation.Loc = (i,) if field is None else (i, field)
            raise validation.field_error(loc, f"{what} must be unique: item {first[name]} has it too", name)
        first[name] = i


def _each(values: list[str], check: Callable[[str], object]) -> None:
    """Run ``check`` on every item; its ValueError is located at the item (``startup.foundation[2]``)."""
    for i, value in enumerate(values):
        try:
            check(value)
        except ValueError as err:
            why = str(err).removeprefix(repr(value)).lstrip(": ")
            raise validation.field_error((i,), why, value) from None


_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def host_address(value: str) -> str:
    """``value`` if it is an IPv4 or IPv6 address or a DNS name (RFC 1123), else ValueError saying why.

    A mistyped address must fail ``hecate config validate``, not the first power cut.
    """
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):
        raise ValueError("an IPv6 address is written without brackets")
    name = value.removesuffix(".")
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        raise ValueError("not a valid IPv4 address")
    if len(name) > 253:
        raise ValueError("not a DNS name: longer than 253 characters")
    bad = next((label for label in labels if not _DNS_LABEL.match(label)), None)
    if bad is not None:
        where = "" if bad == name else f" ({bad!r} is not a label)"
        raise ValueError(f"not an IP address or a DNS name{where}: a DNS name is labels of 1-63 letters, digits "
                         "and hyphens, separated by dots, none starting or ending with a hyphen (RFC 1123)")
    return value


WORKLOAD_KINDS = tuple(k.lower() for k in kubeobjects.WORKLOAD_KINDS)
"""Kinds ``startup.foundation`` and ``flux.gitea_workload`` may name, as the configuration writes them."""
CACHEABLE_KINDS = tuple(k.lower() for k in kubeobjects.CACHEABLE_KINDS)
"""Kinds ``flux.bootstrap_objects`` may name (no Secrets: they survive an outage in etcd)."""


def _workload_ref(ref: str) -> None:
    """``namespace/kind/name`` of a workload (e.g. ``gitea/deployment/gitea``), the kind in any case."""
    _, kind, _ = kubeobjects.split_ref(ref)
    if kind.lower() not in WORKLOAD_KINDS:
        raise ValueError(f"{ref!r}: kind must be one of {', '.join(WORKLOAD_KINDS)}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Role(StrEnum):
    coordinator = "coordinator"
    peer = "peer"


class NodeRole(StrEnum):
    server = "server"
    agent = "agent"


class Wake(StrEnum):
    none = "none"
    wol = "wol"
    command = "command"


class Node(_Section):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Kubernetes node name (also used in logs and run records)."""
    address: str = Field(min_length=1)
    """Address Hecate reaches the node's sshd on: an IPv4 or IPv6 address or a DNS name (checked)."""
    role: NodeRole
    """`server` runs the `k3s` unit, `agent` runs `k3s-agent`."""
    ssh_user: str | None = None
    """SSH user for this node; defaults to `ssh.user`."""
    ssh_port: int = Field(default=22, ge=1, le=65535)
    """SSH port of this node."""
    poweroff_order: int = Field(default=100, ge=0)
    """Power-off order within its role: lower goes first."""
    wake_mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    """MAC address for Wake-on-LAN at startup (optional)."""

    _address = field_validator("address")(host_address)


class Cluster(_Section):
    kubeconfig: Path = Path("/etc/rancher/k3s/k3s.yaml")
    """Kubeconfig Hecate uses to reach the API server."""
    api_timeout_s: Seconds = 10.0
    """Timeout of each Kubernetes API call."""
    nodes: list[Node] = Field(default_factory=list)
    """Every k3s node Hecate stops, starts and powers off."""

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, value: list[Node]) -> list[Node]:
        _unique([n.name for n in value], "node names", "name")
        return value


class Ssh(_Section):
    user: str = "root"
    """Default SSH user for nodes."""
    key_file: Path = Path("/etc/hecate/id_ed25519")
    """Private key Hecate authenticates with."""
    known_hosts: Path = Path("/etc/hecate/known_hosts")
    """Host keys are verified against this file; unknown hosts are refused."""
    connect_timeout_s: Seconds = 10.0
    """TCP connect, banner and authentication timeout."""
    command_timeout_s: Seconds = 120.0
    """Longest a single remote command may run."""
    sudo: bool = False
    """Prefix remote commands with `sudo -n`."""


class Ups(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """UPS name as upsd knows it (the part before `@`)."""
    host: str = "127.0.0.1"
    """Host upsd listens on: an IPv4 or IPv6 address or a DNS name (checked)."""
    port: int = Field(default=3493, ge=1, le=65535)
    """upsd TCP port."""
    credentials_file: Path | None = None
    """File with `username:password` for upsd (only needed for instant commands and `set_fsd`)."""
    protects_cluster: bool = True
    """Whether this UPS feeds the cluster; only such UPSes can trigger a shutdown."""
    set_fsd: bool = False
    """When Hecate decides to shut down, set FSD on this UPS in upsd first (as a NUT primary does), so every
    `upsmon` secondary of it on other machines shuts down by NUT's own rules. Only on a UPS that protects the
    cluster; needs `credentials_file` with a user that has `upsmon primary` in upsd.users."""

    _host = field_validator("host")(host_address)

    @model_validator(mode="after")
    def _fsd_needs_login(self) -> Ups:
        if self.set_fsd and self.credentials_file is None:
            raise ValueError(f"ups {self.name}: set_fsd needs credentials_file (a upsd user with `upsmon primary`)")
        return self


_ARG = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _argv(argv: list[str]) -> None:
    """A command as an argv list: not empty, no empty argument, no control characters."""
    if not argv:
        raise ValueError("a command needs at least its program")
    bad = next((a for a in argv if not _ARG.match(a)), None)
    if bad is not None:
        raise ValueError(f"argument {bad!r} is empty or has control characters")


class Host(_Section):
    """A machine outside the cluster (a NAS, the peer host) Hecate stops and powers off over SSH (docs/shutdown.md)."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Host name in plans, logs and run records (unique across nodes and hosts)."""
    address: str = Field(min_length=1)
    """Address Hecate reaches the host's sshd on: an IPv4 or IPv6 address or a DNS name (checked)."""
    ssh_user: str | None = None
    """SSH user for this host; defaults to `ssh.user`."""
    ssh_port: int = Field(default=22, ge=1, le=65535)
    """SSH port of this host."""
    poweroff_order: int = Field(default=100, ge=0)
    """Power-off order among the hosts (after the cluster's nodes, before the coordinator): lower goes first."""
    stop_commands: list[list[str]] = Field(default_factory=list)
    """Commands (argv lists, no shell; `sudo -n` first when `ssh.sudo`) run in order before the power-off."""
    poweroff: bool = True
    """Power the host off (`shutdown.remote_poweroff_command`) after its stop commands."""
    wake: Wake = Wake.none
    """How startup wakes the host when its sshd does not answer: none, Wake-on-LAN or a host command."""
    wake_mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    """MAC address for `wake: wol`."""
    wake_command: list[str] = Field(default_factory=list)
    """Command (argv, `{host}` substituted) the coordinator runs for `wake: command`."""
    wait_ssh: bool = False
    """Startup waits (up to `startup.boot_timeout_s`) until the host's sshd answers."""
    before_cluster: bool = True
    """Woken (and waited for) before the cluster's servers start, e.g. a NAS serving their storage; false: after
    the cluster is up."""

    _address = field_validator("address")(host_address)

    @field_validator("stop_commands")
    @classmethod
    def _commands(cls, value: list[list[str]]) -> list[list[str]]:
        for i, argv in enumerate(value):
            try:
                _argv(argv)
            except ValueError as err:
                raise validation.field_error((i,), str(err), argv) from None
        return value

    @model_validator(mode="after")
    def _wake(self) -> Host:
        if self.wake is Wake.wol and self.wake_mac is None:
            raise validation.field_error(("wake",), "needs wake_mac (the host's MAC address)", self.wake.value)
        if self.wake is Wake.command and not self.wake_command:
            raise validation.field_error(("wake",), "needs wake_command (the command to run)", self.wake.value)
        return self


class Trigger(_Section):
    poll_interval_s: Seconds = 1.0
    """Poll interval while every UPS is on mains."""
    poll_interval_on_battery_s: Seconds = 1.0
    """Poll interval while any UPS is on battery."""
    debounce_polls: int = Field(default=3, ge=1, le=100)
    """Consecutive polls below the threshold before shutting down."""
    safety_factor: float = Field(default=1.10, ge=1.0, le=10.0)
    """Shut down when runtime <= safety_factor x shutdown budget."""
    default_budget_s: Seconds = 300.0
    """Shutdown budget used until Hecate has measured its own shutdowns; the learned budget starts from it."""
    budget_history: int = Field(default=5, ge=1, le=100)
    """How many recent complete shutdowns the budget heads for (the longest of them; one shorter run moves it at
    most halfway down)."""
    min_budget_s: Seconds = 60.0
    """Floor under the learned budget: the threshold is never below this plus a fixed 30 s margin, however short
    the recorded shutdowns (a fifth of the default budget; host only, a PowerPolicy cannot set it)."""
    deadtime_s: Seconds = 15.0
    """A UPS last seen on battery and silent this long counts as critical (NUT DEADTIME)."""
    charge_floor_pct: float | None = Field(default=None, ge=0, le=95)
    """Optional trigger (apcupsd's BATTERYLEVEL): on battery, `battery.charge` at or below this for `debounce_polls`
    polls shuts down; off when unset."""
    max_on_battery_s: Seconds | None = None
    """Optional trigger (apcupsd's TIMEOUT): on battery this long, from the outage's first on-battery poll, shuts
    down (debounced like the others); off when unset."""
    max_plausible_runtime_s: Seconds = 86_400.0
    """A `battery.runtime` above this (or at 65535, an unset register) is not trusted (host only)."""
    runtime_zero_charge_pct: float = Field(default=50.0, ge=1, le=100)
    """A `battery.runtime` of 0 with the charge at or above this is not trusted (firmware without an estimate; host
    only)."""
    runtime_frozen_polls: int = Field(default=5, ge=2, le=1000)
    """A `battery.runtime` unchanged this many polls on battery while the charge fell 5 points is frozen, not trusted;
    a new level after a `rising` one that holds this many polls becomes the trusted reference (host only)."""


class StorageQuiesce(_Section):
    enabled: bool = False
    """Wait for VolumeAttachments to go and run the host hooks before draining."""
    timeout_s: Seconds = 120.0
    """How long to wait for volumes to detach."""
    hooks: list[list[str]] = Field(default_factory=list)
    """Host commands (argv lists) run on the coordinator, e.g. Ceph noout. Host config only."""


class WorkloadTier(_Section):
    name: str = Field(min_length=1)
    """Tier name shown in plans and run records."""
    namespace: str | None = None
    """Namespace to select in; all namespaces when empty."""
    selector: str = Field(min_length=1)
    """Label selector of the Deployments/StatefulSets this tier scales to zero."""


class Shutdown(_Section):
    execute: bool = False
    """The daemon runs the shutdown plan when the decision falls; false records a dry-run."""
    parallelism: int = Field(default=16, ge=1, le=1024)
    """Most nodes acted on at once within a stage."""
    flux_suspend: bool = True
    """Suspend Flux Kustomizations and HelmReleases first."""
    scale_down: list[WorkloadTier] = Field(default_factory=list)
    """Workload tiers scaled to zero, in order."""
    drain_timeout_s: Seconds = 120.0
    """Give up on evictions blocked by PodDisruptionBudgets after this long."""
    storage_quiesce: StorageQuiesce = Field(default_factory=StorageQuiesce)
    """Optional storage quiesce stage."""
    stop_servers_one_by_one: bool = True
    """Stop k3s servers in power-off order rather than all at once."""
    remote_poweroff_command: str = Field(default="systemctl poweroff", pattern=r"^[A-Za-z0-9 /._=+-]+$")
    """Command run on each node over SSH to power it off (one command: no shell operators, so `sudo` covers it)."""
    local_poweroff_command: list[str] = Field(default_factory=lambda: ["systemctl", "poweroff"])
    """Command (argv) the coordinator runs to power itself off, last."""
    ups_power_cycle: bool = False
    """Ask upsd to cut and restore outputs so machines boot when mains returns."""
    stage_timeout_s: Seconds = 300.0
    """Deadline of any single stage (a later wave, e.g. the servers' power-off, still gets its own steps' time)."""

    @field_validator("scale_down")
    @classmethod
    def _unique_tiers(cls, value: list[WorkloadTier]) -> list[WorkloadTier]:
        _unique([t.name for t in value], "tier names", "name")
        return value


class Startup(_Section):
    min_charge_percent: float = Field(default=50.0, ge=0, le=100)
    """Preflight waits until UPS charge reaches this."""
    preflight_timeout_s: Seconds = 1800.0
    """Longest preflight waits for mains and charge."""
    wake: Wake = Wake.none
    """How powered-off nodes are woken: none, Wake-on-LAN, or a host command."""
    wake_command: list[str] = Field(default_factory=list)
    """Host command (argv, `{node}` substituted) for `wake: command`."""
    api_timeout_s: Seconds = 300.0
    """Longest to wait for the API server after starting the first server."""
    node_ready_timeout_s: Seconds = 300.0
    """Longest to wait for nodes to become Ready."""
    foundation: list[str] = Field(default_factory=list)
    """Workloads (`namespace/kind/name`) that must be available before Flux resumes."""
    foundation_timeout_s: Seconds = 600.0
    """Longest to wait for foundation workloads, recovery included."""
    recovery_after_s: Seconds = 60.0
    """A foundation workload still unavailable this long is recovered (stuck pods restarted, cache applied)."""
    boot_timeout_s: Seconds = 600.0
    """Longest to wait for a node's sshd to answer after power returns (or after a wake)."""
    verify_timeout_s: Seconds = 300.0
    """Longest the final verify stage waits for nodes, Flux and foundation to converge."""
    parallelism: int = Field(default=16, ge=1, le=1024)
    """Most nodes acted on at once within a stage."""

    @field_validator("foundation")
    @classmethod
    def _workload_refs(cls, value: list[str]) -> list[str]:
        _each(value, _workload_ref)
        _unique(value, "foundation workloads")
        return value


class Flux(_Section):
    namespace: str = "flux-system"
    """Namespace of the Flux objects."""
    git_repository: str = "flux-system"
    """GitRepository Flux bootstraps from."""
    gitea_workload: str = "gitea/deployment/gitea"
    """The in-cluster git server (`namespace/kind/name`) Flux pulls from."""
    fallback_manifests_dir: Path = Path("/var/lib/hecate/bootstrap")
    """Cached bootstrap manifests applied when Flux and Gitea deadlock."""
    detection_window_s: Seconds = 120.0
    """How long the deadlock must persist before the fallback breaks it."""
    fallback_branch: str | None = None
    """Branch to point the GitRepository at when breaking the deadlock (host config only, never a PowerPolicy)."""
    bootstrap_fallback: bool = True
    """Break the Flux/Gitea deadlock by applying the cached manifests (false: only wait and report)."""
    bootstrap_objects: list[str] = Field(default_factory=list)
    """Objects (`namespace/kind/name`) the daemon caches while the cluster is healthy, for the fallback."""
    cache_refresh_interval_s: Seconds = 3600.0
    """How often the daemon refreshes the cached bootstrap manifests (only while Flux is Ready)."""
    ready_timeout_s: Seconds = 600.0
    """Longest startup waits for the GitRepository and Kustomizations to become Ready."""

    @field_validator("gitea_workload")
    @classmethod
    def _gitea_ref(cls, value: str) -> str:
        _workload_ref(value)
        return value

    @field_validator("bootstrap_objects")
    @classmethod
    def _object_refs(cls, value: list[str]) -> list[str]:
        _each(value, lambda ref: kubeobjects.parse_ref(ref, kubeobjects.CACHEABLE_KINDS))
        _unique(value, "bootstrap objects")
        return value


class TrustedPeer(_Section):
    """A peer host the coordinator accepts signed triggers from (docs/peers.md)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
    """The peer's name, as its triggers name it (its `host_name`)."""
    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """The key id its requests carry; a rotation adds a second entry for the same peer with a new id."""
    secret_file: Path
    """Root-only file holding the shared HMAC secret for this key id."""


class Peer(_Section):
    # On a peer (`role: peer`): where and how it forwards its decision.
    coordinator_url: str | None = Field(default=None, pattern=r"^https?://")
    """Coordinator's trigger listener a peer forwards its shutdown trigger to (`http://titan-db:9561`)."""
    key_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """The key id a peer signs with (one of the coordinator's `peer.trusted[].key_id`)."""
    secret_file: Path | None = None
    """Shared HMAC secret a peer signs with (a root-only file, never argv)."""
    forward_for_s: Seconds = 60.0
    """How long a peer keeps retrying (with backoff) before it gives up forwarding and falls back."""
    fallback_local_shutdown: bool = True
    """Shut this host down locally if forwarding fails."""
    # On the coordinator: the listener peers reach and who may trigger.
    listen: str | None = Field(default=None, pattern=r"^[^\s]*:\d{1,5}$")
    """Address of the trigger listener (`POST /v1/trigger` only), e.g. `"0.0.0.0:9561"`; off when unset."""
    trusted: list[TrustedPeer] = Field(default_factory=list)
    """The peers whose signed triggers the coordinator accepts."""
    replay_window_s: Seconds = 30.0
    """Accepted clock skew and nonce memory for signed requests."""

    @field_validator("trusted")
    @classmethod
    def _unique_keys(cls, value: list[TrustedPeer]) -> list[TrustedPeer]:
        _unique([t.key_id for t in value], "key ids", "key_id")
        return value


UNIX_SOCKET_PATH_MAX = 107
"""Bytes a unix socket path may have on Linux (``sun_path`` is 108 with its NUL)."""


class Metrics(_Section):
    listen: str = Field(default="127.0.0.1:9560", pattern=r"^[^\s]*:\d{1,5}$")
    """HTTP server (/metrics, /healthz, /readyz, /v1/status); `":9560"` or a LAN address opens it to the network."""
    socket: Path = Path("/run/hecate/hecate.sock")
    """Root-only unix socket (dir 0700, socket 0600), same endpoints; `hecate status` asks the daemon here."""

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        if not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError("port must be 1-65535")
        return value

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        if len(str(value).encode()) > UNIX_SOCKET_PATH_MAX:
            raise ValueError(f"a unix socket path has at most {UNIX_SOCKET_PATH_MAX} bytes")
        return value

    @property
    def bind(self) -> tuple[str, int]:
        """(host, port) to bind: ``":9560"`` -> ``("0.0.0.0", 9560)``, ``"[::1]:9560"`` -> ``("::1", 9560)``."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    def local_url(self, path: str) -> str:
        """The URL this host reaches its own server on."""
        host, port = self.bind
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


POLICY_SECTIONS: Mapping[str, type[BaseModel]] = {"trigger": Trigger, "shutdown": Shutdown, "startup": Startup,
                                                  "flux": Flux}
"""The sections a PowerPolicy overlays (besides ``ups``), for ``policy.envelope.locked``."""


def _policy_path_exists(path: str) -> bool:
    """Whether ``path`` (``ups``, ``trigger``, ``shutdown.storage_quiesce.timeout_s``) names a section or
    field a PowerPolicy overlays."""
    if path == "ups":
        return True
    first, *rest = path.split(".")
    model: type[BaseModel] | None = POLICY_SECTIONS.get(first)
    if model is None:
        return False
    for part in rest:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


class Envelope(_Section):
    """What a PowerPolicy may set, and within which limits (docs/operator.md)."""

    locked: list[str] = Field(default_factory=list)
    """Fields (`trigger.safety_factor`, `ups`) or whole sections (`startup`) a PowerPolicy may not set at all."""
    min_poll_interval_s: Seconds = 0.5
    """Shortest `trigger.poll_interval_s` / `poll_interval_on_battery_s` a policy may set (faster floods upsd)."""
    max_poll_interval_s: Seconds = 5.0
    """Longest poll interval (either) a policy may set: the monitor must see an outage within seconds."""
    min_deadtime_s: Seconds = 10.0
    """Shortest `trigger.deadtime_s`: two polls at the longest interval; shorter powers off on one missed read."""
    max_deadtime_s: Seconds = 60.0
    """Longest `trigger.deadtime_s`: a UPS gone silent on battery must count as critical within a minute."""
    min_debounce_polls: int = Field(default=2, ge=1, le=100)
    """Fewest `trigger.debounce_polls`: one reading below the threshold never shuts down on its own."""
    max_debounce_polls: int = Field(default=10, ge=1, le=100)
    """Most `trigger.debounce_polls`: at most 10 polls between crossing the threshold and shutting down."""
    min_safety_factor: float = Field(default=1.0, ge=1.0, le=10.0)
    """Smallest `trigger.safety_factor` (1.0: the battery must still cover the whole budget)."""
    max_safety_factor: float = Field(default=3.0, ge=1.0, le=10.0)
    """Largest `trigger.safety_factor`: with more, a healthy battery already reads as "shut down now"."""
    min_default_budget_s: Seconds = 60.0
    """Smallest `trigger.default_budget_s`: no cluster drains, stops and powers off in less than a minute."""
    max_default_budget_s: Seconds = 900.0
    """Largest `trigger.default_budget_s` (x 3, the largest safety factor: a threshold of 45 min of runtime)."""
    min_budget_history: int = Field(default=3, ge=1, le=100)
    """Fewest `trigger.budget_history`: one fast shutdown (nothing to drain) must not set the budget alone."""
    min_timeout_fraction: float = Field(default=0.5, gt=0, le=1)
    """A policy's timeout or wait lies between this fraction of hecate.yaml's value and that value."""
    min_cache_refresh_interval_s: Seconds = 60.0
    """Shortest `flux.cache_refresh_interval_s` a policy may set (shorter floods the API and the log)."""
    min_startup_charge_percent: float = Field(default=20.0, ge=0, le=100)
    """Lowest `startup.min_charge_percent`: a cut soon after a start must still find runtime for a shutdown."""
    max_charge_floor_pct: float = Field(default=60.0, ge=0, le=95)
    """Highest `trigger.charge_floor_pct` a policy may set: above it any outage powers the cluster off soon after
    it starts. When hecate.yaml sets a floor, a policy may only raise it (up to this)."""
    min_on_battery_limit_s: Seconds = 120.0
    """Shortest `trigger.max_on_battery_s` a policy may set: shorter, a blip powers the cluster off. When
    hecate.yaml sets a time, a policy may only shorten it (down to this)."""

    @field_validator("locked")
    @classmethod
    def _known_paths(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if not _policy_path_exists(p)]
        if unknown:
            raise ValueError(f"not a PowerPolicy section or field: {', '.join(unknown)} (e.g. ups, trigger, "
                             "trigger.safety_factor, shutdown.storage_quiesce.timeout_s)")
        _unique(value, "locked fields")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Envelope:
        for low, high in (("min_poll_interval_s", "max_poll_interval_s"), ("min_deadtime_s", "max_deadtime_s"),
                          ("min_debounce_polls", "max_debounce_polls"), ("min_safety_factor", "max_safety_factor"),
                          ("min_default_budget_s", "max_default_budget_s")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low):g}) is above {high} ({getattr(self, high):g})")
        return self


class Policy(_Section):
    name: str | None = None
    """Name of the cluster-scoped PowerPolicy the embedded operator watches."""
    envelope: Envelope = Field(default_factory=Envelope)
    """What a PowerPolicy may set and within which limits; hecate.yaml's own values are not bound by it."""


_UNIT = re.compile(r"^[A-Za-z0-9:_.@-]+\.service$")
_GIT_URL = re.compile(r"^(https?|ssh|file)://[^\s@/]*@?[^\s@]+$")
_REQUIREMENT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?\s*(?:[<>=!~]=?\s*[A-Za-z0-9.*+!-]+"
                          r"(?:\s*,\s*[<>=!~]=?\s*[A-Za-z0-9.*+!-]+)*)?$")


class Update(_Section):
    """Where `hecate self-update` takes new releases from, and where it puts them (docs/update.md)."""

    spec: str | None = None
    """Package index source: a requirement such as `hecate` or `hecate>=0.2,<0.3` (neither this nor `git_url`: off)."""
    git_url: str | None = None
    """Git source instead of an index: the remote pip clones (`https://`, `ssh://`, `file://`)."""
    git_ref: str = Field(default="main", min_length=1, pattern=r"^[A-Za-z0-9._/-]+$")
    """Branch, tag or commit of `git_url` to install."""
    index_url: str | None = Field(default=None, pattern=r"^(https?|file)://\S+$")
    """Package index pip asks instead of PyPI (`--index-url`)."""
    find_links: list[str] = Field(default_factory=list)
    """Directories or URLs of wheels pip looks in too (`--find-links`), e.g. an offline wheelhouse."""
    no_index: bool = False
    """Ask no index at all, only `find_links` (`--no-index`): offline updates."""
    prefix: Path = Path("/opt/hecate")
    """Where the releases live: `releases/<version>-<UTC stamp>/` venvs, `current` and `previous` links."""
    python: Path = Path("/usr/bin/python3")
    """The interpreter new release venvs are built with (`python -m venv`)."""
    unit: str = "hecate.service"
    """The daemon's systemd unit, restarted onto a new release when it is active."""
    bootstrap_unit: str = "hecate-bootstrap.service"
    """The boot-time startup unit: no update while it is activating (a startup is running)."""
    systemctl: list[str] = Field(default_factory=lambda: ["systemctl"], min_length=1)
    """The systemctl command (argv) that restarts and inspects the units."""
    ready_timeout_s: Seconds = 120.0
    """Longest the restarted daemon may take to report ready (`READY=1`) before the update is rolled back."""
    settle_s: float = Field(default=10.0, ge=0, le=600)
    """How long the restarted daemon must then stay active (same process, no restart) to count as good."""
    build_timeout_s: Seconds = 900.0
    """Longest building and checking a new release may take (venv, pip install, the checks)."""
    keep_releases: int = Field(default=2, ge=2, le=20)
    """Releases kept: the current one, the previous one (for roll-back) and, above 2, older ones."""

    @field_validator("spec")
    @classmethod
    def _requirement(cls, value: str | None) -> str | None:
        if value is not None and not _REQUIREMENT.match(value):
            raise ValueError("not a requirement: a package name with optional version specifiers, e.g. `hecate` "
                             "or `hecate>=0.2,<0.3` (no URL, marker or pip option: use git_url for git)")
        return value

    @field_validator("git_url")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        if value is not None and not _GIT_URL.match(value):
            raise ValueError("not a URL pip can clone: https://, http://, ssh:// or file:// (scp-like "
                             "`git@host:path` is written `ssh://git@host/path`)")
        return value

    @field_validator("unit", "bootstrap_unit")
    @classmethod
    def _service_unit(cls, value: str) -> str:
        if not _UNIT.match(value):
            raise ValueError("not a systemd service unit name, e.g. hecate.service")
        return value

    @field_validator("prefix", "python")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Update:
        if self.spec is not None and self.git_url is not None:
            raise validation.field_error(("git_url",), "set either spec (a package index) or git_url, not both",
                                         self.git_url)
        if self.no_index and self.index_url is not None:
            raise validation.field_error(("no_index",), "no_index and index_url contradict each other", True)
        if self.no_index and not self.find_links and self.spec is not None:
            raise validation.field_error(("no_index",), "needs find_links (where the wheels are)", True)
        return self

    @property
    def enabled(self) -> bool:
        """Whether a source is configured (otherwise self-update does nothing)."""
        return self.spec is not None or self.git_url is not None


class HecateConfig(_Section):
    role: Role = Role.coordinator
    """`coordinator` shuts the cluster down; `peer` watches its own UPSes and forwards its decision to the coordinator
    (`peer.*`), shutting only itself down if that fails (docs/peers.md)."""
    host_name: str | None = None
    """This host's name in logs and status (defaults to the machine's hostname)."""
    state_dir: Path = Path("/var/lib/hecate")
    """Run history, policy cache, journal and lock."""
    cluster: Cluster = Field(default_factory=Cluster)
    """The k3s cluster."""
    hosts: list[Host] = Field(default_factory=list)
    """Machines outside the cluster (a NAS, the peer host): stopped and powered off after the nodes, woken at
    startup (host config only)."""
    ssh: Ssh = Field(default_factory=Ssh)
    """How Hecate reaches nodes."""
    ups: list[Ups] = Field(default_factory=list)
    """UPSes Hecate watches through NUT."""
    trigger: Trigger = Field(default_factory=Trigger)
    """When to shut down."""
    shutdown: Shutdown = Field(default_factory=Shutdown)
    """How to shut down."""
    startup: Startup = Field(default_factory=Startup)
    """How to start up after power returns."""
    flux: Flux = Field(default_factory=Flux)
    """Flux and its in-cluster git server."""
    peer: Peer = Field(default_factory=Peer)
    """Forwarding triggers between Hecate instances."""
    metrics: Metrics = Field(default_factory=Metrics)
    """The HTTP server."""
    policy: Policy = Field(default_factory=Policy)
    """The PowerPolicy custom resource."""
    update: Update = Field(default_factory=Update)
    """Self-update of this host's installation (`hecate self-update`)."""

    @field_validator("ups")
    @classmethod
    def _unique_ups(cls, value: list[Ups]) -> list[Ups]:
        _unique([u.name for u in value], "UPS names", "name")
        return value

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, value: list[Host]) -> list[Host]:
        _unique([h.name for h in value], "host names", "name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HecateConfig:
        nodes = {n.name for n in self.cluster.nodes}
        for i, host in enumerate(self.hosts):
            if host.name in nodes:
                raise validation.field_error(("hosts", i, "name"), "names must be unique across cluster.nodes "
                                             "and hosts: a node has it too", host.name)
        if self.startup.wake is Wake.command and not self.startup.wake_command:
            raise validation.field_error(("startup", "wake"), "needs startup.wake_command (the command to run)",
                                         self.startup.wake.value)
        if self.role is Role.peer:
            _peer_rules(self)
        return self


PEER_NEEDS = ("coordinator_url", "key_id", "secret_file")
"""The ``peer.*`` keys a ``role: peer`` must set: where it forwards, and what it signs with."""


def _coordinator_only(config: HecateConfig) -> list[tuple[validation.Loc, str, Any]]:
    """Keys set that only a coordinator uses: (where, why, the value). A peer has no cluster, no operator
    and no trigger listener; anything else of the cluster's (kubeconfig, flux, startup, ssh) it ignores."""
    sd = config.shutdown
    found: list[tuple[validation.Loc, str, Any]] = []
    if config.cluster.nodes:
        found.append((("cluster", "nodes"), "a peer has no cluster: the coordinator shuts the nodes down",
                      [n.name for n in config.cluster.nodes]))
    if config.peer.listen is not None:
        found.append((("peer", "listen"), "only the coordinator listens for triggers", config.peer.listen))
    if config.peer.trusted:
        found.append((("peer", "trusted"), "only the coordinator accepts triggers",
                      [t.key_id for t in config.peer.trusted]))
    if config.policy.name is not None:
        found.append((("policy", "name"), "a peer runs no operator: the PowerPolicy is the coordinator's",
                      config.policy.name))
    if sd.scale_down:
        found.append((("shutdown", "scale_down"), "a peer scales no workloads", [t.name for t in sd.scale_down]))
    if sd.storage_quiesce.enabled:
        found.append((("shutdown", "storage_quiesce", "enabled"), "a peer quiesces no cluster storage", True))
    return found


def _peer_rules(config: HecateConfig) -> None:
    """A peer names its coordinator and key, and sets nothing only a coordinator uses (field errors)."""
    missing = [f"peer.{key}" for key in PEER_NEEDS if getattr(config.peer, key) is None]
    if missing:
        raise validation.field_error(
            ("role",), f"a peer forwards its shutdown decision to the coordinator and needs "
                       f"{', '.join('peer.' + k for k in PEER_NEEDS)}; missing: {', '.join(missing)}", "peer")
    refused = _coordinator_only(config)
    if refused:
        loc, why, value = refused[0]
        raise validation.field_error(loc, f"not on a peer ({why}); remove it, or use role: coordinator", value)
