"""`aggregator bench`: each figure measured side by side with its baseline in one run, against the local broker."""

import asyncio
import contextlib
import gc
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from aggregator.amqp.topology import queue_arguments
from aggregator.catalog import BUILTIN_CATALOG, MetricType
from aggregator.compiler import Feed
from aggregator.config import AmqpSettings, CatalogSettings
from aggregator.exposition import Exposition
from aggregator.ingest import Ingest
from aggregator.readview import ReadView
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import CounterFamily, HistogramFamily, Store
from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error, EventBase, Order, Position, Prediction, Signal
from schemas.wire import Codec

Progress = Callable[[str], None]
SYMBOLS = [f"SYM{index}" for index in range(50)]
STRATEGIES = ("momentum", "mean_reversion", "breakout", "carry")


@dataclass
class Figure:
    """One comparison: our number, the baseline's, their ratio and the target for the ratio."""

    name: str
    ours: float
    baseline: float
    unit: str
    target: str
    ratio: float = 0.0
    met: bool = False
    note: str = ""

    def judge(self, at_least: float | None = None, at_most: float | None = None) -> "Figure":
        self.ratio = self.ours / self.baseline if self.baseline else float("inf")
        self.met = (at_least is None or self.ratio >= at_least) and (at_most is None or self.ratio <= at_most)
        return self


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def mixed_events(count: int, seed: int = 7) -> list[EventBase]:
    """A desk's typical mix: signals, fills with latency and slippage, predictions, errors."""
    rng = random.Random(seed)
    now = time.time()
    events: list[EventBase] = []
    for index in range(count):
        symbol = SYMBOLS[index % len(SYMBOLS)]
        strategy = STRATEGIES[index % len(STRATEGIES)]
        match index % 4:
            case 0:
                events.append(
                    Signal(
                        ts=now,
                        source="bench",
                        strategy=strategy,
                        symbol=symbol,
                        side="buy",
                        outcome="accepted",
                        confidence=rng.random(),
                        latency=rng.random() / 100,
                    )
                )
            case 1:
                events.append(
                    Order(
                        ts=now,
                        source="bench",
                        symbol=symbol,
                        side="sell",
                        status="filled",
                        quantity=1.0,
                        price=100.0,
                        latency=rng.random() / 50,
                        slippage_bps=rng.uniform(-5, 10),
                    )
                )
            case 2:
                events.append(
                    Prediction(
                        ts=now,
                        source="bench",
                        model="filter",
                        symbol=symbol,
                        decision="accept",
                        probability=rng.random(),
                        latency=rng.random() / 100,
                    )
                )
            case _:
                events.append(Error(ts=now, source="bench", component="feed", error_type="gap", symbol=symbol))
    return events  # fmt: skip


class PrometheusClientMirror:
    """The built-in catalog as plain prometheus_client metrics, updated in-process: the baseline."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._updates: dict[type[Any], list[Callable[[Any], None]]] = {}
        for event_type, specs in BUILTIN_CATALOG.items():
            for spec in specs:
                self._updates.setdefault(event_type, []).append(self._updater(spec))

    def _updater(self, spec: Any) -> Callable[[Any], None]:
        feed = Feed.of(spec)
        labels_of, value_of = feed.labels_of, feed.value
        names = list(spec.labels)
        name = f"trading_{spec.name}"
        metric: Any
        if spec.type is MetricType.COUNTER:
            metric = Counter(name.removesuffix("_total"), spec.help, names, registry=self.registry)

            def update(event: Any) -> None:
                value = value_of(event)
                if value is not None:
                    metric.labels(*labels_of(event)).inc(value)
        elif spec.type is MetricType.GAUGE:
            metric = Gauge(name, spec.help, names, registry=self.registry)

            def update(event: Any) -> None:
                value = value_of(event)
                if value is not None:
                    metric.labels(*labels_of(event)).set(value)
        else:
            metric = Histogram(name, spec.help, names, buckets=spec.buckets, registry=self.registry)

            def update(event: Any) -> None:
                value = value_of(event)
                if value is not None:
                    metric.labels(*labels_of(event)).observe(value)

        return update

    def apply(self, events: list[EventBase]) -> None:
        updates = self._updates
        for event in events:
            for update in updates[type(event)]:
                update(event)


# --- the aggregator as a user runs it: a subprocess of the CLI, against the real broker -------------------


@contextmanager
def aggregator_process(exchange: str, queue: str, port: int, state_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "aggregator", "run", "--exchange", exchange, "--queue", queue,
               "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir),
               "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _ready(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the aggregator did not become ready")
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def scrape_total(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == name
    )  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _publish_bodies(url: str, exchange_name: str, bodies: list[bytes], routing_key: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        pending = []
        for body in bodies:
            message = aio_pika.Message(body, content_type="application/msgpack", message_id=uuid.uuid4().hex,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT)  # fmt: skip
            pending.append(exchange.publish(message, routing_key=routing_key))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)


async def _raw_consume(url: str, queue_name: str, expected: int) -> float:
    """The baseline: aio-pika consume and ack of the same messages, no decoding; seconds taken."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        queue = await channel.declare_queue(queue_name, passive=True)
        done = asyncio.Event()
        seen = 0
        started = 0.0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen, started
            if seen == 0:
                started = time.perf_counter()
            seen += 1
            await message.ack()
            if seen >= expected:
                done.set()

        await queue.consume(on_message)
        await done.wait()
        return time.perf_counter() - started


