"""Draining a full queue into the aggregator (checkpoints on), or into a plain consumer that only acks."""

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.live import (
    HealthSampler,
    Names,
    aggregator_process,
    consume_and_ack,
    cpu_seconds,
    declare_aggregator_queue,
    declared,
    events_total,
    free_port,
    publish,
)

POLL_SECONDS = 0.02


@dataclass
class Drain:
    """One drain of a full queue: how many events, in how long, for how much CPU of the consuming process."""

    events: int
    seconds: float
    cpu_seconds: float
    health: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_million(self) -> float:
        """CPU-seconds per million events."""
        return self.cpu_seconds / self.events * 1e6


def wait_for_events(port: int, pid: int, events: int, sample_health: bool = False) -> Drain:
    """From now until the aggregator on `port` has applied `events`: the time, its CPU, and /healthz if asked."""
    with ExitStack() as stack:
        sampler = stack.enter_context(HealthSampler(port)) if sample_health else None
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        while events_total(port) < events:
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    return Drain(events, elapsed, cpu, sampler.percentiles_ms() if sampler is not None else None)


@contextmanager
def scraping(port: int) -> Iterator[None]:
    """A second process fetching the whole /metrics back to back while the block runs.

    One kept-alive connection, as Prometheus scrapes. It is started, and its interpreter has imported what
    it needs, before the block begins: its start-up (some 40 ms of CPU on a machine that has two cores for
    the broker, the aggregator and it) is not scrape load.
    """
    code = (
        "import http.client\n"
        f"connection = http.client.HTTPConnection('127.0.0.1', {port}, timeout=60)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    connection.request('GET', '/metrics')\n"
        "    connection.getresponse().read()\n"
    )
    scraper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert scraper.stdout is not None
        if scraper.stdout.readline() != b"ready\n":
            raise RuntimeError("the scraping process did not start")
        yield
    finally:
        scraper.terminate()
        scraper.wait()


def drain_aggregator(
    url: str,
    bodies: Iterable[bytes],
    routing_key: str,
    events: int,
    workdir: Path,
    config: Path | None = None,
    sample_health: bool = False,
    scrape_load: bool = False,
) -> Drain:
    """Queue `bodies` while the aggregator (the real CLI, a subprocess with a state dir) is paused; time its drain."""
    names, port = Names.fresh(), free_port()
    with ExitStack() as stack:
        stack.enter_context(declared(url, names))
        process = stack.enter_context(aggregator_process(names, port, workdir / names.queue, config))
        process.send_signal(signal.SIGSTOP)
        try:
            publish(url, names.exchange, bodies, routing_key)
            if scrape_load:
                stack.enter_context(scraping(port))  # its first requests wait for the process to go on
        finally:
            process.send_signal(signal.SIGCONT)
        return wait_for_events(port, process.pid, events, sample_health)


def drain_ceiling(url: str, bodies: Iterable[bytes], routing_key: str, events: int) -> Drain:
    """The same bodies from the same kind of queue into a plain aio-pika consumer that acks each and decodes nothing.

    Its CPU is this process's (nothing else runs in it meanwhile).
    """
    names = Names.fresh("ceiling")
    with declared(url, names):
        declare_aggregator_queue(url, names)
        messages = publish(url, names.exchange, bodies, routing_key)
        cpu_before = time.process_time()
        seconds = asyncio.run(consume_and_ack(url, names.queue, messages))
        cpu = time.process_time() - cpu_before
    return Drain(events, seconds, cpu)
