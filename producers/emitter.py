"""The Python emitters: emit() queues; a background publisher batches, confirms, holds and retries, reports drops."""

import asyncio
import atexit
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from producers.connection import (
    SettingsError,
    certificate_names,
    check_settings,
    connection_url,
    explain_tls,
    tls_context,
    user_of,
)
from producers.outbox import Outbox
from schemas.events import MAX_BATCH_EVENTS, EventBase, Heartbeat
from schemas.wire import (
    CONTENT_TYPE_MSGPACK,
    DEFAULT_AMQP_URL,
    DEFAULT_EXCHANGE,
    HEADER_SOURCE,
    MAX_MESSAGE_BYTES,
    Codec,
    routing_key_for,
)

log = logging.getLogger(__name__)
# How long an emitter the program did not close may take to drain when the interpreter exits.
EXIT_DRAIN_SECONDS = 5.0
# How long one publish may wait for the broker's confirm before it is retried (with the same message id).
CONFIRM_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.1
# The client libraries log every failed connection attempt (aiormq at ERROR, with a traceback when a
# connection drops); the emitter says it once per state change instead.
CLIENT_LOGGERS = ("aiormq", "aio_pika")


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int | None:
    """Resident memory of the current process, where the OS tells it (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def keep_client_logs_off_unconfigured_stderr() -> None:
    """Give the AMQP client's loggers a NullHandler, as the logging HOWTO advises for libraries.

    Their records still propagate to whatever handlers the program configured; a program that configured
    none no longer gets them printed to stderr by `logging.lastResort`, one line (or traceback) per retry.
    """
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class EmitterSettings:
    """How an emitter publishes; the defaults suit a strategy process on the broker's machine."""

    source: str
    # amqp:// or amqps:// (TLS); the password may instead come from `password_file`.
    url: str = DEFAULT_AMQP_URL
    # TLS (amqps:// only): the CA that signed the broker's certificate (empty: the system's CAs), and a client
    # certificate and key for a broker that asks for one. The broker's certificate and name are always verified.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # A file holding the password of the URL's user (a Docker or Kubernetes secret), read at each connection.
    password_file: str = ""
    exchange: str = DEFAULT_EXCHANGE
    version: str = ""
    content_type: str = CONTENT_TYPE_MSGPACK
    max_buffer: int = 100_000
    batch_size: int = 1000
    linger: float = 0.005
    heartbeat_interval: float = 5.0
    retry_max_seconds: float = 5.0
    max_in_flight: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_EVENTS} (the aggregator's batch limit)")
        if self.max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        check_settings(self.url, self.ca_file, self.cert_file, self.key_file, self.password_file)


@dataclass(eq=False)
class Outgoing:
    """One message on its way: taken from the outbox, settled once the broker has confirmed and routed it."""

    message: aio_pika.Message | None
    routing_key: str
    events: int  # emitted events it holds (its heartbeat not counted)
    settled: bool = False


@dataclass(frozen=True)
class Failure:
    """Why publishing does not work: `kind` tells one state from another, `reason` says it to a person."""

    kind: str
    reason: str


class Publisher:
    """The background side of an emitter, on one asyncio loop: drains the outbox into confirmed, routed messages.

    Up to `max_in_flight` messages await their confirms at once. A message the broker returns (no queue bound
    for its routing key), nacks, or never confirms, or one lost with its channel or connection (a missing
    exchange closes the channel), is not settled: it is held and published again with the same message id.
    While that keeps failing, one held message at a time probes the broker with a capped backoff, and new
    events wait in the bounded outbox. Each change of state is logged once.
    """

    def __init__(self, settings: EmitterSettings, outbox: Outbox) -> None:
        keep_client_logs_off_unconfigured_stderr()
        self.settings = settings
        self.outbox = outbox
        self.codec = Codec(settings.content_type)
        # RabbitMQ checks a message's user_id against the connection's user: the aggregator can then trust it to
        # say who published (authenticated sources).
        self.user_id = user_of(settings.url)
        self.instance = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        # Emitted events done with, oldest first: confirmed and routed by the broker, or dropped as impossible
        # to encode. flush() waits for this to reach what was emitted, so it only counts a settled prefix.
        self.settled = 0
        self.healthy = True
        # The most publishes that awaited their confirms at the same time (at most max_in_flight).
        self.peak_in_flight = 0
        # Why publishing fails, empty while it works.
        self.last_error: str = ""
        self._sequence = 0
        self._last_heartbeat = 0.0
        self._closing = False
        # Every message taken and not yet settled, in the order taken; and those waiting to be (re)published.
        self._window: deque[Outgoing] = deque()
        self._pending: deque[Outgoing] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: Failure | None = None
        self._failing_since = 0.0
        self._retry_delay = FIRST_RETRY_SECONDS
        self._retry_at = 0.0
        self._wakeup: asyncio.Future[None] | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def in_flight(self) -> int:
        """Publishes awaiting their confirms now."""
        return len(self._tasks)

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
        try:
            while True:
                self._fill_window()
                if self._closing and not self._window and not self._heartbeat_due() and not len(self.outbox):
                    return
                await self._sleep(self._wait_seconds())
        finally:
            for task in list(self._tasks):
                task.cancel()

    def close_soon(self) -> None:
        """Finish what is queued, send a last heartbeat (with the final drop count), then stop."""
        self._closing = True
        self._last_heartbeat = 0.0
        self._wake()

    def _heartbeat_due(self) -> bool:
        interval = self.settings.heartbeat_interval
        return bool(interval) and time.monotonic() - self._last_heartbeat >= interval

    def _fill_window(self) -> None:
        """Start publishes: while failing, one probe after the backoff; else held messages, then new batches."""
        if self._failure is not None:
            if not self._tasks and self._pending and time.monotonic() >= self._retry_at:
                self._start(self._pending.popleft(), probe=True)
            return
        while len(self._tasks) < self.settings.max_in_flight:
            if not self._pending and not self._take_batch():
                return
            if self._pending:
                self._start(self._pending.popleft(), probe=False)

    def _wait_seconds(self) -> float | None:
        """How long the loop may sleep unless a publish finishes first; None: until one does."""
        if self._failure is not None:
            return None if self._tasks else max(0.0, self._retry_at - time.monotonic())
        if len(self._tasks) >= self.settings.max_in_flight:
            return None
        return self.settings.linger

    async def _sleep(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup = loop.create_future()
        timer = loop.call_later(seconds, self._wake) if seconds is not None else None
        try:
            await wakeup
        finally:
            if timer is not None:
                timer.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _take_batch(self) -> bool:
        """Turn the next batch from the outbox (and a heartbeat, when due) into pending messages; False if none."""
        settings = self.settings
        heartbeat: list[Any] = []
        if self._heartbeat_due():
            self._last_heartbeat = time.monotonic()
            heartbeat.append(self.heartbeat())
        events = self.outbox.take(settings.batch_size - len(heartbeat))
        if not heartbeat and not events:
            return False
        for body, count, routing_key in self._messages(heartbeat, events):
            self._sequence += 1
            message = aio_pika.Message(
                body,
                content_type=self.codec.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{self.instance}-{self._sequence}",
                timestamp=time.time(),
                app_id=settings.source,
                # Sharded deployments route every message of one source to one aggregator replica by it.
                headers={HEADER_SOURCE: settings.source},
                user_id=self.user_id,
            )
            outgoing = Outgoing(message, routing_key, count)
            self._window.append(outgoing)
            self._pending.append(outgoing)
        self._advance()
        return True

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
                self._window.append(Outgoing(None, "", 1, settled=True))
            else:
                kept.append(event)
        return kept

    def _advance(self) -> None:
        window = self._window
        while window and window[0].settled:
            self.settled += window.popleft().events

    def _start(self, outgoing: Outgoing, probe: bool) -> None:
        task = asyncio.create_task(self._publish(outgoing))
        self._tasks.add(task)
        self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))
        task.add_done_callback(partial(self._finished, outgoing, probe))

    async def _publish(self, outgoing: Outgoing) -> None:
        """One attempt: publish mandatory and wait for the confirm; raises if it was not confirmed and routed."""
        assert outgoing.message is not None
        exchange = await self._ensure_exchange()
        await exchange.publish(
            outgoing.message, routing_key=outgoing.routing_key, mandatory=True, timeout=CONFIRM_TIMEOUT_SECONDS
        )

    def _finished(self, outgoing: Outgoing, probe: bool, task: "asyncio.Future[None]") -> None:
        self._tasks.discard(task)
        self._wake()
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            outgoing.settled = True
            outgoing.message = None  # it may wait in the window behind an earlier message: keep no body
            self._advance()
            if probe and self._failure is not None:
                log.warning(
                    "tickbus: publishing to RabbitMQ works again after %.1f s; resending what was held",
                    time.monotonic() - self._failing_since,
                )
                self._failure = None
                self.last_error = ""
                self._retry_delay = FIRST_RETRY_SECONDS
            return
        self._pending.appendleft(outgoing)
        failure = self._failure_of(error, outgoing.routing_key)
        now = time.monotonic()
        if self._failure is not None and failure.kind == self._failure.kind:
            failure = self._failure  # the same state: keep its words (a host mismatch's names are read once)
        else:
            failure = self._named(failure, error)
        if self._failure is None:
            log.warning("tickbus: cannot publish to RabbitMQ: %s; holding events and retrying", failure.reason)
            self._failing_since = now
            self._retry_delay = FIRST_RETRY_SECONDS
        elif failure.kind != self._failure.kind:
            log.warning("tickbus: still cannot publish to RabbitMQ, now: %s", failure.reason)
        if probe:
            self._retry_delay = min(self._retry_delay * 2, self.settings.retry_max_seconds)
        self._failure = failure
        self.last_error = failure.reason
        self._retry_at = now + self._retry_delay

    def _named(self, failure: Failure, error: BaseException) -> Failure:
        """A host name mismatch, once per state change, with the names the broker's certificate holds."""
        if failure.kind != "tls-host":
            return failure
        settings = self.settings
        held = certificate_names(settings.url, settings.ca_file, settings.cert_file, settings.key_file)
        explained = explain_tls(error, settings.url, settings.ca_file, settings.cert_file, held)
        return failure if explained is None else Failure(*explained)

    def _failure_of(self, error: BaseException, routing_key: str) -> Failure:
        exchange = self.settings.exchange
        settings = self.settings
        tls = explain_tls(error, settings.url, settings.ca_file, settings.cert_file)
        if tls is not None:
            return Failure(*tls)
        if isinstance(error, aiormq.exceptions.PublishError):
            return Failure(
                f"returned:{routing_key}",
                f"no queue is bound for routing key {routing_key!r} on exchange {exchange!r} (returned as unroutable)",
            )
        if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
            return Failure("no-exchange", f"exchange {exchange!r} does not exist (has the aggregator never run?)")
        if isinstance(error, aiormq.exceptions.ChannelAccessRefused):
            return Failure("refused", f"access refused ({error}): the user may not publish there")
        if isinstance(error, (aiormq.exceptions.AuthenticationError, aiormq.exceptions.ProbableAuthenticationError)):
            where = f" (password from {settings.password_file})" if settings.password_file else ""
            return Failure("login", f"RabbitMQ refused the login of user {self.user_id!r}{where} ({error})")
        if isinstance(error, SettingsError):
            return Failure("settings", f"cannot connect with these settings: {error}")
        if isinstance(error, aiormq.exceptions.DeliveryError):
            return Failure("nacked", "the broker nacked the message")
        if isinstance(error, TimeoutError):
            return Failure("timeout", f"no confirm within {CONFIRM_TIMEOUT_SECONDS:g} s")
        if not self._connected() or isinstance(
            error, (OSError, aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError)
        ):
            return Failure("unreachable", f"RabbitMQ is unreachable ({error or type(error).__name__})")
        return Failure(type(error).__name__, str(error) or type(error).__name__)

    async def _ensure_exchange(self) -> AbstractExchange:
        """The exchange on an open confirm channel, connecting first if needed; never declares it.

        The aggregator owns the topology: a producer may hold a user that can only publish. A plain
        connection, reconnected by the retries here, so that aio-pika's robust reconnect loop does not
        log every attempt.
        """
        exchange, channel = self._exchange, self._channel
        if exchange is not None and channel is not None and not channel.is_closed and self._connected():
            return exchange
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._connection is None or not self._connected():
                self._channel = self._exchange = None
                settings = self.settings
                self._connection = await aio_pika.connect(
                    connection_url(settings.url, settings.password_file),
                    ssl_context=tls_context(settings.url, settings.ca_file, settings.cert_file, settings.key_file),
                    timeout=5,
                    client_properties={"connection_name": f"tickbus-producer {settings.source}"},
                )
            if self._exchange is None or self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange = await self._channel.get_exchange(self.settings.exchange, ensure=False)
            return self._exchange

    def _connected(self) -> bool:
        # A plain connection lost by the transport clears `connected`; only close() sets `is_closed`.
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

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
        """Wait until everything emitted so far is confirmed and routed to a queue by the broker; False on timeout."""
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
        lost = self.outbox.accepted - self.publisher.settled
        if not drained and lost:
            log.warning(
                "tickbus: closed with %d emitted events undelivered (%s)", lost, self.publisher.last_error or "timeout"
            )
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

    @property
    def publisher(self) -> Publisher:
        """The background publisher, for its counters: settled, in_flight, peak_in_flight, last_error."""
        return self._async.publisher

    def set_healthy(self, healthy: bool) -> None:
        """What the heartbeats say of this source from now on (`trading_source_healthy`)."""
        self._async.set_healthy(healthy)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything emitted so far is confirmed and routed to a queue; False on timeout."""
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
