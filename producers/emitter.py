"""The Python emitters: emit() queues, a background publisher batches, confirms, retries and reports drops."""

import asyncio
import atexit
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from producers.outbox import Outbox
from schemas.events import MAX_BATCH_EVENTS, EventBase, Heartbeat
from schemas.wire import CONTENT_TYPE_MSGPACK, DEFAULT_EXCHANGE, MAX_MESSAGE_BYTES, Codec, routing_key_for

log = logging.getLogger(__name__)
# How long an emitter the program did not close may take to drain when the interpreter exits.
EXIT_DRAIN_SECONDS = 5.0


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int | None:
    """Resident memory of the current process, where the OS tells it (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class EmitterSettings:
    """How an emitter publishes; the defaults suit a strategy process on the broker's machine."""

    source: str
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = DEFAULT_EXCHANGE
    version: str = ""
    content_type: str = CONTENT_TYPE_MSGPACK
    max_buffer: int = 100_000
    batch_size: int = 1000
    linger: float = 0.005
    heartbeat_interval: float = 5.0
    retry_max_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_EVENTS} (the aggregator's batch limit)")
        if self.max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")


class Publisher:
    """The background side of an emitter, on one asyncio loop: drains the outbox into confirmed messages."""

    def __init__(self, settings: EmitterSettings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self.codec = Codec(settings.content_type)
        self.instance = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        # Emitted events done with: confirmed by the broker, or dropped as impossible to encode.
        self.settled = 0
        self.healthy = True
        self._sequence = 0
        self._last_heartbeat = 0.0
        self._closing = False
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self.last_error: str = ""

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            ts=time.time(),
            source=self.settings.source,
            version=self.settings.version,
            instance=self.instance,
            healthy=self.healthy,
            started_at=self.started_at,
            dropped=self.outbox.dropped,
            resident_memory_bytes=resident_memory_bytes(),
            cpu_seconds=time.process_time(),
        )

    async def run(self) -> None:
        """Publish until closed and drained."""
        settings = self.settings
        while True:
            heartbeat: list[Any] = []
            now = time.monotonic()
            if settings.heartbeat_interval and now - self._last_heartbeat >= settings.heartbeat_interval:
                self._last_heartbeat = now
                heartbeat.append(self.heartbeat())
            events = self.outbox.take(settings.batch_size - len(heartbeat))
            if heartbeat or events:
                for body, count, routing_key in self._messages(heartbeat, events):
                    await self._publish(body, routing_key)
                    self.settled += count
            elif self._closing:
                return
            else:
                await asyncio.sleep(settings.linger)

    def close_soon(self) -> None:
        """Finish what is queued, send a last heartbeat (with the final drop count), then stop."""
        self._closing = True
        self._last_heartbeat = 0.0

    def _messages(self, heartbeat: list[Any], events: list[Any]) -> list[tuple[bytes, int, str]]:
        """The bodies to publish (with how many emitted events each holds, and the routing key).

        An event that cannot be encoded (a value of a type the schema does not know) is dropped and
        counted, never allowed to stop the publisher; a batch over the size limit is split.
        """
        try:
            body = self.codec.encode([*heartbeat, *events])
        except (TypeError, ValueError, OverflowError):
            events = self._encodable(events)
            if not heartbeat and not events:
                return []
            body = self.codec.encode([*heartbeat, *events])
        if len(body) > MAX_MESSAGE_BYTES and len(events) > 1:
            half = len(events) // 2
            return self._messages(heartbeat, events[:half]) + self._messages([], events[half:])
        return [(body, len(events), routing_key_for([*heartbeat, *events]))]

    def _encodable(self, events: list[Any]) -> list[Any]:
        kept = []
        for event in events:
            try:
                self.codec.encode([event])
            except (TypeError, ValueError, OverflowError) as error:
                log.error("tickbus: dropping an event that cannot be encoded (%s): %r", error, event)
                self.outbox.count_dropped(1)
                self.settled += 1
            else:
                kept.append(event)
        return kept

    async def _publish(self, body: bytes, routing_key: str) -> None:
        """Publish one message with a confirm; retry the same message (same id) until it is confirmed."""
        self._sequence += 1
        message = aio_pika.Message(
            body,
            content_type=self.codec.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"{self.instance}-{self._sequence}",
            timestamp=time.time(),
            app_id=self.settings.source,
        )
        delay = 0.1
        while True:
            try:
                exchange = await self._ensure_exchange()
                await exchange.publish(message, routing_key=routing_key, timeout=10)
                self.last_error = ""
                return
            except Exception as error:  # the publisher must outlive any broker trouble; it retries all
                if not self.last_error:
                    log.warning("tickbus: cannot publish to RabbitMQ (%s); retrying", error or type(error).__name__)
                self.last_error = str(error) or type(error).__name__
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)

    async def _ensure_exchange(self) -> AbstractExchange:
        if self._connection is None:
            self._connection = await aio_pika.connect_robust(
                self.settings.url,
                timeout=5,
                reconnect_interval=1.0,
                client_properties={"connection_name": f"tickbus-producer {self.settings.source}"},
            )
        # A robust channel restores itself after a reconnect; only a channel the broker closed for good is replaced.
        if (
            self._exchange is None
            or self._channel is None
            or (self._channel.is_closed and not self._connection.is_closed)
        ):
            self._channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await self._channel.declare_exchange(
                self.settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchange

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class AsyncEmitter:
    """Emitter for asyncio code: `emit()` is synchronous and never blocks; `flush()`/`aclose()` drain.

    Example::

        emitter = AsyncEmitter(EmitterSettings(source="momentum-1"))
        await emitter.start()
        emitter.emit(Signal(ts=time.time(), source="momentum-1", strategy="momentum", symbol="BTCUSDT", side="buy"))
        await emitter.aclose()
    """

    def __init__(self, settings: EmitterSettings) -> None:
        self.settings = settings
        self.outbox = Outbox(settings.max_buffer)
        self.publisher = Publisher(settings, self.outbox)
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self.outbox.dropped

    def emit(self, event: EventBase) -> bool:
        """Queue an event; returns False (and counts a drop) if the buffer is full. Never raises for the broker."""
        return self.outbox.put(event)

    def set_healthy(self, healthy: bool) -> None:
        """What the heartbeats say of this source from now on (`trading_source_healthy`)."""
        self.publisher.healthy = healthy

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.publisher.run())

    async def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything emitted so far is confirmed by the broker; False on timeout."""
        target = self.outbox.accepted
        deadline = time.monotonic() + timeout
        while self.publisher.settled < target:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def aclose(self, timeout: float = 30.0) -> bool:
        """Drain, send a final heartbeat and disconnect; False if it could not drain within `timeout`.

        After this, emit() returns False and counts a drop: nothing is lost without a trace.
        """
        self.outbox.close()
        if self._task is None:
            return len(self.outbox) == 0
        self.publisher.close_soon()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
            drained = True
        except TimeoutError:
            self._task.cancel()
            drained = False
        self._task = None
        await self.publisher.aclose()
        return drained

    async def __aenter__(self) -> "AsyncEmitter":
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class Emitter:
    """Emitter for threaded code: a daemon thread runs the publisher; `emit()` never blocks.

    Example::

        emitter = Emitter(EmitterSettings(source="executor-1"))
        emitter.emit(Order(ts=time.time(), source="executor-1", symbol="ETHUSDT", side="buy", status="filled"))
        emitter.close()
    """

    def __init__(self, settings: EmitterSettings) -> None:
        self._async = AsyncEmitter(settings)
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tickbus-emitter", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._async.start(), self._loop).result()
        # Bound once: emit() is the caller's hot path.
        self.emit = self._async.outbox.put
        # A script that ends without close() still delivers what it emitted.
        atexit.register(self.close, EXIT_DRAIN_SECONDS)

    @property
    def dropped(self) -> int:
        return self._async.dropped

    def set_healthy(self, healthy: bool) -> None:
        """What the heartbeats say of this source from now on (`trading_source_healthy`)."""
        self._async.set_healthy(healthy)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything emitted so far is confirmed; False on timeout."""
        return asyncio.run_coroutine_threadsafe(self._async.flush(timeout), self._loop).result()

    def close(self, timeout: float = 30.0) -> bool:
        """Drain, send a final heartbeat, disconnect and stop the thread; False if it could not drain."""
        if self._loop.is_closed():
            return True
        drained = asyncio.run_coroutine_threadsafe(self._async.aclose(timeout), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        atexit.unregister(self.close)
        return drained

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
