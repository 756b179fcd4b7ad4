"""The lab's emulated cluster nodes: one real OpenSSH server per node.

Hecate reaches cluster nodes only over SSH (stop/start ``k3s``, ``k3s-killall.sh``,
``poweroff``) and verifies their host keys against a known_hosts file. To exercise
that path for real on one machine, every lab node is an actual ``sshd`` with its
own ed25519 host key and key-only root login, whose ``ForceCommand`` is
:mod:`hecate_lab.node_shell`: it emulates the node's commands against the node's
``state.json`` (:mod:`hecate_lab.nodestate`) and takes the node off the network on
``poweroff`` -- never the real machine.

Two network modes:

* ``netns=True`` (root): each node lives in its own network namespace
  ``hl<lab_id>-<i>`` with a veth into the bridge ``hlbr<lab_id>``; the bridge has
  ``<subnet>.1/24``, node *i* (1-based) ``<subnet>.<10+i>/24``, sshd on port 22
  (:mod:`hecate_lab.network` sets that up and tears it down).
* ``netns=False``: every sshd listens on its own free port on 127.0.0.1.

Layout under ``workdir``: ``authorized_keys`` (the client key) and one directory per
node with ``sshd_config``, the host key, ``sshd.pid``, ``sshd.log``, ``node.json``,
``state.json``, ``commands.jsonl`` and ``faults.json``. :class:`LabNode` round-trips
through JSON so a lab started by one process can be stopped by another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from hecate_lab import network, node_shell, nodestate
from hecate_lab.procs import LabError

__all__ = [
    "LabError",
    "LabNode",
    "NodeSpec",
    "Role",
    "cleanup_netns",
    "clear_faults",
    "make_client_key",
    "power_on",
    "read_commands",
    "read_state",
    "set_fault",
    "start_nodes",
    "stop_nodes",
]

Role = Literal["server", "agent", "coordinator", "host"]
"""A k3s server or agent; ``coordinator``: the lab's coordinator machine (not a Kubernetes node); ``host``: a
machine outside the cluster (a NAS: no k3s, one ``nfs-server`` unit), in hecate.yaml's ``hosts:``."""

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
NODE_SHELL = Path(__file__).with_name("node_shell.py")
HOST_KEY = "ssh_host_ed25519_key"
SSHD_LOG = "sshd.log"
AUTHORIZED_KEYS = "authorized_keys"
#: Seconds a whole lab may take to come up before start_nodes gives up.
START_TIMEOUT_S = 60.0
_LOOPBACK = "127.0.0.1"
_PORT_RETRIES = 3
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_UNSAFE_PATH_CHARS = set(' \t\n"%')

read_state = nodestate.read_state

# sshd processes started by this process, so they can be reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class NodeSpec:
    """What a node is: its name (also its hostname) and its k3s role."""

    name: str
    role: Role


@dataclass
class LabNode:
    """A running (or powered-off) emulated node, as start_nodes left it."""

    name: str
    role: Role
    address: str
    port: int
    dir: Path
    netns: str | None = None
    pid: int | None = None  # the listening sshd (a machine's supervisor); None while powered off/stopped
    machine: bool = False  # a booted systemd machine (hecate_lab.machines), not an emulated sshd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {
            "name": self.name,
            "role": self.role,
            "address": self.address,
            "port": self.port,
            "dir": str(self.dir),
            "netns": self.netns,
            "pid": self.pid,
            "machine": self.machine,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabNode:
        role = data["role"]
        if role not in ("server", "agent", "coordinator", "host"):
            raise ValueError(f"lab node {data.get('name')!r}: role must be server, agent, coordinator or host, "
                             f"not {role!r}")
        pid = data.get("pid")
        return cls(
            name=str(data["name"]),
            role=cast(Role, role),
            address=str(data["address"]),
            port=int(data["port"]),
            dir=Path(data["dir"]),
            netns=None if data.get("netns") is None else str(data["netns"]),
            pid=None if pid is None else int(pid),
            machine=bool(data.get("machine", False)),
        )

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts (and ssh) name this node: ``addr`` or ``[addr]:port``."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


