"""The series-scale table: draining 1,000-event messages spread over 1k to 1M label sets, and restarting from that."""

import gzip
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.ingest import wait_for_events
from benchmarks.live import (
    Names,
    aggregator_command,
    aggregator_process,
    declared,
    free_port,
    peak_rss_bytes,
    publish,
    rss_bytes,
    stop,
    wait_ready,
)
from schemas.events import Error, EventBase, Signal
from schemas.wire import Codec

PER_MESSAGE = 1000
# What Prometheus sends: OpenMetrics preferred, gzip.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


@dataclass
class ScaleRow:
    """One row of the table: a drain over `label_sets` label sets (two series each) and a restart from its state."""

    label_sets: int
    events: int
    series: float
    events_per_second: float
    cpu_per_million: float
    commits: float
    commit_mean_ms: float
    commit_max_ms: float  # the upper bound of the highest non-empty bucket of tickbus_checkpoint_seconds
    compactions: float
    compaction_seconds: float
    healthz_samples: float
    healthz_p50_ms: float
    healthz_p99_ms: float
    healthz_max_ms: float
    peak_rss_mb: float
    scrape_seconds: float
    scrape_mb: float  # uncompressed
    state_mb: float
    restart_seconds: float
    # The restarted process's resident set once ready (VmRSS): the restored store's memory.
    restart_rss_mb: float = float("nan")


def events_over(label_sets: int, events: int) -> Iterator[list[EventBase]]:
    """`events` counter events, PER_MESSAGE to a message, passing over the label sets in turn.

    Event k is of label set k mod `label_sets`, a signal on even passes and an error on odd ones, so that each label
    set is two series (signals_total and errors_total) once `events` reaches twice `label_sets`.
    """
    now = time.time()
    for first in range(0, events, PER_MESSAGE):
        batch: list[EventBase] = []
        for k in range(first, min(events, first + PER_MESSAGE)):
            symbol = f"S{k % label_sets}"
            if (k // label_sets) % 2 == 0:
                batch.append(Signal(ts=now, source="scale", strategy="scale", symbol=symbol, side="buy"))
            else:
                batch.append(Error(ts=now, source="scale", component="scale", error_type="gap", symbol=symbol))
        yield batch


def bodies_over(label_sets: int, events: int) -> Iterator[bytes]:
    codec = Codec("application/msgpack")
    for batch in events_over(label_sets, events):
        yield codec.encode(batch)


def config_for(label_sets: int, directory: Path) -> Path:
    """Room for every label set in each metric (the default limit is 10,000 series per metric)."""
    path = directory / f"scale-{label_sets}.toml"
    path.write_text(f"[catalog]\nmax_series_per_metric = {label_sets + 1000}\n")
    return path


def timed_scrape(port: int) -> tuple[float, bytes]:
    """One scrape as Prometheus makes it: seconds to the whole body, and the body, decompressed."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=SCRAPE_HEADERS)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        body = response.read()
        compressed = response.headers.get("Content-Encoding") == "gzip"
    elapsed = time.perf_counter() - started
    return elapsed, gzip.decompress(body) if compressed else body


def self_samples(body: bytes) -> dict[str, list[tuple[str, float]]]:
    """The tickbus_* samples of a scrape: name -> [(labels, value)]."""
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in body.decode().splitlines():
        if not line.startswith("tickbus_"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        samples.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return samples


def histogram_stats(samples: dict[str, list[tuple[str, float]]], name: str) -> tuple[float, float, float]:
    """(count, sum, upper bound of the highest non-empty bucket) of a label-less histogram; +Inf as inf."""
    count = sum(value for _, value in samples.get(f"{name}_count", []))
    total = sum(value for _, value in samples.get(f"{name}_sum", []))
    bound = 0.0
    for labels, cumulative in sorted(
        ((labels, value) for labels, value in samples.get(f"{name}_bucket", [])),
        key=lambda row: float(row[0].split('le="', 1)[1].split('"', 1)[0]),
    ):
        bound = float(labels.split('le="', 1)[1].split('"', 1)[0])
        if cumulative >= count:
            break
    return count, total, bound


def _size_mb(directory: Path) -> float:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) / 1e6


def measure(url: str, label_sets: int, events: int, workdir: Path) -> ScaleRow:
    """Drain `events` over `label_sets` into a fresh aggregator, sampling /healthz, then scrape it once.

    Then stop it cleanly and time a new one from its start to ready on the same state.
    """
    names, port = Names.fresh("scale"), free_port()
    state, config = workdir / names.queue, config_for(label_sets, workdir)
    with declared(url, names):
        with aggregator_process(names, port, state, config) as process:
            process.send_signal(signal.SIGSTOP)
            try:
                publish(url, names.exchange, bodies_over(label_sets, events), "batch")
            finally:
                process.send_signal(signal.SIGCONT)
            drain = wait_for_events(port, process.pid, events, sample_health=True)
            scrape_seconds, body = timed_scrape(port)
            rss = peak_rss_bytes(process.pid)
        samples = self_samples(body)
        series = sum(value for labels, value in samples.get("tickbus_series", []) if 'metric="trading_' in labels)
        commits, commit_seconds, commit_max = histogram_stats(samples, "tickbus_checkpoint_seconds")
        compactions, compaction_seconds, _ = histogram_stats(samples, "tickbus_checkpoint_compaction_seconds")
        state_mb = _size_mb(state)
        started = time.perf_counter()
        restarted = subprocess.Popen(aggregator_command(names, port, state, config), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_ready(restarted, port, poll=0.01)
            restart_seconds = time.perf_counter() - started
            restart_rss = rss_bytes(restarted.pid)
        finally:
            stop(restarted)
    health = drain.health or {}
    return ScaleRow(
        label_sets=label_sets,
        events=events,
        series=series,
        events_per_second=drain.rate,
        cpu_per_million=drain.cpu_per_million,
        commits=commits,
        commit_mean_ms=commit_seconds / commits * 1e3 if commits else float("nan"),
        commit_max_ms=commit_max * 1e3,
        compactions=compactions,
        compaction_seconds=compaction_seconds,
        healthz_samples=health.get("samples", 0.0),
        healthz_p50_ms=health.get("p50_ms", float("nan")),
        healthz_p99_ms=health.get("p99_ms", float("nan")),
        healthz_max_ms=health.get("max_ms", float("nan")),
        peak_rss_mb=rss / 1e6,
        scrape_seconds=scrape_seconds,
        scrape_mb=len(body) / 1e6,
        state_mb=state_mb,
        restart_seconds=restart_seconds,
        restart_rss_mb=restart_rss / 1e6,
    )


def as_dict(row: ScaleRow) -> dict[str, Any]:
    return asdict(row)
