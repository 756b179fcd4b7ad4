"""The whole lab on one machine: UPSes, nodes and an emulated API, brought up and down as one.

``Lab.up(dir, spec)`` starts, in order: one upsd + dummy-ups per UPS, one sshd per
node (each in its own network namespace when root, on loopback ports otherwise), and
the emulated Kubernetes API seeded with the nodes. It writes ``lab.json`` (every PID,
port and address, so a later ``hecate lab down`` -- or the next ``up`` after a lab that
was killed -- can stop everything by PID) and ``hecate.yaml``, a configuration that
points Hecate at the lab. Nothing here reaches the machine's own systemd or power.

With ``LabSpec(hosts=("nas",))`` the lab has machines outside the cluster too: light nodes of role
``host`` (no k3s, one ``nfs-server`` unit), in hecate.yaml's ``hosts:`` with the stop command
``systemctl stop nfs-server`` (observable in their state and command log), never in the API.

With ``LabSpec(coordinator=True)`` the coordinator is a booted machine too (``titan-db``), in
which Hecate is installed and runs as real units: the API then listens on the lab bridge's
``<subnet>.1`` (the machine reaches it there), and the machine gets a kubeconfig, Hecate's SSH
identity and :meth:`Lab.coordinator_config` in its ``/etc`` (see docs/lab.md, "The coordinator
machine").
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from hecate_lab import DEFAULT_DIR, kubeapi, machines, nodes, nodestate, wheelhouse
from hecate_lab.cluster_sim import Delays
from hecate_lab.nodes import LabNode
from hecate_lab.procs import LabError, alive, free_port
from hecate_lab.ups import LabUps, start_ups

MANIFEST = "lab.json"
COORDINATOR_NAME = "titan-db"
"""The coordinator machine's name (``LabSpec(coordinator=True)``)."""
#: Where the coordinator machine sees the lab's parts (read-only binds) and Hecate's files.
COORDINATOR_CHECKOUT = "/srv/hecate"
COORDINATOR_WHEELS = "/srv/hecate-wheels"
COORDINATOR_UPS_DIR = "/srv/hecate-ups"  # /srv/hecate-ups/<name>/<name>.dev: the lab UPS's dummy-ups file
COORDINATOR_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
COORDINATOR_ETC = "/etc/hecate"
KUBE_EVENT_SOURCES = {"api": "kube-api", "cold-start": "cold-start", "node": "node-ctrl", "workload": "kube-ctrl",
                      "flux": "flux"}
"""How :func:`timeline` names the emulated cluster's event sources."""


@dataclass(frozen=True)
class LabSpec:
    """What to build: UPS names and how many k3s servers and agents."""

    ups: tuple[str, ...] = ("pyrphoros",)
    servers: int = 1
    agents: int = 2
    netns: bool | None = None
    """Network namespaces per node; ``None`` means "when root and ``ip netns`` works"."""
    delays: Delays = field(default_factory=Delays)
    """How long the emulated cluster takes to come up (API, node, pod), see docs/lab-kubeapi.md."""
    machines: bool = False
    """Nodes are booted systemd machines (real sshd, sudo, k3s units, power-off; :mod:`hecate_lab.machines`),
    not emulated sshds. Needs root and systemd-nspawn; implies network namespaces."""
    coordinator: bool = False
    """The coordinator is a machine too (``titan-db``, not a Kubernetes node), fit to install Hecate in and
    run it as real units (:meth:`Lab.coordinator_config`, :meth:`Lab.coordinator_install_argv`). Needs
    ``machines``."""
    wheelhouse: Path | None = None
    """The wheelhouse the coordinator sees at /srv/hecate-wheels; None: :func:`hecate_lab.wheelhouse.build`."""
    hosts: tuple[str, ...] = ()
    """Machines outside the cluster (hecate.yaml's ``hosts:``, e.g. ``("nas",)``): light nodes without k3s."""

    def __post_init__(self) -> None:
        if self.coordinator and not self.machines:
            raise ValueError("coordinator=True needs machines=True (the coordinator is a booted machine)")
        if self.hosts and self.machines:
            raise ValueError("hosts outside the cluster are light nodes: not with machines=True")

    def node_specs(self) -> list[nodes.NodeSpec]:
        return [nodes.NodeSpec(f"titan-s{i + 1}", "server") for i in range(self.servers)] + [
            nodes.NodeSpec(f"titan-a{i + 1}", "agent") for i in range(self.agents)
        ] + [nodes.NodeSpec(name, "host") for name in self.hosts]


