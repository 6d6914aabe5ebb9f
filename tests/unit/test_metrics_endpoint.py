"""The /metrics endpoint (http.py) on a real aiohttp server: back-to-back scrapes paced to the store's renderings,
the registry's text read at most once a second, and where each response is made (event loop or worker thread)."""

import gzip
import re
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client import Gauge
from prometheus_client.registry import CollectorRegistry

from aggregator import http
from aggregator.exposition import Exposition
from aggregator.http import Readiness, make_app, start_http
from aggregator.ingest import Ingest
from aggregator.store import CounterFamily
from schemas.events import Error
from tests.support.engine import make_ingest, read_view
from tests.support.process import free_port
from tests.support.scrape import parse, value

ERROR_LABELS = {"source": "e", "component": "c", "error_type": "t", "severity": "error", "symbol": ""}


def _serve(exposition: Exposition, registry: CollectorRegistry, check: Callable[[str], None]) -> None:
    """Run `check(url of /metrics)` in a thread (it blocks on urllib) while the app serves on loopback."""

    async def main() -> None:
        port = free_port()
        runner = await start_http(make_app(exposition, registry, lambda: Readiness(True, "test")), "127.0.0.1", port)
        try:
            await anyio.to_thread.run_sync(check, f"http://127.0.0.1:{port}/metrics")
        finally:
            await runner.cleanup()

    anyio.run(main)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def _errors(text: str) -> float | None:
    return value(parse(text), "trading_errors_total", **ERROR_LABELS)