def _declare_queue(url: str, exchange: str, queue: str) -> None:
    async def declare() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            amqp = AmqpSettings(exchange=exchange, queue=queue)
            dlx = await channel.declare_exchange(amqp.dead_letter_exchange_name, aio_pika.ExchangeType.TOPIC,
                                                 durable=True)  # fmt: skip
            await channel.declare_queue(amqp.dead_letter_queue_name, durable=True)
            del dlx
            declared = await channel.declare_queue(queue, durable=True, arguments=queue_arguments(amqp))
            await declared.bind(ex, "#")

    asyncio.run(declare())


def _delete(url: str, exchange: str, queue: str | None = None) -> None:
    """Remove what a measurement declared, dead-letter side included, so the broker is left as found."""

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            if queue is not None:
                for name in (queue, f"{queue}.dead"):
                    await channel.queue_delete(name)
            for name in (exchange, f"{exchange}.dead"):
                await channel.exchange_delete(name)

    asyncio.run(delete())


def measure_aggregator_ingest(url: str, bodies: list[bytes], routing_key: str, events: int, workdir: Path,
                              scrape_load: bool = False) -> float:  # fmt: skip
    """Events per second from a full queue into the store of a paused-then-resumed aggregator subprocess."""
    token = uuid.uuid4().hex[:8]
    exchange, queue, port = f"bench.{token}.x", f"bench.{token}.q", free_port()
    with aggregator_process(exchange, queue, port, workdir / token) as process:
        process.send_signal(signal.SIGSTOP)
        try:
            asyncio.run(_publish_bodies(url, exchange, bodies, routing_key))
        finally:
            process.send_signal(signal.SIGCONT)
        scraper = _scrape_continuously(port) if scrape_load else None
        started = time.perf_counter()
        try:
            while scrape_total(port, "tickbus_events_received_total") < events:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            if scraper is not None:
                scraper.terminate()
                scraper.wait()
    _delete(url, exchange, queue)
    return events / elapsed


