"""The forced command of a lab node's sshd: it pretends to be a k3s host.

Every SSH command sent to an emulated node ends up here (sshd's ``ForceCommand``
runs ``python -I node_shell.py <node dir>`` with the client's command line in
``SSH_ORIGINAL_COMMAND``). The shell emulates the handful of commands Hecate sends
to real nodes -- ``systemctl start|stop|restart|is-active k3s|k3s-agent``,
``k3s-killall.sh`` and ``poweroff`` -- against the node's ``state.json``
(:mod:`hecate_lab.nodestate`), logs each one to ``commands.jsonl`` and applies the
faults that tests and benchmarks put in ``faults.json`` (delays, hangs, failures).

``poweroff`` never touches the real machine: the node answers, then a detached
helper (a fork of this shell, :func:`halt`) powers the node off as systemd would:
once the answering shell has exited and :data:`HALT_DELAY_S` has passed, its sshd
and every session stop (the clients' connections close), then the node leaves the
network (its veth goes down in network-namespace labs).

It runs as a script in isolated mode for every command, so it imports the standard
library only and loads ``nodestate.py`` by path from its own directory: no
``hecate`` package import, fast start. :mod:`hecate_lab.nodes` imports it as a
module to share the file names, the lock and the process helpers below.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing, dataclasses & co. cost milliseconds on every command
    from collections.abc import Callable, Iterable, Iterator
    from types import ModuleType
    from typing import Any

# Files in a node directory (the API in hecate_lab.nodes uses the same names).
META_FILE = "node.json"  # {"name", "role", "netns", "iface"}: written once by start_nodes
FAULTS_FILE = "faults.json"  # {prefix: {"delay_s", "hang", "exit_code"}}
COMMANDS_FILE = "commands.jsonl"  # one JSON object per emulated command
LOCK_FILE = ".lock"  # flock'ed around state read-modify-write and log appends
PID_FILE = "sshd.pid"  # the node's sshd (PidFile in its sshd_config)
SSHD_CONFIG = "sshd_config"
HALT_LOG = "halt.log"
HALT_PID_FILE = "halt.pid"  # the poweroff helper while it runs

#: Fault key that applies to every command no other prefix matches.
ANY_COMMAND = "*"
#: Units a lab node knows about (``.service`` suffix optional).
KNOWN_UNITS = ("k3s", "k3s-agent", "nfs-server")  # nfs-server: a lab host outside the cluster (a NAS)
#: How long after the answering shell exits the node's sshd (and its sessions) stop.
HALT_DELAY_S = 0.3
#: The longest the poweroff helper waits for the answering shell to exit.
HALT_SHELL_WAIT_S = 10.0

_SUDO_FLAGS = {"-n", "--non-interactive", "-E", "--preserve-env", "-H", "--set-home", "--"}


def _load_nodestate() -> ModuleType:
    """nodestate.py from this directory, without importing the hecate package."""
    loaded = sys.modules.get("hecate_lab.nodestate")
    if loaded is not None:  # imported as part of hecate_lab: reuse that module
        return loaded
    path = Path(__file__).with_name("nodestate.py")
    spec = importlib.util.spec_from_file_location("_hecate_lab_nodestate", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nodestate = _load_nodestate()


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def locked(node_dir: Path) -> Iterator[None]:
    """Hold the node's exclusive lock (parallel SSH sessions share one node dir)."""
    fd = os.open(node_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def read_json(path: Path, default: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def append_record(node_dir: Path, record: dict[str, Any]) -> None:
    """Append one line to commands.jsonl (caller holds the lock)."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    fd = os.open(node_dir / COMMANDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- parsing


def strip_sudo(argv: list[str]) -> list[str]:
    """``sudo -n systemctl stop k3s`` -> ``systemctl stop k3s``."""
    if not argv or argv[0] != "sudo":
        return argv
    rest = argv[1:]
    while rest and rest[0] in _SUDO_FLAGS:
        rest = rest[1:]
    return rest


def match_fault(faults: dict[str, Any], argv: list[str]) -> dict[str, Any] | None:
    """The fault whose prefix matches the command, longest prefix first.

    Prefixes match whole words (``systemctl stop k3s`` does not match
    ``systemctl stop k3s-agent``); ``"*"`` is the empty prefix, the fallback that
    matches every command.
    """
    best: tuple[int, dict[str, Any]] | None = None
    for prefix, fault in faults.items():
        words = [] if prefix == ANY_COMMAND else prefix.split()
        if argv[: len(words)] == words and (best is None or len(words) > best[0]):
            best = (len(words), fault)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- emulation


class Result:
    """What an emulated command answers."""

    __slots__ = ("err", "halt", "out", "rc")

    def __init__(self, rc: int, out: str = "", err: str = "", *, halt: bool = False) -> None:
        self.rc = rc
        self.out = out
        self.err = err
        self.halt = halt  # leave the network after the reply


def _unit(name: str) -> str:
    return name.removesuffix(".service")


def _power_off(state: dict[str, Any]) -> Result:
    state["power"] = "off"
    for unit in state.setdefault("services", {}):
        state["services"][unit] = "inactive"
    return Result(0, halt=True)


def _systemctl(args: list[str], state: dict[str, Any]) -> Result:
    quiet = any(a in ("-q", "--quiet") for a in args)
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return Result(1, err="hecate-lab: systemctl without a verb is not emulated\n")
    verb, units = words[0], [_unit(u) for u in words[1:]]
    services: dict[str, str] = state.setdefault("services", {})
    if verb == "poweroff" and not units:
        return _power_off(state)
    if verb in ("start", "stop", "restart"):
        if not units:
            return Result(1, err="Too few arguments.\n")
        for unit in units:
            if unit not in KNOWN_UNITS:
                why = "not loaded" if verb == "stop" else "not found"
                return Result(5, err=f"Failed to {verb} {unit}.service: Unit {unit}.service {why}.\n")
        for unit in units:
            services[unit] = "inactive" if verb == "stop" else "active"
        return Result(0)
    if verb == "is-active":
        if not units:
            return Result(1, err="Too few arguments.\n")
        states = [services.get(unit, "inactive") for unit in units]
        out = "" if quiet else "".join(s + "\n" for s in states)
        return Result(0 if all(s == "active" for s in states) else 3, out=out)
    return Result(1, err=f"hecate-lab: 'systemctl {verb}' is not emulated\n")


def emulate(argv: list[str], state: dict[str, Any], meta: dict[str, Any]) -> Result:
    """Run one command against ``state`` (mutated in place). Purely computational."""
    if not argv:
        return Result(1, err="hecate-lab: interactive logins are not emulated; send a command\n")
    if state.get("power") != "on":
        return Result(255, err="hecate-lab: node is powered off\n")
    name, args = argv[0], argv[1:]
    if name.startswith("/"):  # /usr/local/bin/k3s-killall.sh, /usr/bin/systemctl, ...
        name = name.rsplit("/", 1)[1]
    if name == "systemctl":
        return _systemctl(args, state)
    if name == "k3s-killall.sh" and not args:
        for unit in state.setdefault("services", {}):
            state["services"][unit] = "inactive"
        return Result(0)
    if name == "poweroff" and all(a in ("-f", "--force", "-p") for a in args):
        return _power_off(state)
    if name == "shutdown":
        if args in (["-h", "now"], ["-P", "now"], ["now"], ["-h", "+0"], ["-P", "+0"]):
            return _power_off(state)
        return Result(1, err="hecate-lab: only an immediate 'shutdown -h now' is emulated\n")
    if name == "hostname" and not args:
        return Result(0, out=str(meta.get("name", "")) + "\n")
    if name == "true":
        return Result(0)
    if name == "echo":
        if args[:1] == ["-n"]:
            return Result(0, out=" ".join(args[1:]))
        return Result(0, out=" ".join(args) + "\n")
    return Result(127, err=f"bash: {argv[0]}: command not found\n")


# --------------------------------------------------------------------------- processes


class Proc:
    """One /proc entry."""

    __slots__ = ("argv", "ppid", "state")

    def __init__(self, ppid: int, state: str, argv: tuple[str, ...]) -> None:
        self.ppid = ppid
        self.state = state  # one-letter /proc state; "Z" is a zombie
        self.argv = argv  # as in /proc/PID/cmdline (sshd rewrites it into one string)


def read_proc(pid: int) -> Proc | None:
    """One process's /proc entry, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return Proc(ppid=int(fields[1]), state=fields[0],
                argv=tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a))


