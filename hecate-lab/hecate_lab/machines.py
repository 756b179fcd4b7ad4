"""Lab nodes as booted systemd machines: real sshd, sudo, systemctl, k3s units and power-off.

The light lab nodes (:mod:`hecate_lab.nodes`) emulate a host behind sshd's forced command. A
*machine* is the real thing, booted with ``systemd-nspawn`` in the node's network namespace:
systemd as its PID 1, the distribution's own ``ssh.service`` listening on the node address with
the host key the lab's known_hosts holds, a ``hecate`` user holding only the lab's client key,
``sudo`` with the narrow sudoers line Hecate needs in production (:func:`sudoers_line`), and
``k3s.service`` / ``k3s-agent.service`` units, disabled at boot, whose ``ExecStart`` is the lab's
stand-in for k3s (:mod:`hecate_lab.k3s_agent`). ``systemctl poweroff`` inside ends that machine
only; the lab records when (``power.jsonl``) and :func:`power_on` boots it again.

No image: the root directory (``<workdir>/<name>.root``) holds symlinks into ``/usr`` (the host's,
bound read-only: merged-usr Debian), a copy of the host's ``/etc`` with its own empty
``machine-id``, hostname, users, sudoers and units -- the host's own services masked or not
wanted -- and a ``/var`` of its own (its journal in ``var/log/journal``, read by
:func:`journal`). ``/usr/local`` is a tmpfs holding only ``bin/k3s-killall.sh`` and the lab
package (both bound read-only); the node directory is bound at ``/var/lib/hecate-lab`` (its
``state.json`` is what the emulated API's simulator reads to decide Ready).

Each machine runs under a small supervisor (``python -m hecate_lab.machines supervise NODE_DIR``)
that puts ``systemd-nspawn`` in the machine's own cgroups (memory, freezer), waits for it to end
and appends the end to ``power.jsonl``. :func:`stop_machines` kills a machine through its cgroup
(thawed first), so nothing survives ``hecate lab down``, even of a frozen machine.

The lab's *coordinator* (role ``coordinator``, ``LabSpec(coordinator=True)``) is a machine too,
fit to host an installed Hecate rather than k3s: no k3s units, the NUT units present (not masked,
not enabled: the installer enables them), a persistent ``/usr/local`` (``<node dir>/usr-local``,
bound read-write, where the installer links ``/usr/local/bin/hecate``) and read-only binds listed
in ``<node dir>/binds.json`` (the checkout, the wheelhouse, the lab UPSes' ``.dev`` directories).

Nothing here acts on the host's own systemd or power: every power verb runs inside a machine
(over SSH, or ``nsenter`` into its PID 1, :func:`machine_run`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from hecate_lab import k3s_agent, network, nodes, nodestate
from hecate_lab.nodes import LabNode, NodeSpec
from hecate_lab.procs import LabError

NSPAWN = "/usr/bin/systemd-nspawn"
SYSTEMD = "/usr/lib/systemd/systemd"
NSENTER = "nsenter"
#: The account Hecate logs in as on a machine (``ssh.user``), with ``ssh.sudo: true``.
USER = "hecate"
KILLALL = "/usr/local/bin/k3s-killall.sh"
#: Files in a machine's node directory (besides state.json, node.json and the host key).
MACHINE_FILE = "machine.json"  # {"argv": nspawn argv, "cgroup": name}: read by the supervisor
POWER_LOG = "power.jsonl"  # {"t", "event": "boot"|"off"|"killed", "rc"} per boot and end
CONSOLE_LOG = "console.log"
KILLALL_FILE = "k3s-killall.sh"
STOPPING_MARK = ".stopping"
BINDS_FILE = "binds.json"  # [[host path, machine path], ...]: bound read-only at every boot
USR_LOCAL_DIR = "usr-local"  # a coordinator's /usr/local (read-write, persistent)
#: A lab node's role when it is the coordinator machine (not a Kubernetes node).
COORDINATOR: Final = "coordinator"
#: How long a machine may take to boot to ``running``.
BOOT_TIMEOUT_S = 60.0
#: The k3s units' TimeoutStopSec: how long ``systemctl stop`` waits before systemd kills the agent.
TIMEOUT_STOP_S = 10
#: How long the stand-in k3s takes to stop by default (``k3s.json``'s ``stop_s``).
DEFAULT_STOP_S = 0.5
_CGROUP_CONTROLLERS = ("memory", "freezer")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Host units a node must not run (the host image carries them); getty: nobody logs in on a console.
MASKED_UNITS = (
    "postgresql.service", "prometheus.service", "prometheus-node-exporter.service",
    "nut-server.service", "nut-monitor.service", "nut-driver.target", "nut-driver-enumerator.service",
    "nut-driver-enumerator.path", "nut.target", "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer", "systemd-timesyncd.service",
    "systemd-pstore.service", "console-getty.service", "getty@.service", "machines.target", "remote-fs.target",
    "cron.service", "systemd-networkd.service", "systemd-resolved.service",
)
#: NUT stays on a coordinator: the installer configures and enables it (present, never enabled by the lab).
COORDINATOR_MASKED_UNITS = tuple(u for u in MASKED_UNITS if not u.startswith("nut"))
#: The only units the machine's own /etc wants at boot.
WANTED_UNITS = {"multi-user.target.wants": ("ssh.service",)}


def sudoers_line(user: str = USER) -> str:
    """The sudoers line a node needs for Hecate, exactly the commands it sends (``ssh.sudo: true``).

    Hecate sends ``sudo -n`` + one of: ``systemctl stop|is-active|start --no-block k3s|k3s-agent``,
    ``/usr/local/bin/k3s-killall.sh`` and ``shutdown.remote_poweroff_command`` (default
    ``systemctl poweroff``). A command listed with arguments allows exactly those arguments; ``""``
    allows none.
    """
    systemctl = "/usr/bin/systemctl"
    commands = [f"{systemctl} {verb} {unit}" for verb in ("stop", "is-active", "start --no-block")
                for unit in ("k3s", "k3s-agent")]
    commands += [f'{KILLALL} ""', f"{systemctl} poweroff"]
    return f"{user} ALL=(root) NOPASSWD: " + ", ".join(commands)


def unavailable() -> str | None:
    """Why machines cannot boot here, or None when they can."""
    if os.geteuid() != 0:
        return "lab machines need root (systemd-nspawn, network namespaces, cgroups)"
    for path, package in ((NSPAWN, "systemd-container"), (SYSTEMD, "systemd"), ("/usr/bin/sudo", "sudo"),
                          ("/usr/sbin/sshd", "openssh-server"), ("/usr/bin/python3", "python3")):
        if not os.access(path, os.X_OK):
            return f"lab machines need {path} (Debian package {package}; run scripts/setup-machine.sh)"
    if not all(Path(f"/{d}").is_symlink() for d in ("bin", "lib", "sbin")):
        return "lab machines bind the host's /usr: they need a merged-/usr host (/bin, /lib, /sbin -> usr/)"
    if not _cgroup_v1() and not (_CGROUP_ROOT / "cgroup.controllers").exists():
        return "lab machines need cgroups (memory and freezer)"
    return None


# --------------------------------------------------------------------------- the root directory


def root_of(node: LabNode) -> Path:
    return node.dir.parent / f"{node.name}.root"


def cgroup_name(node: LabNode) -> str:
    return f"hecate-lab-{node.netns or node.name}"


def _unit(role_unit: str, timeout_stop_s: float) -> str:
    agent = "/usr/local/lib/hecate-lab/hecate_lab/k3s_agent.py"
    node_dir = str(k3s_agent.NODE_DIR)
    return "\n".join([
        "# hecate lab: a real unit named like k3s's, running the lab's stand-in (hecate_lab.k3s_agent)",
        "[Unit]",
        f"Description=Lightweight Kubernetes ({role_unit}, hecate lab stand-in)",
        "After=network.target",
        "[Service]",
        "Type=notify",
        # As k3s's own unit: stopping kills the main process only; its "containers" stay for k3s-killall.sh.
        "KillMode=process",
        f"ExecStart=/usr/bin/python3 -I {agent} {node_dir} {role_unit}",
        f"ExecStopPost=/usr/bin/python3 -I {agent} --stopped {node_dir} {role_unit}",
        f"TimeoutStopSec={timeout_stop_s:g}",
        "Restart=no",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


_KILLALL_SCRIPT = f"""#!/bin/sh
# hecate lab: k3s-killall.sh's stand-in. Like k3s's own: stop the k3s units, then kill what they
# left (k3s's unit has KillMode=process: its containers survive a stop).
for unit in k3s k3s-agent; do
    systemctl stop "$unit" 2>/dev/null
