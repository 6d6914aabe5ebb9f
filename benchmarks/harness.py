"""`aggregator bench`: each figure measured side by side with its baseline in one run, against the local broker."""

import contextlib
import gc
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from aggregator.catalog import BUILTIN_CATALOG, MetricType
from aggregator.compiler import Feed
from aggregator.config import CatalogSettings
from aggregator.exposition import Exposition
from aggregator.ingest import Ingest
from aggregator.readview import ReadView
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import CounterFamily, HistogramFamily, Store
from benchmarks import collectd, emitting, scale
from benchmarks.ingest import Drain, drain_aggregator, drain_ceiling
from benchmarks.live import Names, aggregator_process, declared, free_port, load_average
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
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_before": [round(value, 2) for value in load_average()]}  # fmt: skip


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


# --- ingest through the broker: the aggregator (a subprocess of the CLI, checkpoints on) against its baselines ----

ROUNDS = 3


def rounds(name: str, measures: dict[str, Callable[[], float]], progress: Progress) -> dict[str, float]:
    """Each measured ROUNDS times, in turn, so that drift of a shared machine hits all of them; the medians."""
    runs: dict[str, list[float]] = {key: [] for key in measures}
    for round_number in range(1, ROUNDS + 1):
        progress(f"{name}: round {round_number}/{ROUNDS}")
        for key, measure in measures.items():
            runs[key].append(measure())
    return {key: statistics.median(values) for key, values in runs.items()}


def batches(events: list[EventBase], size: int) -> list[bytes]:
    codec = Codec("application/msgpack")
    return [codec.encode(events[start : start + size]) for start in range(0, len(events), size)]


def in_process_rate(events: list[EventBase]) -> float:
    """prometheus_client updating the same series in this process, no broker: events/s."""
    mirror = PrometheusClientMirror()
    started = time.perf_counter()
    mirror.apply(events)
    return len(events) / (time.perf_counter() - started)


def bench_single(url: str, count: int, workdir: Path, progress: Progress) -> Figure:
    codec = Codec("application/msgpack")
    bodies = [codec.encode([event]) for event in mixed_events(count)]
    medians = rounds(
        f"one event per message, {count:,} messages: aggregator vs raw aio-pika consume-and-ack",
        {
            "ours": lambda: drain_aggregator(url, bodies, "signal", count, workdir).rate,
            "ceiling": lambda: drain_ceiling(url, bodies, "signal", count).rate,
        },
        progress,
    )
    return Figure("1 event/message: ingest vs raw aio-pika consume+ack", medians["ours"], medians["ceiling"],
                  "messages/s", ">= 0.9").judge(at_least=0.9)  # fmt: skip


def bench_batched(url: str, events: int, workdir: Path, progress: Progress) -> list[Figure]:
    all_events = mixed_events(events)
    bodies = batches(all_events, 100)
    medians = rounds(
        f"100 events/message, {events:,} events: aggregator vs prometheus_client in-process",
        {
            "ours": lambda: drain_aggregator(url, bodies, "batch", events, workdir).rate,
            "client": lambda: in_process_rate(all_events),
        },
        progress,
    )
    return [Figure("100 events/message: ingest vs prometheus_client in-process", medians["ours"], medians["client"],
                   "events/s", ">= 3").judge(at_least=3.0)]  # fmt: skip


def bench_ceiling(url: str, events: int, workdir: Path, progress: Progress) -> list[Figure]:
    """Batched ingest against the bus ceiling (a plain consumer acking the same bodies) and prometheus_client."""
    all_events = mixed_events(events)
    bodies = batches(all_events, 1000)
    medians = rounds(
        f"1,000 events/message, {events:,} events: aggregator vs plain consumer vs prometheus_client",
        {
            "ours": lambda: drain_aggregator(url, bodies, "batch", events, workdir).rate,
            "ceiling": lambda: drain_ceiling(url, bodies, "batch", events).rate,
            "client": lambda: in_process_rate(all_events),
        },
        progress,
    )
    ours = medians["ours"]
    return [
        Figure("1,000 events/message (checkpoints on) vs the bus ceiling", ours, medians["ceiling"], "events/s",
               ">= 0.4", note="ceiling: aio-pika consumer acking the same bodies from the same kind of queue"
               ).judge(at_least=0.4),
        Figure("1,000 events/message: ingest vs prometheus_client in-process", ours, medians["client"], "events/s",
               ">= 3").judge(at_least=3.0),
        Figure("1,000 events/message vs the 1,000,000 events/s aim", ours, 1e6, "events/s", ">= 1").judge(
            at_least=1.0),
    ]  # fmt: skip


