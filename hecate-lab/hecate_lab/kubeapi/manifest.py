"""The lab API's manifest: the nodes whose Node objects it serves, the k3s version, the delays.

The orchestrator (:mod:`hecate_lab.testbed`) writes it as JSON; the API process parses it once
at start. Its fields are in docs/lab-kubeapi.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hecate_lab.cluster_sim import Delays
from hecate_lab.kubeapi.errors import LabKubeApiError

DEFAULT_K3S_VERSION = "v1.31.4+k3s1"


@dataclass(frozen=True)
class LabNode:
    name: str
    role: str  # "server" | "agent"
    dir: Path
    address: str | None = None


@dataclass(frozen=True)
class LabManifest:
    nodes: tuple[LabNode, ...]
    k3s_version: str = DEFAULT_K3S_VERSION
    flux: bool = True  # install the Flux CRDs at start
    delays: Delays = field(default_factory=Delays)
    events: Path | None = None  # the simulator's events file; None: next to the kubeconfig


def parse_manifest(data: Mapping[str, Any]) -> LabManifest:
    nodes_data = data.get("nodes")
    if not isinstance(nodes_data, list):
        raise LabKubeApiError('the manifest needs a "nodes" list')
    nodes: list[LabNode] = []
    for item in nodes_data:
        if not isinstance(item, Mapping) or not all(isinstance(item.get(k), str) for k in ("name", "dir")):
            raise LabKubeApiError(f"a manifest node needs a name and a dir: {item!r}")
        if item.get("role") not in ("server", "agent"):
            raise LabKubeApiError(
                f"node {item['name']!r}: role must be server or agent, not {item.get('role')!r}")
        nodes.append(LabNode(name=item["name"], role=item["role"], dir=Path(item["dir"]),
                             address=item.get("address")))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise LabKubeApiError(f"duplicate node names in the manifest: {names}")
    flux = data.get("flux", True)
    if not isinstance(flux, bool):
        raise LabKubeApiError(f'"flux" must be true or false, not {flux!r}')
    try:
        delays = Delays.parse(data.get("delays"))
    except ValueError as e:
        raise LabKubeApiError(f"the manifest's delays: {e}") from e
    events = data.get("events")
    if events is not None and not isinstance(events, str):
        raise LabKubeApiError(f'"events" must be a file path, not {events!r}')
    return LabManifest(nodes=tuple(nodes), k3s_version=str(data.get("k3sVersion") or DEFAULT_K3S_VERSION),
                       flux=flux, delays=delays, events=Path(events) if events else None)


def load_manifest(path: str | os.PathLike[str]) -> LabManifest:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise LabKubeApiError(f"cannot read the manifest {path}: {e}") from e
    if not isinstance(data, Mapping):
        raise LabKubeApiError(f"the manifest {path} is not a JSON object")
    return parse_manifest(data)