done
pkill -KILL -f '^{k3s_agent.SHIM_MARK}' || true
echo "k3s-killall: stopped k3s units, killed what they left"
"""


def _sshd_config(node: LabNode) -> str:
    return "\n".join([
        f"# hecate lab machine {node.name}: the distribution's sshd, key-only, one user",
        "Port 22",
        f"ListenAddress {node.address}",
        "AddressFamily inet",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PermitRootLogin no",
        f"AllowUsers {USER}",
        *nodes.SSHD_KEY_ONLY,
        "",
    ])


def _free_id(etc: Path) -> int:
    used = set()
    for name in ("passwd", "group"):
        for line in (etc / name).read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                used.add(int(fields[2]))
    return next(i for i in range(4200, 60000) if i not in used)


def build_root(node: LabNode, *, authorized_key: str, timeout_stop_s: float = TIMEOUT_STOP_S) -> Path:
    """A fresh root directory for ``node`` (whatever was there is replaced).

    A coordinator (``node.role == "coordinator"``) gets no k3s units and keeps the NUT units
    (present, not enabled); its ``/usr/local`` is ``<node dir>/usr-local``, made empty here.
    """
    coordinator = node.role == COORDINATOR
    root = root_of(node)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o755)
    for name in ("usr", "var/log/journal", "var/lib", "var/tmp", "root", "home", "tmp", "run", "proc", "sys",
                 "dev", "mnt", "srv", "opt"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{link}").is_symlink():
            (root / link).symlink_to(f"usr/{link}")
    subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True, capture_output=True)
    etc = root / "etc"
    # nspawn checks for os-release before /usr is bound: a real file, not the link into /usr.
    (etc / "os-release").unlink(missing_ok=True)
    shutil.copy("/usr/lib/os-release", etc / "os-release")
    (etc / "machine-id").write_text("")
    (etc / "hostname").write_text(node.name + "\n")
    (etc / "fstab").write_text("")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{node.name}\n{node.address}\t{node.name}\n")
    # sshd: the node's host key (the one the lab's known_hosts holds) and a config of its own.
    ssh = etc / "ssh"
    for stale in ssh.glob("ssh_host_*"):
        stale.unlink()
    for extra in (ssh / "sshd_config.d").glob("*"):
        extra.unlink()
    shutil.copy(node.dir / nodes.HOST_KEY, ssh / "ssh_host_ed25519_key")
    shutil.copy(node.dir / f"{nodes.HOST_KEY}.pub", ssh / "ssh_host_ed25519_key.pub")
    (ssh / "ssh_host_ed25519_key").chmod(0o600)
    (ssh / "sshd_config").write_text(_sshd_config(node))
    # systemd: only sshd wanted, the host's services masked, the k3s units present but disabled.
    units = etc / "systemd" / "system"
    for wants in list(units.glob("*.wants")) + list(units.glob("*.requires")):
        keep = WANTED_UNITS.get(wants.name, ())
        for entry in wants.iterdir():
            if entry.name not in keep:
                entry.unlink()
    for unit in COORDINATOR_MASKED_UNITS if coordinator else MASKED_UNITS:
        target = units / unit
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to("/dev/null")
    default = units / "default.target"
    default.unlink(missing_ok=True)
    default.symlink_to("/usr/lib/systemd/system/multi-user.target")
    for unit in () if coordinator else ("k3s", "k3s-agent"):
        (units / f"{unit}.service").write_text(_unit(unit, timeout_stop_s))
    # The hecate user: no password, only the lab's key; sudo for exactly what Hecate runs.
    uid = _free_id(etc)
    home = root / "home" / USER
    with open(etc / "passwd", "a") as fh:
        fh.write(f"{USER}:x:{uid}:{uid}:Hecate:/home/{USER}:/bin/sh\n")
    with open(etc / "group", "a") as fh:
        fh.write(f"{USER}:x:{uid}:\n")
    for name in ("shadow", "gshadow"):
        if (etc / name).exists():
            with open(etc / name, "a") as fh:
                fh.write(f"{USER}:*:19000:0:99999:7:::\n" if name == "shadow" else f"{USER}:!::\n")
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text(authorized_key)
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
        os.chown(path, uid, uid)
    sudoers = etc / "sudoers.d" / USER
    sudoers.write_text("# What Hecate runs on a node (ssh.sudo: true): docs/shutdown.md\n" + sudoers_line() + "\n")
    sudoers.chmod(0o440)
    if coordinator:
        usr_local = node.dir / USR_LOCAL_DIR
        if usr_local.exists():
            shutil.rmtree(usr_local)
        for sub in ("bin", "sbin", "lib", "share", "etc", "include", "src"):
            (usr_local / sub).mkdir(parents=True, mode=0o755)
        usr_local.chmod(0o755)
        return root
    # What the machine binds from its node directory.
    killall = node.dir / KILLALL_FILE
    killall.write_text(_KILLALL_SCRIPT)
    killall.chmod(0o755)
    if not (node.dir / k3s_agent.CONFIG_FILE).exists():
        set_k3s(node, stop_s=DEFAULT_STOP_S, ignore_sigterm=False)
    return root


def set_k3s(node: LabNode, *, stop_s: float | None = None, ignore_sigterm: bool | None = None) -> None:
    """How the node's stand-in k3s stops: after ``stop_s`` seconds, or never on SIGTERM (a fault)."""
    config = k3s_agent.read_config(node.dir)
    if stop_s is not None:
        if stop_s < 0:
            raise ValueError(f"stop_s must be >= 0, not {stop_s}")
        config["stop_s"] = float(stop_s)
    if ignore_sigterm is not None:
        config["ignore_sigterm"] = bool(ignore_sigterm)
    nodes._atomic_write(node.dir / k3s_agent.CONFIG_FILE, json.dumps(config) + "\n")