COLLECTD_SERIES = 100


def counter_bodies(events: int, per_message: int, series: int) -> list[bytes]:
    """The tickbus side of the collectd comparison: the same events, messages and series as collectd's bodies.

    Error events only (one counter series each); message m is all of series m mod `series`.
    """
    codec = Codec("application/msgpack")
    now = time.time()
    return [
        codec.encode([Error(ts=now, source="bench", component="feed", error_type=collectd.series_name(index % series))
                      for _ in range(per_message)])
        for index in range(events // per_message)
    ]  # fmt: skip


def bench_collectd(url: str, events: int, workdir: Path, progress: Progress, extra: dict[str, Any]) -> list[Figure]:
    """Equivalent counter events through the same broker into tickbus and into collectd (amqp -> write_prometheus)."""
    collectd.check_installed()
    ours_bodies = counter_bodies(events, 1000, COLLECTD_SERIES)
    their_bodies = collectd.bodies(events, 1000, COLLECTD_SERIES)
    ours_runs: list[Drain] = []
    their_runs: list[Drain] = []
    errors: list[int] = []

    def ours() -> float:
        ours_runs.append(drain_aggregator(url, ours_bodies, "batch", events, workdir))
        return ours_runs[-1].rate

    def theirs() -> float:
        drain, logged = collectd.drain_collectd(url, their_bodies, "batch", events, workdir)
        their_runs.append(drain)
        errors.append(logged)
        return drain.rate

    medians = rounds(f"counter events, 1,000/message over {COLLECTD_SERIES} series, {events:,} events: "
                     "aggregator vs collectd", {"ours": ours, "collectd": theirs}, progress)  # fmt: skip
    ours_cpu = statistics.median(run.cpu_per_million for run in ours_runs)
    their_cpu = statistics.median(run.cpu_per_million for run in their_runs)
    extra["collectd"] = {
        "events": events,
        "series": COLLECTD_SERIES,
        "per_message": 1000,
        "format": "Command (PUTVAL, text/collectd): the only one its amqp plugin decodes",
        "write_threads": collectd.WRITE_THREADS,
        "tickbus_runs": [asdict(run) for run in ours_runs],
        "collectd_runs": [asdict(run) for run in their_runs],
        "collectd_errors_logged": errors,
    }
    return [
        Figure("counter events: ingest vs collectd (amqp -> write_prometheus)", medians["ours"], medians["collectd"],
               "events/s", ">= 2").judge(at_least=2.0),
        Figure("counter events: CPU per event vs collectd's", ours_cpu, their_cpu, "CPU-s/M events", "<= 1",
               note="CPU-seconds per million events of the consuming process, from /proc").judge(at_most=1.0),
    ]  # fmt: skip


def bench_ingest_under_scrape(url: str, events: int, workdir: Path, progress: Progress) -> Figure:
    bodies = batches(mixed_events(events), 100)
    medians = rounds(
        "100 events/message: scraped back to back vs not scraped",
        {
            "loaded": lambda: drain_aggregator(url, bodies, "batch", events, workdir, scrape_load=True).rate,
            "quiet": lambda: drain_aggregator(url, bodies, "batch", events, workdir).rate,
        },
        progress,
    )
    return Figure("ingest while scraped continuously vs not scraped", medians["loaded"], medians["quiet"],
                  "events/s", ">= 0.9").judge(at_least=0.9)  # fmt: skip


def bench_emit(url: str, count: int, seconds: float, progress: Progress, extra: dict[str, Any]) -> list[Figure]:
    progress(f"emitter CPU per event over {count:,} events vs Counter.labels().inc()")
    cpu = emitting.cpu_per_event(url, count)
    progress(f"emitter: highest drop-free rate in one process ({seconds:g} s per trial)")
    drop_free = emitting.highest_drop_free_rate(url, seconds, progress=progress)
    extra["emitter"] = {"cpu_ns": asdict(cpu), "drop_free": asdict(drop_free)}
    return [
        Figure("emit() CPU per event vs Counter.labels().inc()", cpu.emit_ns, cpu.inc_ns, "CPU ns", "<= 0.25"
               ).judge(at_most=0.25),
        Figure("build the event + emit() CPU vs Counter.labels().inc()", cpu.build_and_emit_ns, cpu.inc_ns, "CPU ns",
               "<= 0.25", note="includes constructing the msgspec Struct").judge(at_most=0.25),
        Figure("emitting process CPU per event vs Counter.labels().inc()", cpu.process_ns, cpu.inc_ns, "CPU ns",
               "<= 1", note="build + emit() + the publisher thread encoding and publishing with confirms"
               ).judge(at_most=1.0),
    ]  # fmt: skip


def bench_series(url: str, sizes: list[tuple[int, int]], workdir: Path, progress: Progress,
                 extra: dict[str, Any]) -> list[Figure]:  # fmt: skip
    rows: list[scale.ScaleRow] = []
    for label_sets, events in sizes:
        progress(f"series scale: {events:,} events over {label_sets:,} label sets, then a restart from that state")
        rows.append(scale.measure(url, label_sets, events, workdir))
    extra["series_scale"] = [scale.as_dict(row) for row in rows]
    smallest, largest = rows[0], rows[-1]
    return [
        Figure(f"{largest.label_sets:,} vs {smallest.label_sets:,} label sets: drain events/s",
               largest.events_per_second, smallest.events_per_second, "events/s", ">= 0.5").judge(at_least=0.5),
        Figure(f"/healthz p99 while draining {largest.label_sets:,} label sets", largest.healthz_p99_ms, 100.0, "ms",
               "<= 100 ms", note=f"max {largest.healthz_max_ms:.0f} ms").judge(at_most=1.0),
        Figure(f"restart to ready with {largest.series:,.0f} series", largest.restart_seconds, 3.0, "s", "<= 3 s"
               ).judge(at_most=1.0),
        Figure(f"first scrape of {largest.series:,.0f} series (OpenMetrics, gzip)", largest.scrape_seconds, 5.0, "s",
               "<= 5 s").judge(at_most=1.0),
    ]  # fmt: skip


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
    exposition.render()  # a warm-up scrape (the Python renderer builds its per-series prefixes in it)
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
    names, port = Names.fresh(), free_port()
    latencies: list[float] = []
    with declared(url, names), aggregator_process(names, port, workdir / names.queue):
        emitter = Emitter(EmitterSettings(source="fresh", url=url, exchange=names.exchange))
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

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1e3

    return {"probes": float(len(sent)), "visible": float(last_seen_value), "p50_ms": percentile(0.5),
            "p99_ms": percentile(0.99), "max_ms": latencies[-1] * 1e3}  # fmt: skip


@dataclass
class Context:
    """What every section gets: the broker, the volumes' scale, a scratch directory, progress and the report."""

    url: str
    quick: bool
    workdir: Path
    progress: Progress
    report: Report

    def volume(self, full: int) -> int:
        return full // 2 if self.quick else full


def _freshness(context: Context) -> list[Figure]:
    fresh = bench_freshness(context.url, 5.0 if context.quick else 10.0, context.workdir, context.progress)
    context.report.extra["freshness"] = fresh
    return [Figure("freshness p99 emit() -> /metrics at 10k events/s", fresh["p99_ms"], 50.0, "ms", "<= 50 ms",
                   note=f"p50 {fresh['p50_ms']:.1f} ms").judge(at_most=1.0)]  # fmt: skip


def _series_sizes(quick: bool) -> list[tuple[int, int]]:
    """(label sets, events) of each row.

    Twice as many events as label sets at 1M (both series of every label set); half in quick runs (one each).
    """
    if quick:
        return [(1_000, 100_000), (100_000, 200_000), (1_000_000, 1_000_000)]
    return [(1_000, 200_000), (100_000, 400_000), (1_000_000, 2_000_000)]


Section = Callable[[Context], list[Figure]]
SECTIONS: dict[str, tuple[str, Section]] = {
    "single": ("1 event per message vs a plain consumer",
               lambda c: [bench_single(c.url, c.volume(20_000), c.workdir, c.progress)]),
    "batched": ("100 events per message vs prometheus_client",
                lambda c: bench_batched(c.url, c.volume(300_000), c.workdir, c.progress)),
    "ceiling": ("1,000 events per message vs the bus ceiling and prometheus_client",
                lambda c: bench_ceiling(c.url, c.volume(1_000_000), c.workdir, c.progress)),
    "collectd": ("counter events vs collectd",
                 lambda c: bench_collectd(c.url, c.volume(2_000_000), c.workdir, c.progress, c.report.extra)),
    "emit": ("the Python emitter: CPU per event and highest drop-free rate",
             lambda c: bench_emit(c.url, c.volume(200_000), 1.0 if c.quick else 2.0, c.progress, c.report.extra)),
    "render": ("/metrics rendering vs generate_latest",
               lambda c: [bench_render(10_000, c.progress), bench_render(100_000, c.progress)]),
    "scraped": ("ingest while scraped back to back",
                lambda c: [bench_ingest_under_scrape(c.url, c.volume(600_000), c.workdir, c.progress)]),
    "memory": ("memory per series vs prometheus_client",
               lambda c: bench_memory(c.volume(50_000), c.progress)),
    "freshness": ("emit() to visible on /metrics", _freshness),
    "series": ("the series-scale table (1k / 100k / 1M label sets) and restart",
               lambda c: bench_series(c.url, _series_sizes(c.quick), c.workdir, c.progress, c.report.extra)),
}  # fmt: skip


def _exit_on_sigterm() -> None:
    """SIGTERM exits through the `finally` blocks: no aggregator or collectd left running, no queue left declared."""

    def exit_cleanly(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, exit_cleanly)


def run(url: str, quick: bool, progress: Progress, only: list[str] | None = None) -> Report:
    """The sections named in `only` (all by default), each figure against its baseline in this same run."""
    chosen = only or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    _exit_on_sigterm()
    report = Report(machine(), " ".join(["aggregator", "bench", *sys.argv[2:]]))
    report.extra["sections"] = chosen
    with tempfile.TemporaryDirectory(prefix="tickbus-bench-") as directory:
        context = Context(url, quick, Path(directory), progress, report)
        for name in chosen:
            report.figures.extend(SECTIONS[name][1](context))
    report.machine["load_average_after"] = [round(value, 2) for value in load_average()]
    return report


def _number(value: float) -> str:
    """Whole numbers for large figures, three decimals for small ones (a CPU-seconds-per-million figure is ~1)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _row(figure: Figure) -> str:
    return (f"{figure.name:<62} {_number(figure.ours):>13} {_number(figure.baseline):>13} {figure.unit:<15} "
            f"{figure.ratio:>8.3f}  {figure.target:<10} {'yes' if figure.met else 'NO'}")  # fmt: skip


def table(report: Report) -> str:
    """Every figure with its baseline, ratio, target and whether it is met; then the tables behind them."""
    lines = [f"{'comparison':<62} {'tickbus':>13} {'baseline':>13} {'unit':<15} {'ratio':>8}  {'target':<10} met"]
    lines += [_row(figure) for figure in report.figures]
    extra = report.extra
    rows = extra.get("series_scale")
    if rows:
        lines += ["", "series scale (1,000 events/message, checkpoints on):",
                  f"{'label sets':>10} {'events':>10} {'series':>10} {'events/s':>10} {'CPU-s/M':>8} "
                  f"{'commits':>7} {'commit ms':>10} {'max <=':>7} {'healthz p50/p99/max ms':>24} {'RSS MB':>7} "
                  f"{'scrape s':>8} {'restart s':>9} {'B/series after':>14}"]  # fmt: skip
        for row in rows:
            healthz = f"{row['healthz_p50_ms']:.0f}/{row['healthz_p99_ms']:.0f}/{row['healthz_max_ms']:.0f}"
            lines.append(
                f"{row['label_sets']:>10,} {row['events']:>10,} {row['series']:>10,.0f} "
                f"{row['events_per_second']:>10,.0f} {row['cpu_per_million']:>8.2f} {row['commits']:>7,.0f} "
                f"{row['commit_mean_ms']:>10.1f} {row['commit_max_ms']:>7,.0f} {healthz:>24} "
                f"{row['peak_rss_mb']:>7,.0f} {row['scrape_seconds']:>8.2f} {row['restart_seconds']:>9.2f} "
                f"{row.get('restart_rss_mb', math.nan) * 1e6 / max(row['series'], 1):>14,.0f}"
            )
    emitter = extra.get("emitter")
    if emitter:
        drop_free = emitter["drop_free"]
        lines += ["", f"emitter: highest drop-free rate in one process {drop_free['rate']:,.0f} events/s "
                  f"({drop_free['seconds']:g} s per trial, a {drop_free['max_buffer']:,}-event buffer); "
                  f"labels().inc() takes {emitter['cpu_ns']['inc_ns']:,.0f} CPU ns"]  # fmt: skip
    collectd_runs = extra.get("collectd")
    if collectd_runs:
        lines += ["", f"collectd: {collectd_runs['format']}; WriteThreads {collectd_runs['write_threads']}; "
                  f"errors logged per run {collectd_runs['collectd_errors_logged']}"]  # fmt: skip
    fresh = extra.get("freshness")
    if fresh:
        lines += ["", f"freshness: {fresh}"]
    load = report.machine.get("load_average_before"), report.machine.get("load_average_after")
    lines += ["", f"load average (1, 5, 15 min) before {load[0]}, after {load[1]}"]
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    return asdict(report)
