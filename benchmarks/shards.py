"""One replica against three shards, side by side in one run: events/s drained and series held per replica.

Needs a broker with the consistent-hash exchange plugin, e.g. a private node:

    scripts/rabbitmq-node start bench --amqp-port 5701 --plugins rabbitmq_consistent_hash_exchange
    .venv/bin/python -m benchmarks.shards --amqp-url amqp://guest:guest@127.0.0.1:5701/
    scripts/rabbitmq-node stop bench --purge

Each layout: its replicas start ([shard] on, a state directory each) and are paused (SIGSTOP); the same
messages (batches of 100 events of one source, MessagePack, with the x-tickbus-source header, from `--sources`
sources) are published and confirmed; the replicas resume, and the time until they have applied every event
gives the events/s. Everything (broker, replicas, this process) shares the machine's cores.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import mixed_events
from benchmarks.live import free_port
from schemas.events import EventBase
from schemas.wire import BATCH_ROUTING_KEY, CONTENT_TYPE_MSGPACK, HEADER_SOURCE, Codec

BATCH = 100


@dataclass
class Layout:
    """What one layout measured."""

    replicas: int
    events: int
    seconds: float
    per_replica_events: list[float]
    per_replica_series: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def messages(sources: int, events: int) -> list[tuple[str, bytes]]:
    """(source, body) per message: the desk mix, each source's events in batches of its own."""
    codec = Codec(CONTENT_TYPE_MSGPACK)
    mix = mixed_events(events)
    per_source: dict[str, list[EventBase]] = {}
    for index, event in enumerate(mix):
        source = f"desk-{index % sources:03d}"
        per_source.setdefault(source, []).append(msgspec.structs.replace(event, source=source))
    bodies = []
    for source, batch in per_source.items():
        for start in range(0, len(batch), BATCH):
            bodies.append((source, codec.encode(batch[start : start + BATCH])))
    return bodies


@contextmanager
def replica(url: str, exchange: str, queue: str, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    config = workdir / f"{queue}.toml"
    config.write_text("[shard]\nenabled = true\n", encoding="utf-8")
    command = [sys.executable, "-m", "aggregator", "run", "--amqp-url", url, "--exchange", exchange, "--queue", queue,
               "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--state-dir", str(workdir / queue), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _ready(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the replica of {queue} did not become ready")
            time.sleep(0.05)
        yield process, port
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _scrape(port: int) -> tuple[float, float]:
    """(events received, series held) of one replica."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    received = series = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tickbus_events_received_total":
                received += sample.value
            elif sample.name == "tickbus_series":
                series += sample.value
    return received, series


async def _publish(url: str, exchange_name: str, bodies: list[tuple[str, bytes]]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        pending = []
        for source, body in bodies:
            message = aio_pika.Message(
                body,
                content_type=CONTENT_TYPE_MSGPACK,
                message_id=uuid.uuid4().hex,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={HEADER_SOURCE: source},
            )
            pending.append(exchange.publish(message, routing_key=BATCH_ROUTING_KEY))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)


async def _delete(url: str, exchange: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dead"):
                await channel.queue_delete(name)
            await channel.exchange_delete(f"{queue}.dead")
        for name in (exchange, f"{exchange}.shards"):
            await channel.exchange_delete(name)


def measure(url: str, replicas: int, bodies: list[tuple[str, bytes]], events: int, workdir: Path) -> Layout:
    token = uuid.uuid4().hex[:8]
    exchange = f"bench.{token}"
    queues = [f"{exchange}.shard-{index}" for index in range(replicas)]
    with ExitStack() as stack:
        started = [stack.enter_context(replica(url, exchange, queue, workdir)) for queue in queues]
        for process, _ in started:
            os.kill(process.pid, signal.SIGSTOP)
        asyncio.run(_publish(url, exchange, bodies))
        began = time.perf_counter()
        for process, _ in started:
            os.kill(process.pid, signal.SIGCONT)
        while sum(_scrape(port)[0] for _, port in started) < events:
            time.sleep(0.02)
        seconds = time.perf_counter() - began
        scraped = [_scrape(port) for _, port in started]
    asyncio.run(_delete(url, exchange, queues))
    return Layout(replicas, events, seconds, [got for got, _ in scraped], [held for _, held in scraped])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", required=True, help="a broker with rabbitmq_consistent_hash_exchange")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--sources", type=int, default=60)
    args = parser.parse_args()
    bodies = messages(args.sources, args.events)
    with tempfile.TemporaryDirectory(prefix="tickbus-shards-") as directory:
        layouts = [measure(args.amqp_url, count, bodies, args.events, Path(directory)) for count in (1, 3)]
    print(f"{args.events:,} events from {args.sources} sources in batches of {BATCH}, {os.cpu_count()} cores shared "
          "by the broker, the replicas and the publisher")  # fmt: skip
    print("| layout | events/s (all replicas) | events/s per replica | events per replica | series per replica |")
    print("| --- | --- | --- | --- | --- |")
    for layout in layouts:
        print(
            f"| {layout.replicas} replica(s) | {layout.rate:,.0f} | {layout.rate / layout.replicas:,.0f} | "
            f"{' / '.join(f'{count:,.0f}' for count in layout.per_replica_events)} | "
            f"{' / '.join(f'{count:,.0f}' for count in layout.per_replica_series)} |"
        )
    print(f"three shards vs one: {layouts[1].rate / layouts[0].rate:.2f}x the events/s")


if __name__ == "__main__":
    main()