def set_binds(node: LabNode, binds: Sequence[tuple[Path, str]]) -> None:
    """What the machine binds read-only at every boot (``host path -> machine path``)."""
    nodes._atomic_write(node.dir / BINDS_FILE, json.dumps([[str(src), dst] for src, dst in binds]) + "\n")


def binds(node: LabNode) -> list[tuple[Path, str]]:
    try:
        return [(Path(src), str(dst)) for src, dst in json.loads((node.dir / BINDS_FILE).read_text())]
    except FileNotFoundError:
        return []


def nspawn_argv(node: LabNode) -> list[str]:
    if node.netns is None:
        raise LabError(f"lab machine {node.name} needs a network namespace")
    argv = [
        NSPAWN, "--quiet", "--boot", "--register=no", "--keep-unit", "--console=read-only",
        f"--directory={root_of(node)}", f"--machine={node.name}",
        f"--network-namespace-path=/run/netns/{node.netns}",
        "--bind-ro=/usr",
    ]
    if node.role == COORDINATOR:
        argv.append(f"--bind={node.dir / USR_LOCAL_DIR}:/usr/local")
    else:
        lab_pkg = Path(__file__).resolve().parent
        argv += [
            "--tmpfs=/usr/local:mode=0755",
            f"--bind-ro={lab_pkg}:/usr/local/lib/hecate-lab/hecate_lab",
            f"--bind-ro={node.dir / KILLALL_FILE}:{KILLALL}",
            f"--bind={node.dir}:{k3s_agent.NODE_DIR}",
        ]
    # A directory, never a single file: a file replaced by rename (the UPS's .dev) stays visible.
    argv += [f"--bind-ro={src}:{dst}" for src, dst in binds(node)]
    return argv