@dataclass
class Lab:
    dir: Path
    id: str
    netns: bool
    subnet: str
    ups: dict[str, LabUps] = field(default_factory=dict)
    nodes: list[LabNode] = field(default_factory=list)
    kubeapi_pid: int | None = None
    coordinator: LabNode | None = None
    """The coordinator machine (``LabSpec(coordinator=True)``), or None: the coordinator is this host."""
    outside: list[LabNode] = field(default_factory=list)
    """Machines outside the cluster (``LabSpec(hosts=...)``, role ``host``): hecate.yaml's ``hosts:``."""
    metrics_port: int = field(default_factory=free_port)
    """Where a `hecate daemon` run against this lab serves (a free port, so labs can coexist)."""

    # -- paths -----------------------------------------------------------------------

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kube" / "kubeconfig"

    @property
    def config_path(self) -> Path:
        return self.dir / "hecate.yaml"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def machines(self) -> bool:
        """Whether the nodes are booted systemd machines."""
        return any(n.machine for n in self.nodes)

    @property
    def hosts(self) -> list[LabNode]:
        """Every host of the lab: the nodes, the machines outside the cluster, the coordinator machine if any."""
        return [*self.nodes, *self.outside, *([self.coordinator] if self.coordinator else [])]

    def node(self, name: str) -> LabNode:
        for node in [*self.nodes, *self.outside]:
            if node.name == name:
                return node
        raise KeyError(name)

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def up(cls, directory: Path = DEFAULT_DIR, spec: LabSpec | None = None, *, detach: bool = False) -> Lab:
        """Start a lab in ``directory`` (stopping whatever a previous lab left there).

        The emulated API stops with the calling process unless ``detach`` (the CLI's case:
        ``hecate lab up`` returns and the lab keeps running until ``hecate lab down``).
        """
        spec = spec or LabSpec()
        stop_stale(directory)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        netns = spec.netns if spec.netns is not None else netns_available()
        if spec.machines:
            why = machines.unavailable()
            if why:
                raise LabError(why)
            if spec.netns is False:
                raise ValueError("lab machines live in network namespaces: machines=True needs netns")
            netns = True
        lab = cls(dir=directory, id=secrets.token_hex(2), netns=netns, subnet=_free_subnet())
        start_machines = machines.start_machines
        if spec.coordinator:
            # The UPS directories exist before the machine binds them (the UPSes start alongside).
            for name in spec.ups:
                (directory / "ups" / name).mkdir(parents=True, exist_ok=True)
            binds = [(wheelhouse.CHECKOUT, COORDINATOR_CHECKOUT),
                     (spec.wheelhouse or wheelhouse.build(), COORDINATOR_WHEELS),
                     *((directory.resolve() / "ups" / name, f"{COORDINATOR_UPS_DIR}/{name}") for name in spec.ups)]
            start_machines = functools.partial(machines.start_machines, coordinator=COORDINATOR_NAME,
                                               coordinator_binds=binds)
        try:
            # The UPSes take ~3 s (upsd waits for the driver's first dump): start them
            # alongside the nodes rather than before.
            with ThreadPoolExecutor(max_workers=max(1, len(spec.ups))) as pool:
                starting = {name: pool.submit(start_ups, directory, name) for name in spec.ups}
                try:
                    lab.ssh_dir.mkdir()
                    key = nodes.make_client_key(lab.ssh_dir)
                    start = start_machines if spec.machines else functools.partial(nodes.start_nodes, netns=netns)
                    started = start(
                        directory / "nodes", spec.node_specs(),
                        client_pubkey=key.with_name(key.name + ".pub"),
                        known_hosts=lab.ssh_dir / "known_hosts", lab_id=lab.id, subnet=lab.subnet,
                    )
                    lab.nodes = [n for n in started if n.role not in (machines.COORDINATOR, "host")]
                    lab.outside = [n for n in started if n.role == "host"]
                    lab.coordinator = next((n for n in started if n.role == machines.COORDINATOR), None)
                finally:
                    for name, future in starting.items():
                        with contextlib.suppress(Exception):
                            lab.ups[name] = future.result()
                    lab.save()
            missing = [name for name in spec.ups if name not in lab.ups]
            if missing:
                starting[missing[0]].result()  # raises the UPS's own error
            lab.save()
            lab._start_kubeapi(detach, spec.delays)
            lab.save()
            lab.write_hecate_config()
            if lab.coordinator is not None:
                lab.write_coordinator_files()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR) -> Lab:
        try:
            data = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up in {directory} (no {MANIFEST})") from None
        return cls(
            dir=directory, id=data["id"], netns=data["netns"], subnet=data["subnet"],
            ups={u["name"]: LabUps.from_dict(u) for u in data["ups"]},
            nodes=[nodes.LabNode.from_dict(n) for n in data["nodes"]],
            kubeapi_pid=data.get("kubeapi_pid"), metrics_port=data.get("metrics_port") or free_port(),
            coordinator=nodes.LabNode.from_dict(data["coordinator"]) if data.get("coordinator") else None,
            outside=[nodes.LabNode.from_dict(n) for n in data.get("outside", [])],
        )

    def save(self) -> None:
        data = {
            "id": self.id, "netns": self.netns, "subnet": self.subnet,
            "ups": [u.to_dict() for u in self.ups.values()],
            "nodes": [n.to_dict() for n in self.nodes],
            "outside": [n.to_dict() for n in self.outside],
            "kubeapi_pid": self.kubeapi_pid,
            "coordinator": self.coordinator.to_dict() if self.coordinator else None,
            "metrics_port": self.metrics_port,
            "kubeconfig": str(self.kubeconfig), "config": str(self.config_path),
        }
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.dir / MANIFEST)

    def down(self) -> None:
        """Stop everything by PID and remove namespaces and the bridge; safe to repeat."""
        errors: list[str] = []
        if self.kubeapi_pid is not None:
            try:
                kubeapi.stop_kubeapi(self.kubeapi_pid)
            except Exception as err:  # keep going: the rest must still be stopped
                errors.append(f"kubeapi: {err}")
            self.kubeapi_pid = None
        try:
            machines.stop_machines(self.hosts)
        except Exception as err:
            errors.append(f"machines: {err}")
        try:
            nodes.stop_nodes(self.hosts, lab_id=self.id if self.netns else None)
        except Exception as err:
            errors.append(f"nodes: {err}")
        for ups in self.ups.values():
            ups.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / MANIFEST).unlink()
        if errors:
            raise LabError("lab down left problems: " + "; ".join(errors))

    @property
    def kube_events(self) -> Path:
        """The emulated cluster's timeline (JSON lines), see :mod:`hecate_lab.kubeapi.events`."""
        return self.dir / "kube" / kubeapi.EVENTS_FILE

    def _start_kubeapi(self, detach: bool, delays: Delays | None = None) -> None:
        manifest = self.dir / "kube" / "nodes.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({
            "nodes": [{"name": n.name, "role": n.role, "dir": str(n.dir)} for n in self.nodes],
            "delays": (delays or Delays()).to_dict(),
            "events": str(self.kube_events),
        }))
        # With a coordinator machine the API listens on the bridge, where the machine reaches it (the host too).
        host = ["--host", self.bridge_address] if self.coordinator else []
        proc = kubeapi.start_kubeapi(manifest, self.kubeconfig, self.dir / "kube" / "kubeapi.log",
                                     exit_with_parent=not detach, extra_args=host)
        self.kubeapi_pid = proc.pid

    @property
    def bridge_address(self) -> str:
        """The host's address on the lab bridge (netns labs): what the machines reach the host at."""
        return f"{self.subnet}.1"

    # -- the coordinator machine -------------------------------------------------------

    def _need_coordinator(self) -> LabNode:
        if self.coordinator is None:
            raise LabError("this lab has no coordinator machine (LabSpec(coordinator=True), lab up --coordinator)")
        return self.coordinator

    @property
    def coordinator_root(self) -> Path:
        """The coordinator's root directory on the host (its /etc, /opt, /var; persistent across power cycles)."""
        return machines.root_of(self._need_coordinator())

    def coordinator_run(self, argv: list[str], timeout: float = 60.0, *,
                        check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the coordinator machine as its root (``nsenter`` into its PID 1)."""
        return machines.machine_run(self._need_coordinator(), argv, timeout=timeout, check=check)

    def coordinator_ups_port(self, name: str | None = None) -> str:
        """The lab UPS's ``.dev`` file as the coordinator sees it (a ``dummy-ups`` driver's ``port``)."""
        name = name or next(iter(self.ups), "pyrphoros")
        return f"{COORDINATOR_UPS_DIR}/{name}/{name}.dev"

    def coordinator_install_argv(self, *extra: str) -> list[str]:
        """How to install Hecate in the coordinator machine (run it with :meth:`coordinator_run`):

        ``/srv/hecate/host/install.sh --no-index --find-links /srv/hecate-wheels --manage-nut yes
        --nut-driver dummy-ups --nut-port /srv/hecate-ups/pyrphoros/pyrphoros.dev --nut-ups-name pyrphoros
        --enable-bootstrap yes``: offline from the bound wheelhouse, NUT managed with the lab UPS's
        ``dummy-ups`` file as the device; the configuration it keeps is :meth:`coordinator_config`.
        """
        name = next(iter(self.ups), "pyrphoros")
        return [f"{COORDINATOR_CHECKOUT}/host/install.sh", "--no-index", "--find-links", COORDINATOR_WHEELS,
                "--manage-nut", "yes", "--nut-driver", "dummy-ups", "--nut-port", self.coordinator_ups_port(name),
                "--nut-ups-name", name, "--enable-bootstrap", "yes", *extra]

    def coordinator_config(self) -> dict[str, Any]:
        """A hecate.yaml (as data) for Hecate installed INSIDE the coordinator machine: the paths as the
        machine sees them, its own nut-server on 127.0.0.1:3493, a real ``systemctl poweroff`` (the
        default ``local_poweroff_command``), armed (``shutdown.execute: true``), the lab's short waits."""
        data = self.hecate_config()
        data["host_name"] = COORDINATOR_NAME
        data["state_dir"] = "/var/lib/hecate"
        data["cluster"]["kubeconfig"] = COORDINATOR_KUBECONFIG
        data["ssh"].update({"user": machines.USER, "sudo": True, "key_file": f"{COORDINATOR_ETC}/id_ed25519",
                            "known_hosts": f"{COORDINATOR_ETC}/known_hosts"})
        data["ups"] = [{"name": name, "host": "127.0.0.1", "port": 3493} for name in list(self.ups)[:1]]
        data["shutdown"]["execute"] = True
        del data["shutdown"]["local_poweroff_command"]
        data["flux"]["fallback_manifests_dir"] = "/var/lib/hecate/bootstrap"
        data["metrics"] = {"listen": "127.0.0.1:9560", "socket": "/run/hecate/hecate.sock"}
        return data

    def write_coordinator_files(self) -> None:
        """Into the coordinator's /etc: the kubeconfig naming the API on the bridge, Hecate's SSH identity
        (the lab's client key, 0600, and known_hosts) and :meth:`coordinator_config` -- before any install,
        which keeps an existing config."""
        root = self.coordinator_root
        kube = root / COORDINATOR_KUBECONFIG.lstrip("/")
        kube.parent.mkdir(parents=True, exist_ok=True)
        kubeapi.write_kubeconfig(kube, kubeapi.api_url(self.kubeconfig))
        etc = root / COORDINATOR_ETC.lstrip("/")
        etc.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, mode in (("id_ed25519", 0o600), ("id_ed25519.pub", 0o644), ("known_hosts", 0o644)):
            shutil.copy(self.ssh_dir / name, etc / name)
            os.chmod(etc / name, mode)
        (etc / "hecate.yaml").write_text(
            "# Written by `hecate lab up --coordinator`: Hecate installed in the lab's coordinator machine.\n"
            + yaml.safe_dump(self.coordinator_config(), sort_keys=False))
        os.chmod(etc / "hecate.yaml", 0o600)

    # -- what Hecate sees ----------------------------------------------------------------

    def hecate_config(self) -> dict[str, Any]:
        """A hecate.yaml (as data) that points Hecate at this lab."""
        return {
            "role": "coordinator",
            "host_name": "lab-coordinator",
            "state_dir": str(self.state_dir),
            "cluster": {
                "kubeconfig": str(self.kubeconfig),
                "api_timeout_s": 5,
                # Agents share one power-off order (they go off together); servers go one by one.
                "nodes": [
                    {"name": n.name, "address": n.address, "ssh_port": n.port, "role": n.role,
                     "poweroff_order": i if n.role == "server" else 100}
                    for i, n in enumerate(self.nodes)
                ],
            },
            # Machines outside the cluster: a harmless stop command the lab sees; startup boots them with the
            # lab's own power-on and waits for their sshd.
            "hosts": [
                {"name": h.name, "address": h.address, "ssh_port": h.port, "poweroff_order": 10 * (i + 1),
                 "stop_commands": [["systemctl", "stop", nodestate.HOST_UNIT]], "wait_ssh": True,
                 "wake": "command", "wake_command": [sys.executable, "-m", "hecate", "lab", "power-on",
                                                     "--dir", str(self.dir.absolute()), "{host}"]}
                for i, h in enumerate(self.outside)
            ],
            "ssh": {
                # Machines: a real unprivileged user and the production sudoers line (docs/shutdown.md).
                "user": machines.USER if self.machines else "root",
                "key_file": str(self.ssh_dir / "id_ed25519"),
                "known_hosts": str(self.ssh_dir / "known_hosts"),
                "connect_timeout_s": 5,
                "command_timeout_s": 30,
                **({"sudo": True} if self.machines else {}),
            },
            "ups": [{"name": u.name, "host": u.host, "port": u.port, "credentials_file": str(u.credentials_file)}
                    for u in self.ups.values()],
            "shutdown": {
                "execute": False,
                # The tiers `hecate lab seed` creates; a short drain timeout (its PDB blocks one pod).
                "scale_down": [{"name": "apps", "selector": "hecate.io/tier=apps"},
                               {"name": "data", "selector": "hecate.io/tier=data"}],
                "drain_timeout_s": 5,
                # The lab's coordinator only records that it would power off.
                "local_poweroff_command": ["sh", "-c", f"date +%s.%N >> {self.dir}/coordinator-poweroff"],
            },
            # Startup waits sized for the lab's simulator (its readiness delays are seconds, not minutes).
            "startup": {"foundation": ["kube-system/deployment/coredns"], "recovery_after_s": 3,
                        "boot_timeout_s": 10, "api_timeout_s": 30, "node_ready_timeout_s": 30,
                        "foundation_timeout_s": 30, "verify_timeout_s": 30},
            # What the daemon caches for the deadlock fallback: Gitea, what it needs, CoreDNS.
            "flux": {"detection_window_s": 2, "ready_timeout_s": 30, "cache_refresh_interval_s": 60,
                     "fallback_manifests_dir": str(self.state_dir / "bootstrap"),
                     "bootstrap_objects": ["gitea/deployment/gitea-valkey", "gitea/deployment/gitea",
                                           "kube-system/deployment/coredns"]},
            # `hecate status` asks the daemon on this socket (root-only, never over TCP).
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}",
                        "socket": str((self.dir / "hecate.sock").absolute())},
        }

    def write_hecate_config(self) -> None:
        # Hecate refuses a state dir others may write (`hecate config validate`, the daemon), whatever the umask.
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        self.config_path.write_text(
            "# Written by `hecate lab up`: points Hecate at the lab.\n"
            + yaml.safe_dump(self.hecate_config(), sort_keys=False)
        )

    def status(self) -> dict[str, Any]:
        """What every lab part is doing right now."""
        ups = {}
        for name, u in self.ups.items():
            served = u.read()
            ups[name] = {
                "address": u.address, "serving": bool(served),
                **{k: served.get(k) for k in ("ups.status", "battery.runtime", "battery.charge", "ups.load")},
            }
        node_rows = []
        for n in [*self.nodes, *self.outside]:
            try:
                state = nodes.read_state(n.dir)
            except FileNotFoundError:
                state = {}
            node_rows.append({
                "name": n.name, "role": n.role, "address": f"{n.address}:{n.port}",
                "netns": n.netns, "sshd_alive": alive(n.pid) if not n.machine else machines.pid1(n) is not None,
                "kind": "machine" if n.machine else "light", **state,
            })
        coordinator = None
        if self.coordinator is not None:
            c = self.coordinator
            coordinator = {"name": c.name, "address": f"{c.address}:{c.port}", "netns": c.netns,
                           "pid1": machines.pid1(c), "root": str(machines.root_of(c))}
        return {
            "dir": str(self.dir), "id": self.id,
            "mode": "network namespaces" if self.netns else "loopback",
            "ups": ups, "nodes": node_rows, "coordinator": coordinator,
            "api": {"kubeconfig": str(self.kubeconfig), "alive": alive(self.kubeapi_pid),
                    "url": kubeapi.api_url(self.kubeconfig) if self.kubeconfig.exists() else None},
            "config": str(self.config_path),
        }


