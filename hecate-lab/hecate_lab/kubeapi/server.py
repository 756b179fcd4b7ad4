"""The lab API process itself (``python -m hecate_lab.kubeapi``): serve the emulator, run the simulator.

It listens on loopback (or ``--host``: the lab bridge's address when a coordinator machine must
reach it), writes the kubeconfig once it serves (so ``--port 0`` is safe), and
stops on SIGTERM/SIGINT or when its parent is gone. Started from Python by
:func:`hecate_lab.kubeapi.process.start_kubeapi`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path

import kmock
import yaml

from hecate_lab.kubeapi.emulator import build_emulator
from hecate_lab.kubeapi.errors import LabKubeApiError
from hecate_lab.kubeapi.events import EVENTS_FILE, EventLog
from hecate_lab.kubeapi.manifest import LabManifest, load_manifest
from hecate_lab.kubeapi.node_objects import HEARTBEAT_PERIOD
from hecate_lab.kubeapi.process import api_url, write_kubeconfig
from hecate_lab.kubeapi.simulator import POLL_INTERVAL, ClusterSimulator, run_simulator

log = logging.getLogger(__name__)


async def _exit_with_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(0.5)
    log.warning("the parent process %d is gone; stopping", parent_pid)
    stop.set()


async def serve(manifest: LabManifest, *, kubeconfig: Path, host: str = "127.0.0.1", port: int = 0,
                interval: float = POLL_INTERVAL, heartbeat_period: dt.timedelta = HEARTBEAT_PERIOD,
                parent_pid: int | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve the lab API until ``stop`` is set or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emulator = build_emulator(manifest)
    events = EventLog(manifest.events or kubeconfig.parent / EVENTS_FILE)
    simulator = ClusterSimulator(emulator, manifest, events, heartbeat_period=heartbeat_period)
    async with emulator, kmock.Server(emulator, host=host, port=port or None) as server:
        url = f"http://{host}:{server.port}"
        try:
            await simulator.step()  # Nodes current and the API gate set before announcing
        except Exception:  # as in run_simulator: a bug in one rule must not keep the lab API from serving
            log.exception("simulator step failed")
        tasks = [asyncio.create_task(run_simulator(simulator, interval=interval))]
        if parent_pid:
            tasks.append(asyncio.create_task(_exit_with_parent(parent_pid, stop)))
        try:
            write_kubeconfig(kubeconfig, url)
            log.info("serving the lab Kubernetes API on %s (%d nodes); kubeconfig %s",
                     url, len(manifest.nodes), kubeconfig)
            await stop.wait()
            log.info("stopping")
        finally:
            emulator.close_watches()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
                if api_url(kubeconfig) == url:
                    kubeconfig.unlink()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hecate_lab.kubeapi",
                                     description="The lab's emulated Kubernetes API and cluster simulator.")
    parser.add_argument("--manifest", required=True, type=Path, help="JSON: {nodes: [{name, role, dir}]}")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--kubeconfig", required=True, type=Path, help="written once the server listens")
    parser.add_argument("--interval", type=float, default=POLL_INTERVAL, help="state.json poll interval, s")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_PERIOD.total_seconds(),
                        help="seconds between Ready heartbeats of a running node")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process is gone")
    parser.add_argument("--verbose", "-v", action="store_true", help="also log every HTTP request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        manifest = load_manifest(args.manifest)
        asyncio.run(serve(manifest, kubeconfig=args.kubeconfig, host=args.host, port=args.port,
                          interval=args.interval, heartbeat_period=dt.timedelta(seconds=args.heartbeat),
                          parent_pid=args.parent_pid))
    except LabKubeApiError as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot serve: %s", e)
        return 1
    return 0