# --------------------------------------------------------------------------- cgroups


def _cgroup_v1() -> bool:
    return all((_CGROUP_ROOT / c).is_dir() for c in _CGROUP_CONTROLLERS)


def _cgroup_dirs(name: str) -> list[Path]:
    """The machine's own cgroups. With cgroup v1 also its own ``name=systemd`` (and hybrid ``unified``)
    group: nspawn puts the machine in ``<its group>/payload``, which two machines must not share."""
    if _cgroup_v1():
        hierarchies = [*_CGROUP_CONTROLLERS, *(h for h in ("systemd", "unified") if (_CGROUP_ROOT / h).is_dir())]
        return [_CGROUP_ROOT / h / name for h in hierarchies]
    return [_CGROUP_ROOT / name]


def _remove_cgroups(name: str) -> None:
    for path in _cgroup_dirs(name):
        if not path.is_dir():
            continue
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for path in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (path / "cgroup.procs").read_text().split())
    return pids


def _join_cgroups(name: str) -> None:
    """Runs in the nspawn child before exec: into the machine's own cgroups."""
    for path in _cgroup_dirs(name):
        path.mkdir(exist_ok=True)
        (path / "cgroup.procs").write_text(str(os.getpid()))


def freeze(node: LabNode, frozen: bool = True) -> None:
    """Freeze (or thaw) every process of the machine: it stops answering, SSH hangs (a fault)."""
    name = cgroup_name(node)
    if _cgroup_v1():
        (_CGROUP_ROOT / "freezer" / name / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
    else:
        (_CGROUP_ROOT / name / "cgroup.freeze").write_text("1" if frozen else "0")


def memory_bytes(node: LabNode) -> int | None:
    """The machine's resident memory: its cgroup's RSS (page cache not counted), or None."""
    path = _CGROUP_ROOT / "memory" / cgroup_name(node) / "memory.stat"
    if not _cgroup_v1():
        path = _CGROUP_ROOT / cgroup_name(node) / "memory.stat"
    with contextlib.suppress(OSError):
        stat = dict(line.split() for line in path.read_text().splitlines())
        keys = ("total_rss", "total_mapped_file") if "total_rss" in stat else ("anon", "file_mapped")
        return sum(int(stat.get(k, 0)) for k in keys)
    return None


# --------------------------------------------------------------------------- supervisor


def _record(node_dir: Path, event: str, rc: int | None = None) -> None:
    with open(node_dir / POWER_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": time.time(), "event": event, "rc": rc}) + "\n")


def supervise(node_dir: Path) -> int:
    """Run one boot of the machine described in ``node_dir/machine.json`` and record its end."""
    spec = json.loads((node_dir / MACHINE_FILE).read_text())
    name = spec["cgroup"]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the lab ends a machine through its cgroup
    with open(node_dir / CONSOLE_LOG, "ab") as console:
        proc = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, preexec_fn=lambda: _join_cgroups(name))
        _record(node_dir, "boot")
        rc = proc.wait()
    stopping = (node_dir / STOPPING_MARK).exists()
    with contextlib.suppress(OSError, ValueError):
        state = nodestate.read_state(node_dir)
        state["power"] = "off"
        state["services"] = dict.fromkeys(state.get("services", {}), "inactive")
        nodestate.write_state(node_dir, state)
    # After the state: whoever sees the end in the power log finds the node's state off too.
    _record(node_dir, "killed" if stopping else "off", rc)
    _remove_cgroups(name)
    return 0


# --------------------------------------------------------------------------- boot, run, stop


def pid1(node: LabNode) -> int | None:
    """The host pid of the machine's systemd (PID 1 inside), or None when it is not running."""
    for pid in sorted(_cgroup_pids(cgroup_name(node))):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2 and line.split()[-1] == "1":
                    return pid
    return None


#: The environment of a command run in a machine: its root's, not the caller's (no HECATE_*, PIP_*, ...).
MACHINE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh"}


def machine_run(node: LabNode, argv: Sequence[str], *, timeout: float = 30.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the machine (all its namespaces) as its root, with its root's environment
    (:data:`MACHINE_ENV`), never the caller's."""
    pid = pid1(node)
    if pid is None:
        raise LabError(f"lab machine {node.name} is not running")
    proc = subprocess.run([NSENTER, "-t", str(pid), "-a", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False, env=MACHINE_ENV)
    if check and proc.returncode != 0:
        raise LabError(f"{node.name}: `{' '.join(argv)}` exited {proc.returncode}: "
                       f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc


def boot(node: LabNode) -> LabNode:
    """Start the machine (its supervisor); returns the node with the supervisor's pid."""
    (node.dir / STOPPING_MARK).unlink(missing_ok=True)
    nodes._atomic_write(node.dir / MACHINE_FILE,
                        json.dumps({"argv": nspawn_argv(node), "cgroup": cgroup_name(node)}) + "\n")
    with contextlib.suppress(OSError, ValueError):
        state = nodestate.read_state(node.dir)
        state["power"] = "on"
        nodestate.write_state(node.dir, state)
    proc = subprocess.Popen([sys.executable, "-m", "hecate_lab.machines", "supervise", str(node.dir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    nodes._register_child(proc)
    node.pid = proc.pid
    return node


def wait_running(node: LabNode, timeout: float = BOOT_TIMEOUT_S, *, settled: bool = True) -> float:
    """Wait until the machine's systemd reports ``running`` (boot finished, nothing failed); returns
    the seconds it took. A machine that ends or degrades meanwhile is an error naming its console.

    ``settled=False`` waits only until its systemd answers and works through the boot (``starting``,
    or already ``running``/``degraded``): a coordinator's enabled units (an installed
    ``hecate-bootstrap.service`` starting the cluster) may take longer than any boot wait, and a
    failed one is theirs to report, not the lab's.
    """
    start = time.monotonic()
    deadline = start + timeout
    while (pid := pid1(node)) is None:
        if node.pid is not None and nodes._child_exited(node.pid):
            raise LabError(f"lab machine {node.name} ended while booting: {_tail(node.dir / CONSOLE_LOG)}")
        if time.monotonic() > deadline:
            raise LabError(f"lab machine {node.name} did not start in {timeout:g} s: {_tail(node.dir / CONSOLE_LOG)}")
        time.sleep(0.02)
    while True:  # "offline": its systemd does not answer on its bus yet
        left = max(1.0, deadline - time.monotonic())
        try:
            proc = subprocess.run([NSENTER, "-t", str(pid), "-a", "systemctl", "is-system-running",
                                   *(["--wait"] if settled else [])],
                                  capture_output=True, text=True, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            raise LabError(f"lab machine {node.name} did not boot in {timeout:g} s") from None
        if proc.stdout.strip() not in ("", "offline", "initializing") or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    status = proc.stdout.strip()
    if not settled and status in ("starting", "running", "degraded"):
        return time.monotonic() - start
    if status != "running":
        failed = machine_run(node, ["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
        raise LabError(f"lab machine {node.name} booted {status or proc.stderr.strip()!r}; failed units: "
                       f"{' '.join(line.split()[0] for line in failed.splitlines() if line.split()) or 'none'}")
    return time.monotonic() - start


def start_k3s(node: LabNode) -> None:
    """Start the node's k3s unit (it stays disabled at boot): what an enabled unit would do."""
    if node.role == COORDINATOR:
        return
    machine_run(node, ["systemctl", "start", nodestate.service_for(node.role)])


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty console)"
    except OSError:
        return "(no console log)"


def start_machines(workdir: Path, specs: list[NodeSpec], *, client_pubkey: Path, known_hosts: Path,
                   lab_id: str, subnet: str, coordinator: str | None = None,
                   coordinator_binds: Sequence[tuple[Path, str]] = ()) -> list[LabNode]:
    """Build, boot and wait for one machine per spec, each in its own namespace, k3s started.

    With ``coordinator`` (its name) one more machine, last in the list: role ``coordinator``, in
    namespace index 0 at ``<subnet>.10``, with ``coordinator_binds`` bound read-only.
    Writes ``known_hosts`` (every machine's host key). On any failure everything started so far
    is stopped and removed before the error propagates.
    """
    why = unavailable()
    if why:
        raise LabError(why)
    nodes._validate(specs + ([NodeSpec(coordinator, "server")] if coordinator else []), workdir, True,
                    lab_id, subnet)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    key = client_pubkey.read_text()
    machines = [
        LabNode(name=spec.name, role=spec.role, address=f"{subnet}.{10 + i}", port=22, dir=workdir / spec.name,
                netns=network.namespace_name(lab_id, i), machine=True)
        for i, spec in enumerate(specs, start=1)
    ]
    if coordinator:
        machines.append(LabNode(name=coordinator, role=COORDINATOR, address=f"{subnet}.10", port=22,
                                dir=workdir / coordinator, netns=network.namespace_name(lab_id, 0), machine=True))
    try:
        for node in machines:
            node.dir.mkdir(parents=True, exist_ok=True)
            for stale in (POWER_LOG, CONSOLE_LOG, k3s_agent.CONFIG_FILE, STOPPING_MARK, BINDS_FILE):
                (node.dir / stale).unlink(missing_ok=True)
            meta = {"name": node.name, "role": node.role, "netns": node.netns, "machine": True}
            nodes._atomic_write(node.dir / "node.json", json.dumps(meta) + "\n")
            services = {} if node.role == COORDINATOR else {nodestate.service_for(node.role): "inactive"}
            nodestate.write_state(node.dir, {"power": "off", "services": services})
            if node.role == COORDINATOR:
                set_binds(node, coordinator_binds)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(machines)))) as pool:
            list(pool.map(lambda n: nodes._keygen(n.dir / nodes.HOST_KEY, f"{n.name}@hecate-lab"), machines))
            list(pool.map(lambda n: build_root(n, authorized_key=key), machines))
        network.setup([(n.netns, n.address) for n in machines if n.netns], lab_id, subnet)
        for node in machines:
            boot(node)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(machines)))) as pool:
            list(pool.map(wait_running, machines))
            list(pool.map(start_k3s, machines))
        nodes._wait_ready(machines, time.monotonic() + BOOT_TIMEOUT_S)
        nodes._write_known_hosts(machines, known_hosts)
    except BaseException:
        stop_machines(machines)
        network.cleanup(lab_id, on_poll=nodes._reap_children)
        raise
    return machines


def power_on(node: LabNode, *, k3s_at_boot: bool = False) -> LabNode:
    """Boot a powered-off machine again and wait until it runs (and its sshd answers).

    Its k3s unit stays off (disabled at boot) unless ``k3s_at_boot``. A running machine is left as it is.
    """
    if pid1(node) is not None:
        return node
    _kill(node)  # whatever a previous boot left (a supervisor still recording the end)
    booted = boot(node)
    try:
        # A coordinator boots its own enabled units (an installed Hecate): not awaited, not judged.
        wait_running(booted, settled=node.role != COORDINATOR)
        if k3s_at_boot:
            start_k3s(booted)
        nodes._wait_ready([booted], time.monotonic() + BOOT_TIMEOUT_S)
    except BaseException:
        stop_machines([booted])
        raise
    return booted


def _kill(node: LabNode, timeout: float = 10.0) -> None:
    name = cgroup_name(node)
    if any(d.exists() for d in _cgroup_dirs(name)):
        with contextlib.suppress(OSError):
            freeze(node, False)  # a frozen process does not die until thawed
    deadline = time.monotonic() + timeout
    first = True
    while pids := _cgroup_pids(name):
        if not first and time.monotonic() > deadline:
            raise LabError(f"lab machine {node.name}: processes {sorted(pids)[:10]} survive SIGKILL")
        # The machine's PID 1 first: the kernel ends the whole PID namespace with it.
        targets = [p for p in [pid1(node)] if p is not None] if first else sorted(pids)
        for pid in targets or sorted(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first = False
        nodes._reap_children()
        time.sleep(0.05)
    if node.pid is not None:  # the supervisor records the end, then exits
        end = time.monotonic() + 5.0
        while not _gone(node.pid) and time.monotonic() < end:
            nodes._reap_children()
            time.sleep(0.02)
        if not _gone(node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
    _remove_cgroups(name)


def _gone(pid: int) -> bool:
    nodes._reap_children()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def stop_machines(machines: Iterable[LabNode]) -> None:
    """End these machines at once (SIGKILL through their cgroups, thawed first) and their supervisors.

    Not a power-off: the lab going away. Idempotent; the root directories stay (the journals).
    """
    chosen = [m for m in machines if m.machine]
    for node in chosen:
        with contextlib.suppress(OSError):
            (node.dir / STOPPING_MARK).touch()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(chosen)))) as pool:
        list(pool.map(_kill, chosen))
    for node in chosen:
        node.pid = None


def power_events(node: LabNode) -> list[dict[str, Any]]:
    """The machine's boots and ends, oldest first (``t``, ``event``: boot|off|killed, ``rc``)."""
    try:
        text = (node.dir / POWER_LOG).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


#: What a coordinator's journal shows besides the power-off: Hecate's and NUT's units and programs.
_COORDINATOR_PREFIXES = ("hecate", "nut", "upsd", "upsmon", "upsdrvctl", "dummy-ups")


def _worth_showing(entry: dict[str, Any], message: str, *, coordinator: bool = False) -> bool:
    """What Hecate made the machine do: the k3s units, sudo's command lines, the power-off; on the
    coordinator what Hecate and NUT did there (their units, their programs) and the power-off."""
    if "mount" in message.lower():
        return False
    power = "powering down" in message or message.startswith("Reached target poweroff")
    if coordinator:
        if 'hecate.run: {"event":"step-' in message:  # each step's progress: its stage's start and end suffice
            return False
        unit = str(entry.get("_SYSTEMD_UNIT") or entry.get("UNIT") or "")
        ident = str(entry.get("SYSLOG_IDENTIFIER") or "")
        return power or unit.startswith(_COORDINATOR_PREFIXES) or ident.startswith(_COORDINATOR_PREFIXES)
    return (str(entry.get("_SYSTEMD_UNIT", "")).startswith("k3s") or "k3s" in message or "COMMAND=" in message
            or power)


def journal(node: LabNode, *, all_entries: bool = False) -> list[tuple[float, str, str]]:
    """The machine's journal (every boot), as ``(time, identifier, message)``, oldest first.

    By default only what concerns Hecate: the k3s units, sudo's command lines, the power-off (on
    the coordinator: the hecate* and nut* units and programs, the power-off).
    """
    directory = root_of(node) / "var" / "log" / "journal"
    if not directory.exists():
        return []
    out = subprocess.run(["journalctl", "-D", str(directory), "-o", "json", "--no-pager", "-q"],
                         capture_output=True, text=True, check=False, timeout=30).stdout
    rows = []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue
        ident = str(entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or "?")
        if not all_entries and not _worth_showing(entry, message, coordinator=node.role == COORDINATOR):
            continue
        rows.append((int(entry["__REALTIME_TIMESTAMP"]) / 1e6, ident, message.strip()))
    return sorted(rows)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(Path(sys.argv[2])))
    print("usage: python -m hecate_lab.machines supervise NODE_DIR", file=sys.stderr)
    sys.exit(2)
