"""The network of a netns lab: one network namespace per node, a veth from each into one bridge.

As root, :mod:`hecate_lab.nodes` puts every lab node in its own namespace ``hl<lab_id>-<i>``
whose ``eth0`` is the far end of a veth ``hl<lab_id>v<i>`` plugged into the bridge
``hlbr<lab_id>``; the bridge has ``<subnet>.1/24``, node *i* (1-based) ``<subnet>.<10+i>/24``.
Everything is named after the lab id, so what a killed lab left behind is found and removed
by name (:func:`cleanup`). All of it goes through ``ip`` (iproute2), batched.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from hecate_lab import node_shell
from hecate_lab.procs import LabError

#: Name of a node's interface inside its namespace.
NS_IFACE = "eth0"
LAB_ID_RE = re.compile(r"[a-z0-9]{1,8}")


def ip(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def namespace_name(lab_id: str, index: int) -> str:
    return f"hl{lab_id}-{index}"


def veth_name(netns: str) -> str:
    """Root-namespace end of a node's veth: ``hl<id>-<i>`` -> ``hl<id>v<i>``."""
    prefix, _, index = netns.rpartition("-")
    return f"{prefix}v{index}"


def bridge_name(lab_id: str) -> str:
    return f"hlbr{lab_id}"


def namespaces() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def links() -> set[str]:
    out = ip("-o", "link", "show", check=False).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def check_free(lab_id: str, subnet: str) -> None:
    """The lab id and subnet are usable: well-formed, root, the subnet and the names unused on this host."""
    if not LAB_ID_RE.fullmatch(lab_id):
        raise ValueError(f"lab_id {lab_id!r}: 1-8 lowercase letters/digits (interface names are <= 15 chars)")
    try:
        net = ipaddress.IPv4Network(f"{subnet}.0/24")
    except ValueError as err:
        raise ValueError(f"subnet {subnet!r}: give three octets, like '10.77.3'") from err
    if os.geteuid() != 0:
        raise LabError("netns=True needs root (ip netns, veth, bridge); use netns=False")
    taken = ip("-o", "-4", "addr", "show", check=False).stdout
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", taken):
        iface_net = ipaddress.IPv4Network(f"{match.group(1)}/{match.group(2)}", strict=False)
        if iface_net.overlaps(net) and iface_net.prefixlen > 0:
            raise LabError(f"subnet {net} is already in use on this host ({match.group(0)}); pick another")
    if bridge_name(lab_id) in links() or any(re.fullmatch(rf"hl{lab_id}-\d+", n) for n in namespaces()):
        raise LabError(f"lab {lab_id!r} already has namespaces or a bridge; run cleanup_netns({lab_id!r})")


def setup(nodes: Sequence[tuple[str, str]], lab_id: str, subnet: str) -> None:
    """The bridge, then per node (``(namespace, address)``) its namespace, veth and address."""
    bridge = bridge_name(lab_id)
    batch = [
        f"link add {bridge} type bridge",
        f"addr add {subnet}.1/24 dev {bridge}",
        f"link set {bridge} up",
    ]
    for netns, _ in nodes:
        veth = veth_name(netns)
        batch += [
            f"netns add {netns}",
            f"link add {veth} type veth peer name {NS_IFACE} netns {netns}",
            f"link set {veth} master {bridge} up",
        ]
    ip("-batch", "-", stdin="\n".join(batch) + "\n")

    def configure(node: tuple[str, str]) -> None:
        netns, address = node
        inside = [f"addr add {address}/24 dev {NS_IFACE}", "link set lo up", f"link set {NS_IFACE} up"]
        ip("-n", netns, "-batch", "-", stdin="\n".join(inside) + "\n")

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(nodes)))) as pool:
        list(pool.map(configure, nodes))


def link_up(netns: str) -> None:
    """Put a node back on the network (its ``poweroff`` took the link down)."""
    ip("-n", netns, "link", "set", NS_IFACE, "up")


def _processes(names: Iterable[str]) -> set[int]:
    pids: set[int] = set()
    for name in names:
        out = ip("netns", "pids", name, check=False).stdout
        pids.update(int(p) for p in out.split() if p.isdigit())
    return pids


def cleanup(lab_id: str, *, on_poll: Callable[[], None] | None = None) -> None:
    """Remove whatever is left of a netns lab: processes, namespaces, veths, bridge.

    Everything is matched by name; missing pieces are fine. ``on_poll`` runs while the
    processes die (the caller reaps its own children there).
    """
    if not LAB_ID_RE.fullmatch(lab_id):
        raise ValueError(f"lab_id {lab_id!r}: 1-8 lowercase letters/digits")
    found = [n for n in namespaces() if re.fullmatch(rf"hl{lab_id}-\d+", n)]
    stray = _processes(found)
    if stray:
        node_shell.kill_trees(stray, on_poll=on_poll)
    present = links()
    batch = [f"link del {name}" for name in sorted(present) if re.fullmatch(rf"hl{lab_id}v\d+", name)]
    batch += [f"netns del {name}" for name in found]
    if bridge_name(lab_id) in present:
        batch.append(f"link del {bridge_name(lab_id)}")
    if batch:
        ip("-force", "-batch", "-", stdin="\n".join(batch) + "\n", check=False)


def remove(names: Iterable[str]) -> None:
    """Remove these namespaces and their veths (not the bridge); absent ones are fine."""
    existing = set(namespaces())
    present = links()
    batch = []
    for netns in names:
        if netns in existing:
            if veth_name(netns) in present:
                batch.append(f"link del {veth_name(netns)}")
            batch.append(f"netns del {netns}")
    if batch:
        ip("-force", "-batch", "-", stdin="\n".join(batch) + "\n", check=False)
