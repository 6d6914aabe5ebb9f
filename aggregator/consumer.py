"""The AMQP side: a robust aio-pika consumer that applies messages in order and acks what is safe to ack."""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from yarl import URL

from aggregator.config import AmqpSettings
from aggregator.pipeline import DeadLetter, Pipeline
from aggregator.topology import Topology, TopologyError, declare_topology
from schemas.wire import (
    HEADER_BATCH_INDEX,
    HEADER_DETAIL,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REASON,
)

log = logging.getLogger(__name__)

CONNECT_ERRORS = (OSError, ConnectionError, aiormq.exceptions.AMQPConnectionError, asyncio.TimeoutError)
_TICK = object()
_STOP = object()


def redacted(url: str) -> str:
    """The broker URL without its password, for logs."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


async def connect_with_retry(
    amqp: AmqpSettings, on_retry: Callable[[], None] | None = None
) -> AbstractRobustConnection:
    """Connect robustly, retrying with capped exponential backoff while the broker is unreachable."""
    delay = 0.5
    while True:
        try:
            return await aio_pika.connect_robust(
                amqp.url,
                reconnect_interval=1.0,
                timeout=10,
                client_properties={"connection_name": f"tickbus-aggregator {amqp.queue}"},
            )
        except CONNECT_ERRORS as error:
            log.error(
                "cannot reach RabbitMQ at %s (%s); retrying in %.1fs",
                redacted(amqp.url),
                error or type(error).__name__,
                delay,
            )
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, amqp.reconnect_max_seconds)


class Durability(Protocol):
    """Where applied state is made durable before messages are acked (the checkpointer)."""

    def snapshot(self) -> bytes: ...

    async def persist(self, data: bytes) -> None: ...


class Consumer:
    """Feeds messages one at a time through the pipeline and acks them once their effect is durable."""

    def __init__(
        self,
        amqp: AmqpSettings,
        pipeline: Pipeline,
        durability: Durability | None = None,
        commit_interval: float = 0.2,
    ) -> None:
        self.amqp = amqp
        self.pipeline = pipeline
        self._durability = durability
        self._commit_interval = commit_interval
        self._persisting: asyncio.Task[None] | None = None
        # Ack at the latest once half the prefetch window waits, so the broker never stalls on us.
        self._commit_every = max(1, amqp.prefetch // 2)
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._last_unacked: AbstractIncomingMessage | None = None
        self._unacked = 0
        self._last_commit = time.monotonic()
        self._commit_failing = False
        self.connection: AbstractRobustConnection | None = None
        self.topology: Topology | None = None
        self.consuming = False
        self._consumer_tag: str | None = None
        self._dead_letter_channel: aio_pika.abc.AbstractChannel | None = None
        self._letters_in_flight: list[asyncio.Future[None]] = []
        self._letters_failed: list[tuple[aio_pika.Message, str]] = []
        self._letter_error: Exception | None = None

    @property
    def ready(self) -> bool:
        return self.consuming and self.connection is not None and not self.connection.is_closed

    async def start(self) -> None:
        """Connect, declare the topology and start consuming."""
        connection = await connect_with_retry(self.amqp)
        self.connection = connection
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.amqp.prefetch)
        try:
            self.topology = await declare_topology(channel, self.amqp)
        except TopologyError:
            await connection.close()  # nothing left pending behind the error the user sees
            raise
        self._dead_letter_channel = await connection.channel(publisher_confirms=True)
        self._consumer_tag = await self.topology.queue.consume(self._on_message)
        self.consuming = True
        log.info(
            "consuming queue %r bound to exchange %r at %s",
            self.amqp.queue,
            self.amqp.exchange,
            redacted(self.amqp.url),
        )

    def _on_connection_lost(self, *_: Any) -> None:
        if self.consuming:
            log.warning("lost the connection to RabbitMQ; reconnecting")
        self.consuming = False

    def _on_reconnected(self, *_: Any) -> None:
        log.info("reconnected to RabbitMQ; consuming again")
        self.consuming = True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def run(self) -> None:
        """Process the inbox one message at a time, in delivery order, until `stop` asks to end."""
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                item = await self._inbox.get()
                if item is _STOP:
                    return
                if item is _TICK:
                    if self._unacked and time.monotonic() - self._last_commit >= self._commit_interval:
                        await self.commit()
                    continue
                await self._handle(item)
                if not self._commit_failing and (
                    self._unacked >= self._commit_every or (self._durability is None and self._inbox.empty())
                ):
                    await self.commit()
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            self._inbox.put_nowait(_TICK)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        message_id = message.message_id or (message.headers or {}).get(HEADER_ORIGINAL_MESSAGE_ID)
        outcome = self.pipeline.process(message.body, message.content_type, str(message_id) if message_id else None)
        for dead_letter in outcome.dead_letters:
            # Published in the background: a flood of bad input costs no round trip per message. The
            # commit waits for every confirm before it acks, so no dead letter can be lost.
            letter = self._dead_letter_message(message, dead_letter)
            self._letters_in_flight.append(asyncio.ensure_future(self._send_letter(letter, dead_letter.reason)))
        self._last_unacked = message
        self._unacked += 1

    def _dead_letter_message(self, message: AbstractIncomingMessage, dead_letter: DeadLetter) -> aio_pika.Message:
        headers: dict[str, Any] = {
            HEADER_REASON: dead_letter.reason,
            HEADER_DETAIL: dead_letter.detail[:1000],
            HEADER_ORIGINAL_ROUTING_KEY: message.routing_key or "",
            HEADER_ORIGINAL_MESSAGE_ID: message.message_id or "",
        }
        if dead_letter.index is not None:
            headers[HEADER_BATCH_INDEX] = dead_letter.index
        return aio_pika.Message(
            dead_letter.body,
            content_type=dead_letter.content_type or None,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id=message.app_id,
            timestamp=message.timestamp,
        )

    async def _send_letter(self, letter: aio_pika.Message, routing_key: str) -> None:
        try:
            channel = self._dead_letter_channel
            if channel is None or channel.is_closed:
                assert self.connection is not None
                channel = self._dead_letter_channel = await self.connection.channel(publisher_confirms=True)
                await declare_topology(channel, self.amqp)
            exchange = await channel.get_exchange(self.amqp.dead_letter_exchange_name, ensure=False)
            await exchange.publish(letter, routing_key=routing_key)
        except Exception as error:  # retried at the next commit; nothing is acked until it goes through
            self._letters_failed.append((letter, routing_key))
            self._letter_error = error

    async def _letters_delivered(self) -> bool:
        """Wait for the dead letters in flight, retry failed ones once; True when none is left undelivered."""
        for attempt in range(2):
            if attempt:
                retry, self._letters_failed = self._letters_failed, []
                self._letters_in_flight += [asyncio.ensure_future(self._send_letter(*letter)) for letter in retry]
            in_flight, self._letters_in_flight = self._letters_in_flight, []
            if in_flight:
                await asyncio.gather(*in_flight)
            if not self._letters_failed:
                return True
        log.error(
            "could not dead-letter %d message(s) (%s); not acking until they are published",
            len(self._letters_failed),
            self._letter_error,
        )
        return False

    async def commit(self, wait: bool = False) -> None:
        """Ack every message applied so far, once a checkpoint holding its effect is on disk.

        The snapshot is taken now, on the event loop; the write runs in the background while
        ingestion goes on, and the ack follows it. One write at a time: a commit asked for while one
        is in flight is left to the next tick. With `wait`, the in-flight write and this one finish first.
        """
        if self._persisting is not None:
            if not wait:
                return
            await self._persisting
        message = self._last_unacked
        if message is None or not await self._letters_delivered():
            return
        self._last_unacked = None
        self._unacked = 0
        self._last_commit = time.monotonic()
        if self._durability is None:
            await self._ack(message)
            return
        self._persisting = asyncio.create_task(self._persist_then_ack(self._durability.snapshot(), message))
        if wait:
            await self._persisting

    async def _persist_then_ack(self, data: bytes, message: AbstractIncomingMessage) -> None:
        assert self._durability is not None
        try:
            await self._durability.persist(data)
        except OSError as error:
            # Nothing is acked: the broker keeps the messages, and once the prefetch window is full it
            # stops delivering until a checkpoint succeeds again.
            if not self._commit_failing:
                log.error("checkpoint failed (%s); not acking until one succeeds", error)
            self._commit_failing = True
            if self._last_unacked is None:
                self._last_unacked = message
                self._unacked = 1
            return
        finally:
            self._persisting = None
        if self._commit_failing:
            log.info("checkpoints succeed again")
        self._commit_failing = False
        await self._ack(message)

    @staticmethod
    async def _ack(message: AbstractIncomingMessage) -> None:
        try:
            await message.ack(multiple=True)
        except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError) as error:
            # The channel went away: the broker redelivers, and recent message ids make that count once.
            log.info("could not ack (%s); the broker will redeliver", error)

    async def queue_depth(self) -> int | None:
        if self.topology is None or not self.ready:
            return None
        # Redeclaring with the same arguments is idempotent and reports the message count.
        declared = await self.topology.queue.declare()
        return int(declared.message_count or 0)

    async def stop_consuming(self) -> None:
        """Ask the broker for no more messages; `run` then drains what was delivered and returns."""
        if self.topology is not None and self._consumer_tag is not None and self.ready:
            try:
                await self.topology.queue.cancel(self._consumer_tag)
            except (aiormq.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError) as error:
                log.info("could not cancel the consumer cleanly: %s", error)
        self.consuming = False
        self._inbox.put_nowait(_STOP)

    async def close(self) -> None:
        """Commit and ack what was applied, then close the connection."""
        await self.commit(wait=True)
        if self.connection is not None:
            await self.connection.close()
