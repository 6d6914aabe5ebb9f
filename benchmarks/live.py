"""What the bench measures against: the aggregator as a subprocess, the broker's bench queues, /proc readings."""

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika

from aggregator.amqp.topology import queue_arguments
from aggregator.config import AmqpSettings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 180.0


@dataclass(frozen=True)
class Names:
    """One measurement's own exchange and queue on the shared broker (and their dead-letter pair)."""

    exchange: str
    queue: str

    @classmethod
    def fresh(cls, what: str = "bench") -> "Names":
        token = uuid.uuid4().hex[:8]
        return cls(f"{what}.{token}.x", f"{what}.{token}.q")


# --- /proc ------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc/<pid>/stat (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3 of stat(5); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM)."""
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    """The process's resident set now (VmRSS)."""
    return _status_bytes(pid, "VmRSS")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# --- HTTP -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ready(port: int, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def events_total(port: int) -> float:
    """Events the aggregator received and applied, from /status.json (cheap at any store size, unlike /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json?limit=0", timeout=10) as response:
        total: float = json.loads(response.read())["events"]["total"]
        return total


class HealthSampler:
    """Polls /healthz every `interval` on one kept-alive connection and records each answer's latency.

    /healthz does nothing but answer, so its latency is how long the aggregator's event loop was busy elsewhere:
    a sample of the loop's stalls.
    """

    def __init__(self, port: int, interval: float = 0.01) -> None:
        self.port = port
        self.interval = interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-sampler", daemon=True)

    def __enter__(self) -> "HealthSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", "/healthz")
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                continue
            elapsed = time.perf_counter() - started
            self.latencies.append(elapsed)
            self._stop.wait(max(0.0, self.interval - elapsed))
        connection.close()

    def percentiles_ms(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"samples": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}

        def at(fraction: float) -> float:
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e3

        return {"samples": float(len(ordered)), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1e3}


# --- the aggregator ---------------------------------------------------------------------------------------


def aggregator_command(names: Names, port: int, state_dir: Path, config: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "aggregator", "run", "--exchange", names.exchange, "--queue", names.queue,
               "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir),
               "--log-level", "warning"]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    return command


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = READY_TIMEOUT, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not http_ready(port):
        if process.poll() is not None:
            raise RuntimeError(f"the aggregator exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the aggregator was not ready within {timeout:g} s")
        time.sleep(poll)


def stop(process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """SIGTERM (a clean shutdown: commit and ack), SIGKILL if it has not exited within `timeout`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a stopped process does not see SIGTERM until resumed
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


@contextmanager
def aggregator_process(
    names: Names, port: int, state_dir: Path, config: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The real CLI, checkpoints in `state_dir`, ready (connected and consuming) when yielded; stopped after."""
    process = subprocess.Popen(aggregator_command(names, port, state_dir, config),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(process, port)
        yield process
    finally:
        stop(process)


# --- the broker -------------------------------------------------------------------------------------------


async def publish_bodies(url: str, exchange_name: str, bodies: Iterable[bytes], routing_key: str,
                         content_type: str = "application/msgpack") -> int:  # fmt: skip
    """Publish persistent messages with confirms (500 in flight); how many were published."""
    connection = await aio_pika.connect(url)
    count = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name, ensure=True)
        pending = []
        for body in bodies:
            message = aio_pika.Message(body, content_type=content_type, message_id=uuid.uuid4().hex,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT)  # fmt: skip
            pending.append(exchange.publish(message, routing_key=routing_key))
            count += 1
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    return count


def publish(url: str, exchange: str, bodies: Iterable[bytes], routing_key: str,
            content_type: str = "application/msgpack") -> int:  # fmt: skip
    return asyncio.run(publish_bodies(url, exchange, bodies, routing_key, content_type))


def declare_aggregator_queue(url: str, names: Names) -> None:
    """The exchange and queue as the aggregator declares them (dead-letter pair included), bound with `#`."""

    async def declare() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            amqp = AmqpSettings(exchange=names.exchange, queue=names.queue)
            await channel.declare_exchange(amqp.dead_letter_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            await channel.declare_queue(amqp.dead_letter_queue_name, durable=True)
            queue = await channel.declare_queue(names.queue, durable=True, arguments=queue_arguments(amqp))
            await queue.bind(exchange, "#")

    asyncio.run(declare())


def purge(url: str, queue: str) -> None:
    async def run() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            await declared.purge()

    asyncio.run(run())


def delete(url: str, names: Names) -> None:
    """Remove what a measurement declared, dead-letter pair included, so the broker is left as found."""

    async def run() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for queue in (names.queue, f"{names.queue}.dead"):
                await channel.queue_delete(queue)
            for exchange in (names.exchange, f"{names.exchange}.dead"):
                await channel.exchange_delete(exchange)

    asyncio.run(run())


@contextmanager
def declared(url: str, names: Names) -> Iterator[Names]:
    """Delete `names` (and their dead-letter pair) afterwards, whatever happens in between."""
    try:
        yield names
    finally:
        delete(url, names)


async def consume_and_ack(url: str, queue_name: str, expected: int) -> float:
    """The bus ceiling: a plain aio-pika consumer acking each message of a full queue, decoding nothing; seconds."""
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
