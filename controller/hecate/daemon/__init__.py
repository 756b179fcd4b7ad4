"""``hecate daemon``: one asyncio loop with the UPS monitor and the HTTP server.

Start order matters for what comes later (the embedded kopf operator cancels tasks
created after it starts): the HTTP server and the monitor start first. systemd is told
``READY=1`` once the server listens and every UPS has been polled once, and gets
watchdog keep-alives while the loop is alive. SIGTERM/SIGINT only set a flag; the loop
finishes its poll and stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from hecate.adapters import http, nut, systemd
from hecate.adapters.store import StateStore
from hecate.domain.config import HecateConfig
from hecate.services import monitor as monitor_mod
from hecate.services import status

log = logging.getLogger(__name__)


async def run(config: HecateConfig, stop: asyncio.Event | None = None,
              reader: monitor_mod.UpsReader | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = StateStore(config.state_dir)
    if config.shutdown.execute:
        log.warning("shutdown.execute is true, but the shutdown executor is not built yet (issue #4): "
                    "decisions are recorded as dry-run shutdown runs")
    monitor = monitor_mod.Monitor(
        config, reader or nut.NutReader(), store, monitor_mod.dry_run_recorder(store),
        unlatch_on_mains=True,
    )
    app = http.make_app(lambda: status.document(monitor, "daemon"), lambda: monitor.ready)
    runner = await http.start(app, config.metrics.listen)
    log.info("serving /metrics, /healthz, /readyz and /v1/status on %s", config.metrics.listen)
    tasks = [asyncio.create_task(monitor.run(stop), name="monitor")]
    interval = systemd.watchdog_interval()
    if interval:
        # Keep-alives only while polls happen: a wedged monitor must let systemd restart us.
        stale_after = max(10.0, 5 * config.trigger.poll_interval_s)

        def polling() -> bool:
            last = monitor.view.last_poll_at
            return last is not None and time.time() - last < stale_after

        tasks.append(asyncio.create_task(_watchdog(interval, stop, polling), name="watchdog"))
    try:
        while not monitor.ready and not stop.is_set():
            await asyncio.sleep(0.05)
        systemd.notify("READY=1\nSTATUS=monitoring " + ", ".join(u.name for u in config.ups))
        await stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
    finally:
        stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


async def _watchdog(interval: float, stop: asyncio.Event, healthy: Callable[[], bool]) -> None:
    while not stop.is_set():
        if healthy():
            systemd.notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