def process_table() -> dict[int, Proc]:
    """A snapshot of /proc: pid -> parent, state and argv (processes that exit meanwhile are left out)."""
    table = {int(entry): read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()}
    return {pid: proc for pid, proc in table.items() if proc is not None}


def is_sshd_of(proc: Proc | None, node_dir: Path) -> bool:
    """True when ``proc`` is the listening sshd started for this node directory.

    sshd retitles itself ("sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ..."),
    so the words of the whole command line are compared.
    """
    if proc is None or not proc.argv:
        return False
    words = " ".join(proc.argv).split()
    return words[0].rstrip(":").endswith("sshd") and str(node_dir / SSHD_CONFIG) in words


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _depths(roots: Iterable[int], table: dict[int, Proc]) -> dict[int, int]:
    """Every process in the trees under ``roots`` -> its depth in them (0 = top).

    Depth counts ancestors inside the set, so a root that is itself a descendant of
    another root (``ip netns pids`` lists whole trees) still sorts below its parent.
    """
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    members: set[int] = set()
    stack = [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, ()))
    depth: dict[int, int] = {}
    for pid in members:
        d, parent = 0, table[pid].ppid
        while parent in members and d <= len(members):
            d, parent = d + 1, table[parent].ppid
        depth[pid] = d
    return depth


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X")


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(
    pids: set[int], timeout: float, on_poll: Callable[[], None] | None, *, reaped: bool
) -> set[int]:
    """Wait until ``pids`` are dead (and, if ``reaped``, removed by their parent)."""
    deadline = time.monotonic() + timeout
    while True:
        if on_poll is not None:
            on_poll()
        left = {p for p in pids if (os.path.exists(f"/proc/{p}") if reaped else not _gone(p))}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def kill_trees(
    roots: Iterable[int],
    *,
    extra: Iterable[int] = (),
    exclude: Iterable[int] = (),
    grace_s: float = 1.0,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """SIGTERM (then SIGKILL) ``roots``, all their descendants and ``extra``.

    Leaves go first and each level is given time to be reaped by its still-living
    parent before the parent itself is signalled, so no orphans are left to an init
    that may not reap them (as in some containers). ``on_poll`` lets the caller
    reap its own children while waiting.
    """
    table = process_table()
    skip = set(exclude) | {os.getpid()}
    depth = _depths(roots, table)
    top = max(depth.values(), default=0) + 1
    for pid in extra:
        if pid in table and pid not in depth:
            depth[pid] = top  # strays whose tree is gone: plain leaves
    levels: dict[int, set[int]] = {}
    for pid, d in depth.items():
        if pid not in skip:
            levels.setdefault(d, set()).add(pid)
    for d in sorted(levels, reverse=True):
        pids = levels[d]
        _signal(pids, signal.SIGTERM)
        left = _wait_gone(pids, grace_s, on_poll, reaped=False)
        if left:
            _signal(left, signal.SIGKILL)
            _wait_gone(left, grace_s, on_poll, reaped=False)
        # Give the parents (the next level up, still alive) a moment to reap.
        _wait_gone(pids, 0.2 if d else 0.0, on_poll, reaped=True)


# --------------------------------------------------------------------------- entry points


def halt_helper(node_dir: Path) -> int | None:
    """The pid of this node's poweroff helper while it runs, else None.

    The helper is a fork of a node shell (same command line), recorded in ``halt.pid``.
    """
    pid = read_pid(node_dir / HALT_PID_FILE)
    proc = None if pid is None else read_proc(pid)
    if proc is None or proc.state in ("Z", "X") or str(node_dir) not in proc.argv:
        return None
    return pid


def halt(node_dir: Path, shell_pid: int) -> None:
    """Power the node off, in systemd's order: sessions and sshd stop, then the network goes.

    Waits for ``shell_pid`` (the shell that answered ``poweroff``) to exit, so that its
    exit status is in sshd's hands, and :data:`HALT_DELAY_S` more. Then sshd and every
    session stop while the link is still up: a client gets the reply or sees its
    connection close, never silence, however loaded the machine. Then the veth goes
    down (netns labs): new connections fail.
    """
    deadline = time.monotonic() + HALT_SHELL_WAIT_S
    while not _gone(shell_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(HALT_DELAY_S)
    pid = read_pid(node_dir / PID_FILE)
    if pid is not None and is_sshd_of(read_proc(pid), node_dir):
        kill_trees([pid], grace_s=0.5)
    meta = read_json(node_dir / META_FILE, {})
    netns, iface = meta.get("netns"), meta.get("iface")
    if netns and iface:
        import subprocess  # only the rare halt path needs it

        # -n names the node's own namespace explicitly: never a root-namespace link.
        subprocess.run(["ip", "-n", netns, "link", "set", iface, "down"], check=False)


def _spawn_halt(node_dir: Path) -> None:
    """Start :func:`halt` in a detached process: a double fork, no new interpreter (a hundred
    nodes powering off at once must not cost a hundred Python start-ups on the CPUs their
    replies need). The helper holds none of the session's pipes, so the session ends at once;
    its pid is in ``halt.pid`` before this returns."""
    shell = os.getpid()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    code = 1
    try:
        os.setsid()
        helper = os.fork()
        if helper:
            with open(node_dir / HALT_PID_FILE, "w", encoding="utf-8") as fh:
                fh.write(f"{helper}\n")
            code = 0
        else:
            log = os.open(node_dir / HALT_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in {int(name) for name in os.listdir("/proc/self/fd")} - {0, 1, 2}:
                with contextlib.suppress(OSError):
                    os.close(fd)
            halt(node_dir, shell)
            with contextlib.suppress(OSError):
                if read_pid(node_dir / HALT_PID_FILE) == os.getpid():
                    os.unlink(node_dir / HALT_PID_FILE)
            code = 0
    except BaseException:  # never back into the shell's code: this is a forked child
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def run(node_dir: Path, command: str) -> int:
    t0 = time.time()
    meta = read_json(node_dir / META_FILE, {})
    try:
        argv = strip_sudo(shlex.split(command))
    except ValueError as err:
        argv, parse_error = [], f"bash: syntax error: {err}\n"
    else:
        parse_error = ""

    fault = None if parse_error else match_fault(read_json(node_dir / FAULTS_FILE, {}), argv)
    if fault and fault.get("hang"):
        with locked(node_dir):
            append_record(node_dir, {"t": t0, "t_end": None, "cmd": command, "rc": None, "hang": True})
        while True:  # until the session or the lab kills us
            time.sleep(3600)
    if fault and fault.get("delay_s"):
        time.sleep(float(fault["delay_s"]))

    with locked(node_dir):
        if parse_error:
            result = Result(2, err=parse_error)
        elif fault and fault.get("exit_code") is not None:
            result = Result(int(fault["exit_code"]), err=f"hecate-lab: injected failure of {command!r}\n")
        else:
            state = nodestate.read_state(node_dir)
            before = json.dumps(state, sort_keys=True)
            result = emulate(argv, state, meta)
            if json.dumps(state, sort_keys=True) != before:
                nodestate.write_state(node_dir, state)
        append_record(node_dir, {"t": t0, "t_end": time.time(), "cmd": command, "rc": result.rc})

    sys.stdout.write(result.out)
    sys.stderr.write(result.err)
    sys.stdout.flush()
    sys.stderr.flush()
    if result.halt:
        _spawn_halt(node_dir)
    return result.rc


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: node_shell.py NODE_DIR\n")
        return 2
    return run(Path(argv[1]), os.environ.get("SSH_ORIGINAL_COMMAND", ""))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
