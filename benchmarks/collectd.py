"""collectd (Debian's package) draining equivalent counter events from the same broker: config, process, bodies."""

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aio_pika

from benchmarks.ingest import POLL_SECONDS, Drain
from benchmarks.live import Names, cpu_seconds, declared, free_port, publish

COLLECTD = Path("/usr/sbin/collectd")
PLUGINS = Path("/usr/lib/collectd")
TYPES_DB = Path("/usr/share/collectd/types.db")
# Its amqp plugin decodes only the Command format (PUTVAL lines, text/collectd): it logs JSON as "not
# implemented" and has no Graphite reader, so Command is both the cheapest and the only choice.
CONTENT_TYPE = "text/collectd"
HOST, PLUGIN = "bench", "tickbus"
METRIC = f"collectd_{PLUGIN}_derive_total"
DRAIN_TIMEOUT = 600.0
# One write thread keeps each counter's reports in order: with several, they are applied out of order and the
# value cache refuses the older ones as "too old".
WRITE_THREADS = 1


class CollectdMissing(RuntimeError):
    """collectd or one of its two plugins is not installed: `bash scripts/install-collectd`."""


def check_installed() -> None:
    missing = [
        str(path) for path in (COLLECTD, PLUGINS / "amqp.so", PLUGINS / "write_prometheus.so") if not path.exists()
    ]
    if missing:
        raise CollectdMissing(f"{', '.join(missing)} missing: install collectd with `bash scripts/install-collectd`")


def config(names: Names, http_port: int, directory: Path, write_threads: int = 1) -> str:
    """Amqp subscribing to the bench's queue on the local broker; write_prometheus on `http_port`."""
    return f"""Hostname "{HOST}"
FQDNLookup false
Interval 10
WriteThreads {write_threads}
BaseDir "{directory}"
PIDFile "{directory}/collectd.pid"
PluginDir "{PLUGINS}"
TypesDB "{TYPES_DB}"
LoadPlugin logfile
<Plugin logfile>
  LogLevel "info"
  File "{directory}/collectd.log"
  Timestamp true
</Plugin>
LoadPlugin amqp
LoadPlugin write_prometheus
<Plugin amqp>
  <Subscribe "bench">
    Host "127.0.0.1"
    Port "5672"
    User "guest"
    Password "guest"
    Exchange "{names.exchange}"
    Queue "{names.queue}"
    QueueDurable true
    QueueAutoDelete false
    RoutingKey "#"
  </Subscribe>
</Plugin>
<Plugin write_prometheus>
  Host "127.0.0.1"
  Port "{http_port}"
</Plugin>
"""


def series_name(series: int) -> str:
    return f"gap{series}"


def putval(series: int, first_total: int, count: int) -> bytes:
    """One message: `count` successive reports of one DERIVE counter (its running total), each stamped on arrival.

    A Command message holds one PUTVAL, so one identifier; its value lists are dispatched one by one.
    """
    values = " ".join(f"N:{total}" for total in range(first_total + 1, first_total + count + 1))
    return f"PUTVAL {HOST}/{PLUGIN}-feed/derive-{series_name(series)} {values}".encode()


def bodies(events: int, per_message: int, series: int) -> list[bytes]:
    """`events` counter increments, `per_message` to a message, message m feeding series m % `series`."""
    totals = [0] * series
    out = []
    for index in range(events // per_message):
        target = index % series
        out.append(putval(target, totals[target], per_message))
        totals[target] += per_message
    return out


def declare_queue(url: str, names: Names) -> None:
    """The exchange, and the queue as collectd declares it (durable, not auto-deleted, no arguments), bound with `#`."""

    async def declare() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(names.queue, durable=True, auto_delete=False)
            await queue.bind(exchange, "#")

    asyncio.run(declare())


def counted(port: int) -> float:
    """The sum of the bench's counters on collectd's write_prometheus (0 until it serves)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 2)[1]) for line in text.splitlines() if line.startswith(METRIC + "{"))


@contextmanager
def collectd_process(
    names: Names, workdir: Path, write_threads: int
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Collectd in the foreground with the bench's config; its process, write_prometheus port and log file.

    Killed if SIGTERM does not end it: its amqp reader thread can stay blocked on the socket.
    """
    check_installed()
    directory = workdir / f"collectd-{names.queue}"
    directory.mkdir(parents=True)
    port = free_port()
    path = directory / "collectd.conf"
    path.write_text(config(names, port, directory, write_threads))
    process = subprocess.Popen([str(COLLECTD), "-f", "-C", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield process, port, directory / "collectd.log"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def drain_collectd(url: str, messages: list[bytes], routing_key: str, events: int, workdir: Path,
                   write_threads: int = WRITE_THREADS) -> tuple[Drain, int]:  # fmt: skip
    """Queue `messages`, then start collectd on the full queue and time it until it shows every increment.

    Timed from its start: its start-up (tens of milliseconds) counts against it.

    It cannot be paused while the queue fills, as the aggregator is: its consumer takes deliveries without acks
    or a prefetch limit, so a paused collectd makes the broker's flow control block the publisher.
    Also returns the errors collectd logged (a value refused as out of order, a message it could not parse).
    """
    names = Names.fresh("collectd")
    with declared(url, names):
        declare_queue(url, names)
        publish(url, names.exchange, messages, routing_key, CONTENT_TYPE)
        started = time.perf_counter()
        with collectd_process(names, workdir, write_threads) as (process, port, log):
            deadline = started + DRAIN_TIMEOUT
            while counted(port) < events:
                if process.poll() is not None or time.perf_counter() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"collectd did not count all {events} events: {text[-2000:]}")
                time.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(process.pid)
            errors = sum(1 for line in log.read_text().splitlines() if "failed" in line or "too old" in line)
    return Drain(events, elapsed, cpu), errors
