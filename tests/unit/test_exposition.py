"""The fast /metrics renderer: prometheus_client's samples in both formats, and caching that is never stale."""

import random
import time

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.registry import CollectorRegistry

from aggregator.collector import StoreCollector
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.exposition import Exposition, wants_openmetrics
from aggregator.ingest import Ingest
from aggregator.store import CounterFamily
from schemas.events import Error, Heartbeat, Metric, Order, Position, Prediction, Signal
from tests.support.engine import make_ingest, read_view
from tests.support.scenario import desk_events
from tests.support.scrape import Samples, parse, value


def _ingest() -> Ingest:
    custom = [CustomMetric(name="lag_seconds", type="histogram", help='Lag with "quotes" and \\ backslash.',
                           buckets=[0.1, 1.0], labels=["feed"])]  # fmt: skip
    return make_ingest(CatalogSettings(), custom)


def _random_events(rng: random.Random, count: int) -> list[object]:
    now = time.time()
    symbols = ["BTC/USDT", "ETH-PERP", 'Q"X', "A\\B"]
    events: list[object] = []
    for _ in range(count):
        symbol = rng.choice(symbols[:2])
        events += [
            Signal(ts=now, source="s", strategy=rng.choice(["a", "b"]), symbol=symbol, side="buy",
                   confidence=rng.random(), latency=rng.random() / 100),
            Order(ts=now, source="o", symbol=symbol, side="sell", status=rng.choice(["filled", "placed"]),
                  quantity=rng.random(), price=100.0, slippage_bps=rng.uniform(-60, 120), latency=rng.random()),
            Prediction(ts=now, source="m", model="x", probability=rng.random(), expected_profit=rng.uniform(-0.1, 0.2)),
            Position(ts=now + rng.random(), source="p", symbol=symbol, quantity=rng.uniform(-5, 5)),
            Error(ts=now, source="e", component="c", error_type="t"),
            Heartbeat(ts=now, source="h", version="1"),
            Metric(ts=now, source="f", name="lag_seconds", value=rng.random() * 2, labels={"feed": symbol}),
        ]  # fmt: skip
    return events


def _reference(ingest: Ingest, clock: float) -> Samples:
    registry = CollectorRegistry()
    registry.register(StoreCollector(read_view(ingest, lambda: clock)))
    return parse(generate_latest(registry).decode())


def _openmetrics_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in parse_openmetrics(text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_renderer_matches_prometheus_client_in_both_formats(seed: int) -> None:
    """Every sample the reference Collector exposes, and only those, with the same values, text and OpenMetrics."""
    ingest = _ingest()
    ingest.apply(_random_events(random.Random(seed), 50), now=time.time())
    clock = time.time()
    exposition = Exposition(read_view(ingest, lambda: clock))
    reference = _reference(ingest, clock)
    assert parse(exposition.render().decode()) == reference
    openmetrics = exposition.render(openmetrics=True).decode()
    assert openmetrics.endswith("# EOF\n")
    om_samples = _openmetrics_samples(openmetrics)
    assert om_samples == reference


def test_cached_families_are_rerendered_after_a_change() -> None:
    """A scrape after an update shows the new value; an unchanged family's text is reused as is."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0)
    error = Error(ts=1.0, source="e", component="c", error_type="t")
    labels = {"source": "e", "component": "c", "error_type": "t", "severity": "error", "symbol": ""}
    ingest.apply([error], now=1.0)
    assert value(parse(exposition.render().decode()), "trading_errors_total", **labels) == 1
    first = exposition._texts["trading_signals_total"].text(False)
    ingest.apply([error, error], now=2.0)
    assert value(parse(exposition.render().decode()), "trading_errors_total", **labels) == 3
    assert exposition._texts["trading_signals_total"].text(False) is first


def test_desk_scenario_renders_the_same_as_the_reference() -> None:
    """The scenario every producer sends renders identically through both paths."""
    ingest = make_ingest()
    ingest.apply(desk_events("d")[:-2], now=time.time())
    clock = time.time()
    assert parse(Exposition(read_view(ingest, lambda: clock)).render().decode()) == _reference(ingest, clock)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
        ("text/plain;version=0.0.4", False),
        ("", False),
        ("*/*", False),
    ],
)
def test_content_negotiation(accept: str, openmetrics: bool) -> None:
    """OpenMetrics when the scraper asks for it (as Prometheus does), Prometheus text otherwise."""
    assert wants_openmetrics(accept) is openmetrics


def test_scrapes_within_the_minimum_interval_share_one_rendering() -> None:
    """A scrape storm reuses the body rendered moments ago; once the window passes, changes show."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0.2)
    error = Error(ts=1.0, source="e", component="c", error_type="t")
    labels = {"source": "e", "component": "c", "error_type": "t", "severity": "error", "symbol": ""}
    first = exposition.render()
    ingest.apply([error], now=1.0)
    assert exposition.render() is first
    time.sleep(0.25)
    assert value(parse(exposition.render().decode()), "trading_errors_total", **labels) == 1


def test_rendering_in_a_thread_while_series_are_added_never_fails() -> None:
    """The HTTP server renders in a worker thread while the event loop adds series: no 'changed size' error."""
    import threading

    ingest = make_ingest(CatalogSettings(max_series_per_metric=200_000))
    exposition = Exposition(read_view(ingest), min_interval=0)
    family = ingest.store.families["trading_errors_total"]
    assert isinstance(family, CounterFamily)
    stop = threading.Event()
    errors: list[BaseException] = []

    def render() -> None:
        try:
            while not stop.is_set():
                exposition.render()
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=render)
    worker.start()
    for index in range(100_000):
        family.inc(("s", f"c{index}", "t", "error", ""))
        if index % 1000 == 0:
            family.version += 1
    stop.set()
    worker.join()
    assert errors == []
    assert value(parse(exposition.render().decode()), "tickbus_series", metric="trading_errors_total") == 100_000


def test_back_to_back_scrapes_share_a_rendering_for_ten_times_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rendering that took 50 ms of CPU serves every scrape of the next 500 ms: rendering stays a tenth of it."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0.001)
    real = exposition._render
    calls = []

    def slow(openmetrics: bool) -> bytes:
        calls.append(openmetrics)
        busy_until = time.thread_time() + 0.05
        while time.thread_time() < busy_until:
            pass
        return real(openmetrics)

    monkeypatch.setattr(exposition, "_render", slow)
    first = exposition.render()
    cost = exposition._last[False][2]
    assert cost >= 0.05
    assert exposition.render() is first
    time.sleep(0.1)
    assert exposition.render() is first, "still inside ten times the rendering's cost"
    # Past the window (measured, not assumed: the rendering's own part adds to the 50 ms).
    time.sleep(max(0.0, exposition._last[False][0] + 10 * cost - time.monotonic()) + 0.01)
    assert exposition.render() is not first
    assert len(calls) == 2


def test_a_rendering_is_charged_its_cpu_time_not_its_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting for the interpreter (here: sleeping) does not stretch the sharing window: only CPU time counts."""
    ingest = make_ingest()
    exposition = Exposition(read_view(ingest), min_interval=0.001)
    real = exposition._render

    def waiting(openmetrics: bool) -> bytes:
        time.sleep(0.1)
        return real(openmetrics)

    monkeypatch.setattr(exposition, "_render", waiting)
    started = time.monotonic()
    exposition.render()
    wall = time.monotonic() - started
    cost = exposition._last[False][2]
    assert wall >= 0.1
    assert cost < wall / 2