def _scrape_continuously(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import urllib.request\n"
        "while True:\n"
        f"    urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


ROUNDS = 3


def side_by_side(
    name: str, ours: Callable[[], float], baseline: Callable[[], float], progress: Progress
) -> tuple[float, float]:
    """Each measured ROUNDS times, alternating, so drift of a shared machine hits both; the medians."""
    ours_runs, baseline_runs = [], []
    for round_number in range(1, ROUNDS + 1):
        progress(f"{name}: round {round_number}/{ROUNDS}")
        ours_runs.append(ours())
        baseline_runs.append(baseline())
    return statistics.median(ours_runs), statistics.median(baseline_runs)


def bench_single(url: str, count: int, workdir: Path, progress: Progress) -> Figure:
    codec = Codec("application/msgpack")
    bodies = [codec.encode([event]) for event in mixed_events(count)]

    def raw() -> float:
        token = uuid.uuid4().hex[:8]
        exchange, queue = f"bench.{token}.x", f"bench.{token}.q"
        _declare_queue(url, exchange, queue)
        asyncio.run(_publish_bodies(url, exchange, bodies, "signal"))
        rate = count / asyncio.run(_raw_consume(url, queue, count))
        _delete(url, exchange, queue)
        return rate

    ours, baseline = side_by_side(
        f"one event per message, {count} messages: aggregator vs raw aio-pika consume-and-ack",
        lambda: measure_aggregator_ingest(url, bodies, "signal", count, workdir),
        raw,
        progress,
    )
    return Figure("1 event/message: ingest vs raw aio-pika consume+ack", ours, baseline, "messages/s", ">= 0.9").judge(
        at_least=0.9
    )


def bench_batched(url: str, batch: int, events: int, workdir: Path, progress: Progress) -> Figure:
    codec = Codec("application/msgpack")
    all_events = mixed_events(events)
    bodies = [codec.encode(all_events[start : start + batch]) for start in range(0, events, batch)]

    def in_process() -> float:
        mirror = PrometheusClientMirror()
        started = time.perf_counter()
        mirror.apply(all_events)
        return events / (time.perf_counter() - started)

    ours, baseline = side_by_side(
        f"{batch} events/message, {events} events: aggregator vs prometheus_client in-process",
        lambda: measure_aggregator_ingest(url, bodies, "batch", events, workdir),
        in_process,
        progress,
    )
    return Figure(f"{batch} events/message: ingest vs prometheus_client in-process", ours, baseline, "events/s",
                  ">= 3").judge(at_least=3.0)  # fmt: skip


def bench_ingest_under_scrape(url: str, events: int, workdir: Path, progress: Progress) -> Figure:
    codec = Codec("application/msgpack")
    all_events = mixed_events(events)
    bodies = [codec.encode(all_events[start : start + 100]) for start in range(0, events, 100)]
    loaded, quiet = side_by_side(
        "100 events/message: scraped back to back vs not scraped",
        lambda: measure_aggregator_ingest(url, bodies, "batch", events, workdir, scrape_load=True),
        lambda: measure_aggregator_ingest(url, bodies, "batch", events, workdir),
        progress,
    )
    return Figure("ingest while scraped continuously vs not scraped", loaded, quiet, "events/s", ">= 0.8").judge(
        at_least=0.8
    )


def bench_emit(url: str, count: int, progress: Progress) -> list[Figure]:
    progress(f"emit() cost over {count} events vs Counter.labels().inc()")
    registry = CollectorRegistry()
    counter = Counter("bench_signals", "h", ["source", "strategy", "symbol", "side", "outcome"], registry=registry)
    now = time.time()
    prebuilt = [Signal(ts=now, source="bench", strategy="m", symbol=SYMBOLS[i % 50], side="buy") for i in range(count)]
    started = time.perf_counter()
    for index in range(count):
        counter.labels("bench", "m", SYMBOLS[index % 50], "buy", "generated").inc()
    per_inc = (time.perf_counter() - started) / count
    token = uuid.uuid4().hex[:8]
    settings = EmitterSettings(source="bench", url=url, exchange=f"bench.{token}.x", max_buffer=count * 2)
    # Producers publish mandatory and never declare: the exchange and a queue must exist, as an aggregator makes them.
    _declare_queue(url, settings.exchange, f"bench.{token}.q")
    with Emitter(settings) as emitter:
        emit = emitter.emit
        started = time.perf_counter()
        for event in prebuilt:
            emit(event)
        per_emit = (time.perf_counter() - started) / count
        started = time.perf_counter()
        for index in range(count):
            emit(Signal(ts=now, source="bench", strategy="m", symbol=SYMBOLS[index % 50], side="buy"))
        per_build_and_emit = (time.perf_counter() - started) / count
        emitter.flush(120)
    _delete(url, settings.exchange, f"bench.{token}.q")
    return [
        Figure("emit() per event vs Counter.labels().inc()", per_emit * 1e9, per_inc * 1e9, "ns", "<= 0.25").judge(
            at_most=0.25
        ),
        Figure(
            "build the event + emit() vs Counter.labels().inc()",
            per_build_and_emit * 1e9,
            per_inc * 1e9,
            "ns",
            "<= 0.25",
            note="includes constructing the msgspec Struct",
        ).judge(at_most=0.25),
    ]


def _counter_store(series: int) -> tuple[Ingest, list[tuple[str, str, str, str, str]]]:
    store = Store()
    ingest = Ingest(CatalogSettings(max_series_per_metric=series * 2), [], store, SelfMetrics(store))
    family = ingest.store.families["trading_errors_total"]
    assert isinstance(family, CounterFamily)
    keys = [("bench", f"component{index % 100}", f"type{index // 100}", "error", f"SYM{index % 50}")
            for index in range(series)]  # fmt: skip
    for key in keys:
        family.inc(key, 3.0)
    return ingest, keys


def bench_render(series: int, progress: Progress) -> Figure:
    progress(f"/metrics render of {series} series vs prometheus_client generate_latest")
    ingest, keys = _counter_store(series)
    exposition = Exposition(ReadView(ingest.store, ingest.sources), min_interval=0)
    exposition.render()  # the first scrape builds the per-series prefixes
    family = ingest.store.families["trading_errors_total"]
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        family.version += 1  # every scrape sees the family changed: a full re-render
        exposition.render()
    ours = (time.perf_counter() - started) / rounds
    registry = CollectorRegistry()
    counter = Counter("trading_errors", "h", ["source", "component", "error_type", "severity", "symbol"],
                      registry=registry)  # fmt: skip
    for key in keys:
        counter.labels(*key).inc(3.0)
    started = time.perf_counter()
    for _ in range(rounds):
        generate_latest(registry)
    baseline = (time.perf_counter() - started) / rounds
    return Figure(f"render {series} series vs generate_latest", ours * 1e3, baseline * 1e3, "ms", "<= 0.1").judge(
        at_most=0.1
    )


def _allocated(build: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def bench_memory(series: int, progress: Progress) -> list[Figure]:
    progress(f"memory per series over {series} counter and histogram series vs prometheus_client")
    figures = []

    def label_keys() -> list[tuple[str, ...]]:
        # Fresh strings per series, as decoding gives them.
        return [("bench", f"strategy{index % 20}", f"SYM{index}".encode().decode()) for index in range(series)]

    def at_rest(family: Any) -> Any:
        family.thaw(written=True)  # after a commit: the set of changed series is empty again
        family.freeze()
        family.thaw(written=True)
        return family

    def ours_counters() -> Any:
        family = CounterFamily("c_total", "h", ["source", "strategy", "symbol"], max_series=series * 2)
        for key in label_keys():
            family.inc(key)
        return at_rest(family)

    def ours_histograms() -> Any:
        family = HistogramFamily("h_seconds", "h", ["source", "strategy", "symbol"], max_series=series * 2,
                                 buckets=[0.001, 0.01, 0.1, 1.0, 10.0])  # fmt: skip
        for key in label_keys():
            family.observe(key, 0.05)
        return at_rest(family)

    def theirs(kind: str) -> Callable[[], Any]:
        def build() -> Any:
            registry = CollectorRegistry()
            metric: Any
            if kind == "counter":
                metric = Counter("c", "h", ["source", "strategy", "symbol"], registry=registry)
                for key in label_keys():
                    metric.labels(*key).inc()
            else:
                metric = Histogram("h_seconds", "h", ["source", "strategy", "symbol"], registry=registry,
                                   buckets=[0.001, 0.01, 0.1, 1.0, 10.0])  # fmt: skip
                for key in label_keys():
                    metric.labels(*key).observe(0.05)
            return registry

        return build

    for kind, ours_build in (("counter", ours_counters), ("histogram", ours_histograms)):
        ours_bytes, _ = _allocated(ours_build)
        their_bytes, _ = _allocated(theirs(kind))
        figures.append(Figure(f"memory per {kind} series vs prometheus_client", ours_bytes / series,
                              their_bytes / series, "bytes", "<= 0.25").judge(at_most=0.25))  # fmt: skip
    return figures


def bench_freshness(url: str, seconds: float, workdir: Path, progress: Progress) -> dict[str, float]:
    """emit() to visible on /metrics, at 10,000 events/s of background load, default producer settings."""
    progress(f"freshness: emit() -> visible on /metrics at 10,000 events/s for {seconds:g}s")
    token = uuid.uuid4().hex[:8]
    exchange, queue, port = f"bench.{token}.x", f"bench.{token}.q", free_port()
    latencies: list[float] = []
    with aggregator_process(exchange, queue, port, workdir / token):
        emitter = Emitter(EmitterSettings(source="fresh", url=url, exchange=exchange))
        sent: dict[int, float] = {}
        stop = threading.Event()
        seen: dict[int, float] = {}

        def scrape() -> None:
            while not stop.is_set():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    text = response.read().decode()
                at = time.perf_counter()
                for line in text.splitlines():
                    if line.startswith("trading_position_quantity{") and 'source="fresh"' in line:
                        seen.setdefault(int(float(line.rsplit(" ", 1)[1])), at)

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        deadline = time.perf_counter() + seconds
        sequence = 0
        background = Error(ts=time.time(), source="fresh", component="load", error_type="noise")
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            for _ in range(100):  # 100 events per 10 ms: 10,000 events/s
                emitter.emit(background)
            if sequence % 2 == 0:
                probe = sequence // 2 + 1
                sent[probe] = time.perf_counter()
                emitter.emit(Position(ts=time.time(), source="fresh", symbol="PROBE", quantity=float(probe)))
            sequence += 1
            time.sleep(max(0.0, 0.01 - (time.perf_counter() - tick)))
        emitter.flush(30)
        time.sleep(0.5)
        stop.set()
        scraper.join(10)
        emitter.close()
    last_seen_value = 0
    for probe in sorted(sent):
        # A later value on /metrics means this probe was visible then too (gauges move forward in time).
        first = min((at for value, at in seen.items() if value >= probe), default=None)
        if first is not None:
            latencies.append(first - sent[probe])
            last_seen_value = probe
    latencies.sort()
    _delete(url, exchange, queue)

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1e3

    return {"probes": float(len(sent)), "visible": float(last_seen_value), "p50_ms": percentile(0.5),
            "p99_ms": percentile(0.99), "max_ms": latencies[-1] * 1e3}  # fmt: skip


def run(url: str, quick: bool, progress: Progress) -> Report:
    """Every comparison, each against its baseline in this same run."""
    scale = 0.5 if quick else 1.0
    report = Report(machine(), " ".join(["aggregator", "bench", *sys.argv[2:]]))
    with tempfile.TemporaryDirectory(prefix="tickbus-bench-") as directory:
        workdir = Path(directory)
        report.figures.append(bench_single(url, int(20_000 * scale), workdir, progress))
        report.figures.append(bench_batched(url, 100, int(300_000 * scale), workdir, progress))
        report.figures.append(bench_batched(url, 1000, int(500_000 * scale), workdir, progress))
        report.figures.extend(bench_emit(url, int(200_000 * scale), progress))
        report.figures.append(bench_render(10_000, progress))
        report.figures.append(bench_render(100_000, progress))
        report.figures.append(bench_ingest_under_scrape(url, int(200_000 * scale), workdir, progress))
        report.figures.extend(bench_memory(int(50_000 * scale), progress))
        report.extra["freshness"] = bench_freshness(url, 10 * scale, workdir, progress)
    fresh = report.extra["freshness"]
    report.figures.append(
        Figure(
            "freshness p99 emit() -> /metrics at 10k events/s",
            fresh["p99_ms"],
            50.0,
            "ms",
            "<= 50 ms",
            note=f"p50 {fresh['p50_ms']:.1f} ms",
        ).judge(at_most=1.0)
    )
    return report


def table(report: Report) -> str:
    lines = [f"{'comparison':<58} {'tickbus':>12} {'baseline':>12} {'unit':<11} {'ratio':>7}  target   met"]
    for figure in report.figures:
        lines.append(
            f"{figure.name:<58} {figure.ours:>12,.1f} {figure.baseline:>12,.1f} {figure.unit:<11} "
            f"{figure.ratio:>7.3f}  {figure.target:<8} {'yes' if figure.met else 'NO'}"
        )
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    return asdict(report)