# --------------------------------------------------------------------------- keys


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def make_client_key(ssh_dir: Path) -> Path:
    """Create an ed25519 client key pair (no passphrase) in ``ssh_dir``.

    Returns the private key path; the public key is next to it with ``.pub``.
    An existing key is kept.
    """
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ssh_dir / "id_ed25519"
    if not (key.exists() and key.with_name(key.name + ".pub").exists()):
        _keygen(key, "hecate-lab-client")
    return key


# --------------------------------------------------------------------------- helpers


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.lru_cache(maxsize=1)
def _sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until chosen, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _validate(specs: Sequence[NodeSpec], workdir: Path, netns: bool, lab_id: str, subnet: str) -> None:
    if not specs:
        raise ValueError("start_nodes needs at least one NodeSpec")
    names = [s.name for s in specs]
    for spec in specs:
        if not _NAME_RE.fullmatch(spec.name):
            raise ValueError(f"lab node name {spec.name!r}: use letters, digits, '.', '_', '-'")
        if spec.role not in ("server", "agent", "host"):
            raise ValueError(f"lab node {spec.name!r}: role must be server, agent or host, not {spec.role!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"lab node names must be unique: {names}")
    if _UNSAFE_PATH_CHARS & set(str(workdir.resolve())):
        raise ValueError(f"lab workdir {workdir} must not contain whitespace, '\"' or '%' (sshd_config)")
    if not netns:
        return
    if not network.LAB_ID_RE.fullmatch(lab_id):
        raise ValueError(f"lab_id {lab_id!r}: 1-8 lowercase letters/digits (interface names are <= 15 chars)")
    if len(specs) > 244:
        raise ValueError("a netns lab holds at most 244 nodes (<subnet>.11 .. .254)")
    network.check_free(lab_id, subnet)


# --------------------------------------------------------------------------- sshd


SSHD_KEY_ONLY = (
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    # No PAM session: no per-login user manager (memory, time); sudo does its own PAM.
    "UsePAM no",
    "UseDNS no",
    "PrintMotd no",
    "PrintLastLog no",
    "X11Forwarding no",
    "AllowTcpForwarding no",
    "AllowAgentForwarding no",
    "PermitTunnel no",
    "PermitUserEnvironment no",
    "LoginGraceTime 20",
    "MaxStartups 100:30:200",  # the benchmarks open many connections at once
    "MaxSessions 64",
)
"""What every lab sshd sets, light node or machine: the lab's key only, nothing forwarded."""


def _sshd_config(node: LabNode, authorized_keys: Path, user: str) -> str:
    force = " ".join(shlex.quote(a) for a in (sys.executable, "-I", str(NODE_SHELL), str(node.dir)))
    lines = [
        f"# hecate lab node {node.name} ({node.role}); generated by hecate_lab.nodes",
        f"Port {node.port}",
        f"ListenAddress {node.address}",
        "AddressFamily inet",
        f"HostKey {node.dir / HOST_KEY}",
        f"PidFile {node.dir / node_shell.PID_FILE}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        f"AllowUsers {user}",
        "StrictModes no",
        *SSHD_KEY_ONLY,
        "LogLevel INFO",
        # bash sources ~/.bashrc for sshd's "-c" commands unless it is a nested shell;
        # SHLVL=1 makes it one, so the host's rc files (pyenv, ...) stay out of the lab.
        "SetEnv SHLVL=1",
    ]
    if _sshd_version() >= (9, 8):
        lines.append("PerSourcePenalties no")  # tests connect and drop a lot on purpose
    lines.append(f"ForceCommand {force}")
    return "\n".join(lines) + "\n"


def _launch_sshd(node: LabNode) -> subprocess.Popen[bytes]:
    argv = [SSHD, "-D", "-e", "-f", str(node.dir / node_shell.SSHD_CONFIG)]
    if node.netns:
        argv = ["ip", "netns", "exec", node.netns, *argv]  # execs sshd: same pid
    (node.dir / node_shell.PID_FILE).unlink(missing_ok=True)
    with open(node.dir / SSHD_LOG, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    with _children_lock:
        _children[proc.pid] = proc
    node.pid = proc.pid
    return proc


def _register_child(proc: subprocess.Popen[bytes]) -> None:
    """Remember a lab process this process started, so it is reaped (no zombies)."""
    with _children_lock:
        _children[proc.pid] = proc


def _reap_children() -> None:
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def _child_exited(pid: int) -> bool:
    with _children_lock:
        proc = _children.get(pid)
    return proc is not None and proc.poll() is not None


def _log_tail(node: LabNode, lines: int = 5) -> str:
    try:
        text = (node.dir / SSHD_LOG).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def _probe_banner(address: str, port: int, timeout: float = 2.0) -> bool:
    """True when something accepts TCP at address:port and sends an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"SSH-")
    except OSError:
        return False


def _wait_ready(
    nodes: Sequence[LabNode], deadline: float, *, authorized_keys: Path | None = None, user: str = ""
) -> None:
    """Wait until every node's sshd sends its banner.

    With ``authorized_keys``, a loopback node whose port was taken meanwhile is
    moved to another free port (only before known_hosts is written).
    """
    pending = list(nodes)
    retries = dict.fromkeys((n.name for n in nodes), _PORT_RETRIES if authorized_keys else 0)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(nodes)))) as pool:
        while pending:
            for node in pending:
                if node.pid is None or not _child_exited(node.pid):
                    continue
                tail = _log_tail(node)
                if node.netns is None and "already in use" in tail and retries[node.name] > 0:
                    retries[node.name] -= 1
                    node.port = _free_ports(1)[0]
                    assert authorized_keys is not None
                    _write_sshd_config(node, authorized_keys, user)
                    _launch_sshd(node)
                    continue
                raise LabError(f"sshd of lab node {node.name} exited: {tail or 'see ' + SSHD_LOG}")
            ready = list(pool.map(lambda n: _probe_banner(n.address, n.port), pending))
            pending = [n for n, ok in zip(pending, ready, strict=True) if not ok]
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(n.name for n in pending[:10])
                    raise LabError(f"lab nodes did not come up in time: {names}")
                time.sleep(0.05)


def _write_sshd_config(node: LabNode, authorized_keys: Path, user: str) -> None:
    _atomic_write(node.dir / node_shell.SSHD_CONFIG, _sshd_config(node, authorized_keys, user))


def _write_known_hosts(nodes: Sequence[LabNode], known_hosts: Path) -> None:
    lines = []
    for node in nodes:
        keytype, blob = (node.dir / f"{HOST_KEY}.pub").read_text().split()[:2]
        lines.append(f"{node.known_hosts_name} {keytype} {blob}\n")
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(known_hosts, "".join(lines))


def cleanup_netns(lab_id: str) -> None:
    """Remove whatever is left of a netns lab: processes, namespaces, veths, bridge.

    For a lab whose owner was killed. Everything is matched by name
    (``hl<lab_id>-<i>``, ``hl<lab_id>v<i>``, ``hlbr<lab_id>``); missing pieces are fine.
    """
    network.cleanup(lab_id, on_poll=_reap_children)


# --------------------------------------------------------------------------- public API


def start_nodes(
    workdir: Path,
    specs: list[NodeSpec],
    *,
    client_pubkey: Path,
    known_hosts: Path,
    netns: bool,
    lab_id: str,
    subnet: str,
) -> list[LabNode]:
    """Start one sshd per spec and return the running nodes, in spec order.

    Writes ``known_hosts`` with every node's host key and waits until each node
    accepts TCP and sends its SSH banner. On any failure, everything started so far
    is stopped and removed before the error propagates.
    """
    _validate(specs, workdir, netns, lab_id, subnet)
    user = pwd.getpwuid(os.geteuid()).pw_name
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    authorized_keys = workdir / AUTHORIZED_KEYS
    _atomic_write(authorized_keys, client_pubkey.read_text(), mode=0o600)
    if os.geteuid() == 0:
        # sshd run as root insists on its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    ports = [22] * len(specs) if netns else _free_ports(len(specs))
    nodes = [
        LabNode(
            name=spec.name,
            role=spec.role,
            address=f"{subnet}.{10 + i}" if netns else _LOOPBACK,
            port=ports[i - 1],
            dir=workdir / spec.name,
            netns=network.namespace_name(lab_id, i) if netns else None,
        )
        for i, spec in enumerate(specs, start=1)
    ]
    try:
        for node in nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            for stale in (node_shell.COMMANDS_FILE, node_shell.FAULTS_FILE, node_shell.HALT_LOG,
                          node_shell.HALT_PID_FILE, SSHD_LOG):
                (node.dir / stale).unlink(missing_ok=True)
            meta = {"name": node.name, "role": node.role, "netns": node.netns, "iface": network.NS_IFACE}
            _atomic_write(node.dir / node_shell.META_FILE, json.dumps(meta) + "\n")
            nodestate.write_state(node.dir, nodestate.initial_state(node.role))
            _write_sshd_config(node, authorized_keys, user)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(nodes)))) as pool:
            list(pool.map(lambda n: _keygen(n.dir / HOST_KEY, f"{n.name}@hecate-lab"), nodes))
        if netns:
            network.setup([(n.netns, n.address) for n in nodes if n.netns], lab_id, subnet)
        for node in nodes:
            _launch_sshd(node)
        _wait_ready(nodes, time.monotonic() + START_TIMEOUT_S, authorized_keys=authorized_keys, user=user)
        _write_known_hosts(nodes, known_hosts)
    except BaseException:
        stop_nodes(nodes, lab_id=lab_id if netns else None)
        raise
    return nodes


def _node_processes(node: LabNode, table: Mapping[int, node_shell.Proc]) -> tuple[set[int], set[int]]:
    """(listening sshds, stray node shells/helpers) belonging to ``node``."""
    listeners = {
        pid
        for pid in (node.pid, node_shell.read_pid(node.dir / node_shell.PID_FILE))
        if pid is not None and node_shell.is_sshd_of(table.get(pid), node.dir)
    }
    shells = {
        pid
        for pid, proc in table.items()
        if str(NODE_SHELL) in proc.argv and str(node.dir) in proc.argv and proc.state != "Z"
    }
    return listeners, shells


def stop_nodes(nodes: list[LabNode], *, lab_id: str | None) -> None:
    """Stop the nodes' sshds and sessions and remove their namespaces (and the bridge).

    Processes are found by pid (checked against the node's sshd_config, so a
    recycled pid is never hit) and by pid file; their session processes and any
    hung node shells go too: SIGTERM, SIGKILL after a short grace. With ``lab_id``
    the whole netns lab is removed (:func:`cleanup_netns`). Idempotent; anything
    already gone is fine. Sets each node's ``pid`` to None.
    """
    table = node_shell.process_table()
    listeners: set[int] = set()
    shells: set[int] = set()
    for node in nodes:
        found_listeners, found_shells = _node_processes(node, table)
        listeners |= found_listeners
        shells |= found_shells
    if listeners or shells:
        node_shell.kill_trees(listeners, extra=shells, on_poll=_reap_children)
    _reap_children()
    for node in nodes:
        node.pid = None
    if not any(n.netns for n in nodes):
        return  # a loopback lab: nothing else to remove
    if lab_id is not None:
        cleanup_netns(lab_id)
        return
    network.remove(n.netns for n in nodes if n.netns)


def power_on(node: LabNode, *, k3s_at_boot: bool = True) -> LabNode:
    """Boot a node: power on, its k3s unit active (enabled at boot), link up, sshd back.

    ``k3s_at_boot=False`` boots with the k3s unit inactive, as on hosts where the unit is
    disabled so that ``hecate startup`` orders the start (servers, API, then agents).

    Returns the node with the new sshd pid (known_hosts stays valid: same key,
    same address and port). A node that is on and whose sshd runs is left as it
    is. For a node that was powered off, a halt still in progress is awaited first,
    so a quick off/on never ends with the node off the network.
    """
    with node_shell.locked(node.dir):
        state = nodestate.read_state(node.dir)
        was_off = state.get("power") != "on"
        state["power"] = "on"
        if node.role == "host":  # a host outside the cluster: its own unit is enabled, it starts at boot
            state.setdefault("services", {})[nodestate.service_for(node.role)] = "active"
        elif was_off or k3s_at_boot:
            state.setdefault("services", {})[nodestate.service_for(node.role)] = (
                "active" if k3s_at_boot else "inactive")
        nodestate.write_state(node.dir, state)
    if was_off:
        _await_halt(node)
    table = node_shell.process_table()
    listeners, _ = _node_processes(node, table)
    live = {pid for pid in listeners if table[pid].state != "Z"}
    if live and not was_off:
        return dataclasses.replace(node, pid=min(live))
    if live:  # powered off, yet its sshd survived the halt: the boot replaces it
        _stop_sshd_only(node)
    _reap_children()
    if node.netns:
        network.link_up(node.netns)
    booted = dataclasses.replace(node)
    _launch_sshd(booted)
    try:
        _wait_ready([booted], time.monotonic() + START_TIMEOUT_S)
    except BaseException:
        _stop_sshd_only(booted)
        raise
    return booted


def _await_halt(node: LabNode, timeout_s: float = node_shell.HALT_DELAY_S + 3.0) -> None:
    """Wait for the node's poweroff helper to finish (kill it if it overstays)."""
    deadline = time.monotonic() + timeout_s
    while True:
        helper = node_shell.halt_helper(node.dir)
        if helper is None:
            return
        if time.monotonic() >= deadline:
            node_shell.kill_trees([helper], on_poll=_reap_children)
            return
        time.sleep(0.05)


def _stop_sshd_only(node: LabNode) -> None:
    table = node_shell.process_table()
    listeners, shells = _node_processes(node, table)
    node_shell.kill_trees(listeners, extra=shells, on_poll=_reap_children)
    node.pid = None


# --------------------------------------------------------------------------- faults & log


def set_fault(
    node_dir: Path,
    prefix: str,
    *,
    delay_s: float = 0,
    hang: bool = False,
    exit_code: int | None = None,
) -> None:
    """Make commands starting with ``prefix`` (whole words) misbehave on this node.

    ``delay_s`` sleeps before acting, ``hang`` never returns (until the session or
    the lab is killed), ``exit_code`` fails the command without touching the state.
    The longest matching prefix wins; ``"*"`` matches every command no other prefix
    matches ("each emulated command takes 1 s").
    """
    key = prefix if prefix == node_shell.ANY_COMMAND else " ".join(prefix.split())
    if delay_s < 0:
        raise ValueError(f"fault delay_s must be >= 0, not {delay_s}")
    if not key:
        raise ValueError("fault prefix must not be empty (use '*' for every command)")
    with node_shell.locked(node_dir):
        faults = node_shell.read_json(node_dir / node_shell.FAULTS_FILE, {})
        faults[key] = {"delay_s": float(delay_s), "hang": bool(hang), "exit_code": exit_code}
        _atomic_write(node_dir / node_shell.FAULTS_FILE, json.dumps(faults, indent=1) + "\n")


def clear_faults(node_dir: Path) -> None:
    """Remove every fault of this node."""
    with node_shell.locked(node_dir):
        (node_dir / node_shell.FAULTS_FILE).unlink(missing_ok=True)


def read_commands(node_dir: Path) -> list[dict[str, Any]]:
    """Every command the node has run, oldest first (``t``, ``t_end``, ``cmd``, ``rc``).

    A hung command appears with ``t_end`` and ``rc`` None and ``"hang": true``.
    """
    records: list[dict[str, Any]] = []
    with (
        contextlib.suppress(FileNotFoundError),
        open(node_dir / node_shell.COMMANDS_FILE, encoding="utf-8") as fh,
    ):
        records.extend(json.loads(line) for line in _complete_lines(fh))
    return records


def _complete_lines(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.endswith("\n") and line.strip():
            yield line
