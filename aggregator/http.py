"""The HTTP endpoints: /metrics with content negotiation, /healthz, /readyz, and the status page."""

import gzip
import ssl
from collections.abc import Callable, Iterable
from typing import NamedTuple

import anyio
import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import CollectorRegistry

from aggregator.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Exposition, wants_openmetrics
from aggregator.status import StatusQuery, StatusView

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
    status: StatusView | None = None,
    middlewares: Iterable[Middleware] = (),
) -> web.Application:
    """The store's metrics, then the registry's (the aggregator's process metrics), and the health probes.

    `middlewares` wrap every route (the web config's basic auth and headers, webconfig.py).

    With `status`, also the status page and its data.
    """

    def respond(openmetrics: bool, compress: bool) -> tuple[bytes, dict[str, str]]:
        body = exposition.render(openmetrics)
        if openmetrics:
            extra: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
            body = body.removesuffix(b"# EOF\n") + extra
        else:
            body += generate_latest(registry)
        headers = {"Content-Type": CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT}
        if compress and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def metrics(request: web.Request) -> web.Response:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        compress = "gzip" in request.headers.get("Accept-Encoding", "")
        # Rendering and compressing run in a worker thread: the event loop goes on ingesting and answering.
        body, headers = await anyio.to_thread.run_sync(respond, openmetrics, compress)
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
    if status is not None:
        add_status_routes(app, status)
    return app


def add_status_routes(app: web.Application, status: StatusView) -> None:
    """/ (the page, which polls) and /status.json (its data); neither is cached by browsers or proxies."""
    no_store = {"Cache-Control": "no-store"}

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=status.page, content_type="text/html", charset="utf-8", headers=no_store)

    async def status_json(request: web.Request) -> web.Response:
        body = msgspec.json.encode(status.snapshot(StatusQuery.parse(dict(request.query))))
        return web.Response(body=body, content_type="application/json", headers=no_store)

    app.router.add_get("/", page)
    app.router.add_get("/status.json", status_json)


async def start_http(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve `app` on host:port, over TLS with `ssl_context` (changes to the context apply to new connections)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner
