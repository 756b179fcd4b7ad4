"""The HTTP server (aiohttp): ``/metrics``, ``/healthz``, ``/readyz``, ``GET /v1/status``.

One small server on ``metrics.listen`` (default ``:9560``). Handlers only read: the
status document is computed by the caller-supplied function; nothing here decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from hecate.adapters import metrics


def make_app(status: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> web.Application:
    registry = metrics.registry_for(status)

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: not every UPS has been polled yet\n")

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", get_status)
    return app


async def start(app: web.Application, bind: tuple[str, int]) -> web.AppRunner:
    """Bind and serve; the caller ``await runner.cleanup()`` to stop."""
    host, port = bind
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