def _counting_renders(exposition: Exposition, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each rendering the exposition makes (shared ones are not renderings)."""
    threads: list[str] = []
    real = exposition._render

    def counted(openmetrics: bool) -> bytes:
        threads.append(threading.current_thread().name)
        return real(openmetrics)

    monkeypatch.setattr(exposition, "_render", counted)
    return threads


def _large_store() -> tuple[Ingest, CounterFamily]:
    """A store past INLINE_SAMPLES (twice as many counter series), rendered in worker threads."""
    ingest = make_ingest()
    family = ingest.store.families["trading_errors_total"]
    assert isinstance(family, CounterFamily)
    family.max_series = 1_000_000
    for index in range(2 * http.INLINE_SAMPLES):
        family.inc(("s", f"c{index}", "t", "error", ""))
    return ingest, family


def _scrape_together(scrape: Callable[[str], None], url: str, clients: int = 8) -> None:
    """`clients` threads released at once, each running `scrape(url)`; returns when all are done."""
    together = threading.Barrier(clients)

    def client() -> None:
        together.wait()
        scrape(url)

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _error(ingest: Ingest) -> None:
    ingest.apply([Error(ts=1.0, source="e", component="c", error_type="t")], now=1.0)


def test_a_scrape_inside_the_sharing_window_waits_for_the_next_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape right after another does not get the body it may already have: it gets the change made since."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0.2, cost_factor=1.0)  # a window < MAX_SCRAPE_WAIT
    renders = _counting_renders(exposition, monkeypatch)
    seen: list[float | None] = []

    def check(url: str) -> None:
        seen.append(_errors(_scrape(url)))
        _error(ingest)  # the scraping thread changes the store: the next scrape is inside the window
        seen.append(_errors(_scrape(url)))

    _serve(exposition, CollectorRegistry(), check)
    assert seen == [None, 1.0]
    assert len(renders) == 2


def test_back_to_back_scrapes_get_one_response_per_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client scraping as fast as it can is paced to the renderings: none of its responses repeats one."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0.02, cost_factor=1.0)
    renders = _counting_renders(exposition, monkeypatch)
    totals: list[float | None] = []

    def check(url: str) -> None:
        for _ in range(15):
            _error(ingest)
            totals.append(_errors(_scrape(url)))

    _serve(exposition, CollectorRegistry(), check)
    assert totals == [float(count) for count in range(1, 16)], "every scrape saw the event added just before it"
    assert len(renders) == 15


def test_a_window_longer_than_the_wait_is_shared_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a rendering is shared for longer than MAX_SCRAPE_WAIT (a large store's), a scrape gets it without
    waiting: a wait that cannot end in a new rendering would only add latency."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=60.0)
    renders = _counting_renders(exposition, monkeypatch)
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def recorded(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(anyio, "sleep", recorded)
    bodies: list[str] = []
    _serve(exposition, CollectorRegistry(), lambda url: bodies.extend(_scrape(url) for _ in range(3)))
    assert len(renders) == 1
    assert bodies[0] == bodies[1] == bodies[2]
    assert sleeps == []


def test_the_registry_is_read_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The aggregator's process metrics follow the store's text, and are read again once the interval has passed."""
    monkeypatch.setattr(http, "PROCESS_METRICS_INTERVAL", 1.5)  # the two first scrapes fall well inside it
    ingest = make_ingest()
    registry = CollectorRegistry()
    gauge = Gauge("process_probe", "A process metric.", registry=registry)
    exposition = Exposition(read_view(ingest), min_interval=0)
    readings: list[float | None] = []

    def check(url: str) -> None:
        gauge.set(1)
        readings.append(value(parse(_scrape(url)), "process_probe"))
        gauge.set(2)
        readings.append(value(parse(_scrape(url)), "process_probe"))
        threading.Event().wait(1.6)
        readings.append(value(parse(_scrape(url)), "process_probe"))

    _serve(exposition, registry, check)
    assert readings == [1.0, 1.0, 2.0]


def test_a_small_store_is_rendered_on_the_loop_and_a_large_one_in_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to INLINE_SAMPLES sample lines the event loop renders; past them (even with nothing new in the
    last rendering's families) a worker thread does, so the loop never waits for a large rendering."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0)
    renders = _counting_renders(exposition, monkeypatch)
    family = ingest.store.families["trading_errors_total"]
    assert isinstance(family, CounterFamily)
    family.max_series = 1_000_000
    loop_thread: list[str] = []

    async def main() -> None:
        loop_thread.append(threading.current_thread().name)
        port = free_port()
        app = make_app(exposition, CollectorRegistry(), lambda: Readiness(True, "test"))
        runner = await start_http(app, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            await anyio.to_thread.run_sync(_scrape, url)
            for index in range(http.INLINE_SAMPLES):
                family.inc(("s", f"c{index}", "t", "error", ""))
            family.version += 1
            assert exposition.samples() > http.INLINE_SAMPLES
            for _ in range(2):  # the second finds every family's text cached: still the worker's
                text: Any = await anyio.to_thread.run_sync(_scrape, url)
                assert value(parse(text), "tickbus_series", metric="trading_errors_total") == len(family.series)
        finally:
            await runner.cleanup()

    anyio.run(main)
    assert renders[0] == loop_thread[0], "a small store: rendered on the event loop"
    assert renders[1] != loop_thread[0], "past INLINE_SAMPLES: rendered in a worker thread"
    assert renders[2] != loop_thread[0]


def test_scrapes_that_waited_together_get_one_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent scrapes that wait out one window share the next rendering and its one response."""
    # A window long enough for all eight to arrive inside it on a loaded machine, and a wait that covers it.
    monkeypatch.setattr(http, "MAX_SCRAPE_WAIT", 2.0)
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=1.5, cost_factor=1.0)
    renders = _counting_renders(exposition, monkeypatch)
    bodies: list[str] = []

    def check(url: str) -> None:
        bodies.append(_scrape(url))
        _error(ingest)
        _scrape_together(lambda url: bodies.append(_scrape(url)), url)

    _serve(exposition, CollectorRegistry(), check)
    assert len(renders) == 2
    assert [_errors(body) for body in bodies] == [None] + [1.0] * 8


def test_a_large_rendering_waited_for_together_is_compressed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapes that wait out one window of a large store (rendered in worker threads) share one gzip of it."""
    ingest, family = _large_store()
    # A window long enough for all eight to arrive inside it on a loaded machine, and a wait that covers it.
    monkeypatch.setattr(http, "MAX_SCRAPE_WAIT", 2.0)
    exposition = Exposition(read_view(ingest), min_interval=1.5, cost_factor=1.0)
    renders = _counting_renders(exposition, monkeypatch)
    compressed: list[int] = []
    real_compress = gzip.compress

    def counting(data: bytes, compresslevel: int = 9) -> bytes:
        compressed.append(len(data))
        return real_compress(data, compresslevel)

    monkeypatch.setattr(gzip, "compress", counting)
    totals: list[float | None] = []

    def scrape(url: str) -> None:
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(response.read()).decode()
        # A regular expression, not the parser: the client must be quick to scrape again within the window.
        found = re.search(r'^tickbus_series\{metric="trading_errors_total"\} (\S+)$', text, re.MULTILINE)
        totals.append(float(found[1]) if found else None)

    def check(url: str) -> None:
        scrape(url)
        family.inc(("s", "one more", "t", "error", ""))
        family.version += 1
        _scrape_together(scrape, url)

    _serve(exposition, CollectorRegistry(), check)
    series = 2 * http.INLINE_SAMPLES
    assert totals == [series] + [series + 1] * 8
    assert len(renders) == 2
    assert len(compressed) == 2


@pytest.mark.parametrize(
    ("header", "taken"),
    [("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("*", True), ("br, *;q=0.1", True),
     ("", False), ("identity", False), ("gzip;q=0", False), ("gzip; q=0.0", False), ("*;q=0", False),
     ("gzip;q=0, *", False), ("gzip;q=abc", False)],
)  # fmt: skip
def test_gzip_is_sent_only_where_the_client_takes_it(header: str, taken: bool) -> None:
    """Accept-Encoding read as RFC 9110 says: `gzip;q=0` refuses gzip, `*` takes it unless gzip is named."""
    assert http.accepts_gzip(header) is taken


def test_a_large_body_is_compressed_as_asked_and_says_what_it_varies_on() -> None:
    """A body over GZIP_MIN_BYTES is gzipped for `gzip`, sent as is for `gzip;q=0`; both carry `Vary`."""
    ingest, _ = _large_store()
    exposition = Exposition(read_view(ingest), min_interval=0)
    answers: list[tuple[str | None, str | None, int]] = []

    def check(url: str) -> None:
        for encoding in ("gzip", "gzip;q=0"):
            request = urllib.request.Request(url, headers={"Accept-Encoding": encoding})
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                answers.append((response.headers["Content-Encoding"], response.headers["Vary"], len(body)))

    _serve(exposition, CollectorRegistry(), check)
    (zipped, zipped_vary, zipped_size), (plain, plain_vary, plain_size) = answers
    assert (zipped, plain) == ("gzip", None)
    assert zipped_vary == plain_vary == "Accept, Accept-Encoding"
    assert plain_size > http.GZIP_MIN_BYTES > zipped_size