def stop_stale(directory: Path) -> None:
    """Stop a lab that was left running (or killed) in ``directory``."""
    if (directory / MANIFEST).exists():
        with contextlib.suppress(Exception):
            Lab.load(directory).down()


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"hlprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ok


def _free_subnet() -> str:
    """A 10.77.x.0/24 not yet on any interface (labs can coexist)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    for third in range(1, 255):
        candidate = f"10.77.{third}"
        if f" {candidate}." not in used:
            return candidate
    raise LabError("no free 10.77.x.0/24 subnet for a lab bridge")


def timeline(lab: Lab) -> list[tuple[float, str, str]]:
    """Everything that happened in the lab, in time order: UPS changes, node commands, the emulated
    cluster's events (API up/down, cold start, Nodes marked NotReady, workloads, Flux), Hecate's runs,
    coordinator off."""
    rows: list[tuple[float, str, str]] = []
    for ups in lab.ups.values():
        events = ups.dir / "events.jsonl"
        for line in events.read_text().splitlines() if events.exists() else []:
            event = json.loads(line)
            rows.append((event["t"], ups.name, " ".join(f"{k}={v}" for k, v in event["set"].items())))
    for node in lab.hosts:
        if node.machine:  # a real host: what its journal says, and when it ended
            rows.extend((t, node.name, f"{ident}: {msg}") for t, ident, msg in machines.journal(node))
            rows.extend((e["t"], node.name, f"machine {'booted' if e['event'] == 'boot' else 'ended'} "
                         f"({e['event']}{'' if e.get('rc') is None else ', rc ' + str(e['rc'])})")
                        for e in machines.power_events(node))
            continue
        for c in nodes.read_commands(node.dir):
            rc = "hung" if c.get("rc") is None else f"rc {c['rc']}"
            rows.append((c["t"], node.name, f"{c['cmd']} ({rc})"))
    for event in kubeapi.read_events(lab.kube_events):
        what = f"{event['object']}: {event.get('message', '')}" if event.get("object") else str(event.get("message"))
        who = KUBE_EVENT_SOURCES.get(str(event.get("source")), str(event.get("source")))
        rows.append((float(event["t"]), who, what))
    runs = lab.state_dir / "runs.json"
    for run in json.loads(runs.read_text()) if runs.exists() else []:
        decided = run.get("trigger", {}).get("decided_at")
        if decided:
            what = "dry-run " if run["dry_run"] else ""
            rows.append((datetime.fromisoformat(decided).timestamp(), "hecate",
                         f"{what}shutdown decided: {run['trigger'].get('detail')}"))
        if run.get("finished_at") and not run["dry_run"]:
            stages = ", ".join(f"{s['name']} {s['duration_s']:.1f}s" for s in run["stages"])
            rows.append((datetime.fromisoformat(run["finished_at"]).timestamp(), "hecate",
                         f"{run['kind']} recorded: {run['result']} in {run['duration_s']:.1f}s ({stages})"))
    off = lab.dir / "coordinator-poweroff"
    for line in off.read_text().split() if off.exists() else []:
        rows.append((float(line), "coordinator", "local power-off command ran (the coordinator goes last)"))
    return sorted(rows)
