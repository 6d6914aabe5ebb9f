"""The HTTP endpoints: /metrics with content negotiation, /healthz, /readyz, and the status page."""

import gzip
import ssl
import threading
import time
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
# The aggregator's own process metrics (CPU, memory, descriptors, GC) are read at most this often: reading
# them (/proc files, prometheus_client's collectors) costs more than rendering a small store's changes.
PROCESS_METRICS_INTERVAL = 1.0
# A scrape that arrives while the store's last rendering is still shared (see aggregator.exposition) waits for
# the next rendering, if that comes within this long, rather than fetching a body it may have already: a client
# scraping back to back gets each new rendering once instead of spinning on the old one, and the time goes to
# ingest. A longer window (a large store's) is not waited for: the scrape shares the last rendering at once.
MAX_SCRAPE_WAIT = 0.25
# A store whose full rendering writes at most this many sample lines (a millisecond or two) is rendered on the
# event loop: handing it to a worker thread, and the two threads then taking turns with the interpreter, would
# cost the loop more than that. A larger one is rendered in a worker thread, a slice at a time.
INLINE_SAMPLES = 5_000
# The probes an orchestrator calls; they answer without credentials unless `http.probes_need_auth`.
PROBES = ("/healthz", "/readyz")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip: named, or left to `*`, with a q-value above 0 (RFC 9110)."""
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, _, parameters = part.partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights.setdefault(coding.strip().lower(), weight)
    return weights.get("gzip", weights.get("*", 0.0)) > 0


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
    endpoint = MetricsEndpoint(exposition, registry)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, why = readiness()
        if ready:
            return web.Response(text=f"ready: {why}\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", endpoint.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if status is not None:
        add_status_routes(app, status)
    return app


class MetricsEndpoint:
    """/metrics: the store's rendering plus the registry's, each response made once per rendering.

    A scrape that shares the store's last rendering (see aggregator.exposition) shares the whole response
    too, compression included; one that arrives while that rendering is still shared first waits for the
    next, if it comes within MAX_SCRAPE_WAIT. A small store is rendered on the event loop, a larger one in a
    worker thread (INLINE_SAMPLES).
    """

    def __init__(self, exposition: Exposition, registry: CollectorRegistry) -> None:
        self._exposition = exposition
        self._registry = registry
        # (format, gzip) -> the store's body a response was made from, and that response
        self._responses: dict[tuple[bool, bool], tuple[bytes, bytes, dict[str, str]]] = {}
        # One response made at a time, so that scrapes sharing a rendering share its one response.
        self._making = threading.Lock()
        # format -> (monotonic time read, the registry's text)
        self._process_texts: dict[bool, tuple[float, bytes]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        compress = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        exposition = self._exposition
        # Wait out the rendering shared now (not one that a scrape waiting with this one makes meanwhile), if its
        # window ends within MAX_SCRAPE_WAIT: a longer one (a large store's) is shared at once, without waiting.
        stale, deadline = exposition.shared(openmetrics), time.monotonic() + MAX_SCRAPE_WAIT
        while stale is not None and exposition.shared(openmetrics) is stale:
            wait = exposition.renews_in(openmetrics)
            if wait <= 0 or time.monotonic() + wait > deadline:
                break
            await anyio.sleep(wait)
        shared, made = exposition.shared(openmetrics), self._responses.get((openmetrics, compress))
        if shared is not None and made is not None and made[0] is shared:
            return web.Response(body=made[1], headers=made[2])
        # On the loop only if no worker thread is making a response: the loop must never wait for one.
        if exposition.samples() <= INLINE_SAMPLES and self._making.acquire(blocking=False):
            try:
                body, headers = self._make(openmetrics, compress)
            finally:
                self._making.release()
        else:
            # Rendering and compressing run in a worker thread: the event loop goes on ingesting and answering.
            body, headers = await anyio.to_thread.run_sync(self.respond, openmetrics, compress)
        return web.Response(body=body, headers=headers)

    def respond(self, openmetrics: bool, compress: bool) -> tuple[bytes, dict[str, str]]:
        """A response's body and headers, made now (any thread)."""
        with self._making:
            return self._make(openmetrics, compress)

    def _make(self, openmetrics: bool, compress: bool) -> tuple[bytes, dict[str, str]]:
        rendered = body = self._exposition.render(openmetrics)
        made = self._responses.get((openmetrics, compress))
        if made is not None and made[0] is rendered:  # scrapes that waited together: one response for them all
            return made[1], made[2]
        if openmetrics:
            body = body.removesuffix(b"# EOF\n") + self._process_text(openmetrics)
        else:
            body += self._process_text(openmetrics)
        headers = {
            "Content-Type": CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT,
            # A cache between Prometheus and the aggregator must not hand one format or encoding for the other.
            "Vary": "Accept, Accept-Encoding",
        }
        if compress and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._responses[openmetrics, compress] = (rendered, body, headers)
        return body, headers

    def _process_text(self, openmetrics: bool) -> bytes:
        now = time.monotonic()
        last = self._process_texts.get(openmetrics)
        if last is not None and now - last[0] < PROCESS_METRICS_INTERVAL:
            return last[1]
        render = generate_openmetrics if openmetrics else generate_latest
        text: bytes = render(self._registry)
        self._process_texts[openmetrics] = (now, text)
        return text


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
