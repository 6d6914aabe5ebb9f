"""The scrape endpoint: /metrics with content negotiation, /healthz and /readyz."""

import gzip
import ssl
from collections.abc import Callable, Iterable
from typing import NamedTuple

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import CollectorRegistry

from aggregator.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Exposition, wants_openmetrics

# Below this a body is sent as is: compressing it costs more than it saves on loopback.
GZIP_MIN_BYTES = 64 * 1024
# The probes an orchestrator calls; they answer without credentials unless `http.probes_need_auth`.
PROBES = ("/healthz", "/readyz")


class Readiness(NamedTuple):
    """Whether the aggregator should receive traffic, and why (the /readyz body)."""

    ready: bool
    why: str


def make_app(
    exposition: Exposition,
    registry: CollectorRegistry,
    readiness: Callable[[], Readiness],
    middlewares: Iterable[Middleware] = (),
) -> web.Application:
    """The store's metrics, then the registry's (the aggregator's process metrics), and the health probes.

    `middlewares` wrap every route (the web config's basic auth and headers, webconfig.py).
    """

    async def metrics(request: web.Request) -> web.Response:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        body = exposition.render(openmetrics)
        if openmetrics:
            extra: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
            body = body.removesuffix(b"# EOF\n") + extra
        else:
            body += generate_latest(registry)
        headers = {"Content-Type": CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT}
        if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, why = readiness()
        if ready:
            return web.Response(text=f"ready: {why}\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_http(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve `app` on host:port, over TLS with `ssl_context` (changes to the context apply to new connections)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner
