"""Consuming the aggregator's queue: messages applied one at a time in delivery order, acked by the ledger."""

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import anyio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError

from aggregator.amqp.connection import FailoverConnection, connect_with_retry, describe, where
from aggregator.amqp.deadletter import DeadLetterPublisher
from aggregator.amqp.ledger import AckLedger, Durability
from aggregator.amqp.topology import Topology, TopologyError, declare_topology
from aggregator.blackbox import BlackBox, fingerprint
from aggregator.config import AmqpSettings, ShardSettings
from aggregator.pipeline import Pipeline
from aggregator.refusal import Refusal
from schemas.wire import HEADER_ORIGINAL_MESSAGE_ID, Reason

log = logging.getLogger(__name__)

_TICK = object()
_STOP = object()
# How long the consumer processes messages back to back before it lets the event loop run other work.
MAX_HOLD_SECONDS = 0.005


class Consumer:
    """Owns the connection and the inbox: feeds messages through the pipeline, hands them to the ack ledger."""

    def __init__(
        self,
        amqp: AmqpSettings,
        pipeline: Pipeline,
        durability: "Durability[Any] | None" = None,
        commit_interval: float = 0.2,
        blackbox: BlackBox | None = None,
        poison_after: int = 2,
        crash_marker: bytes | None = None,
        take_over: Callable[[], Awaitable[Any]] | None = None,
        shard: ShardSettings | None = None,
        released: Callable[[], None] | None = None,
        declare_state: Callable[[AbstractChannel], Awaitable[None]] | None = None,
    ) -> None:
        self.amqp = amqp
        self.shard = shard
        self.pipeline = pipeline
        self.blackbox = blackbox or BlackBox.open(None)
        self._poison_after = poison_after
        # Fault injection for drills and tests: a body holding this marker kills the process, as a crash would.
        self._crash_marker = crash_marker
        # A standby replica (single active consumer): before the first message after (re)connecting, the
        # state is loaded from the broker; delivery is how the broker says this replica is the active one.
        self._take_over = take_over
        self._taken_over = take_over is None
        # Called when a replica that was the active one loses its connection (it may be a standby now).
        self._released = released
        # Declares where the state is kept (the state stream) with the topology, before consuming: a
        # mismatch is refused at start, not at the first message.
        self._declare_state = declare_state
        self._commit_interval = commit_interval
        dropped = pipeline.ingest.self_metrics.dead_letters_dropped
        self.letters = DeadLetterPublisher(
            self._open_dead_letter_channel, amqp.dead_letter_exchange_name, lambda reason: dropped.inc((reason,))
        )
        # Ack at the latest once half the prefetch window waits, so the broker never stalls on us.
        self.ledger = AckLedger(
            self.letters, durability, commit_every=max(1, amqp.prefetch // 2), settled=self._settled
        )
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.connection: AbstractRobustConnection | None = None
        self.topology: Topology | None = None
        self.consuming = False
        self._consumer_tag: str | None = None

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
            self.topology = await declare_topology(channel, self.amqp, self.shard)
            if self._declare_state is not None:
                await self._declare_state(channel)
        except TopologyError:
            await connection.close()  # nothing left pending behind the error the user sees
            raise
        self._consumer_tag = await self.topology.queue.consume(self._on_message)
        self.consuming = True
        bound = f"exchange {self.amqp.exchange!r}"
        if self.topology.shard_exchange is not None:
            assert self.shard is not None
            bound = f"shard exchange {self.topology.shard_exchange.name!r} with weight {self.shard.weight}"
        log.info("consuming queue %r bound to %s at %s", self.amqp.queue, bound, self._address())

    async def open_channel(self) -> AbstractChannel:
        """A confirm channel on the consumer's connection; a message no queue takes raises DeliveryError."""
        assert self.connection is not None
        return await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def _open_dead_letter_channel(self) -> AbstractChannel:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True)
        await declare_topology(channel, self.amqp, self.shard)
        return channel

    def _address(self) -> str:
        """The broker node the connection is on (every address when that is not known)."""
        if isinstance(self.connection, FailoverConnection):
            return self.connection.address
        return where(self.amqp)

    def _on_connection_lost(self, *_: Any) -> None:
        if self.consuming:
            log.warning("lost the connection to RabbitMQ; reconnecting")
        self.consuming = False
        if self._take_over is not None and self._taken_over:
            # Another replica may be the active one meanwhile: nothing applied here can be acked or
            # committed any more (it would write over the other's state), and the state is loaded again
            # before anything is applied, when the broker turns to this replica.
            self._taken_over = False
            self.ledger.forget()
            if self._released is not None:
                self._released()

    def _on_reconnected(self, *_: Any) -> None:
        log.info("reconnected to RabbitMQ at %s; consuming again", self._address())
        self.consuming = True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def run(self) -> None:
        """Process the inbox one message at a time, in delivery order, until `stop_consuming` asks to end."""
        ticker = asyncio.create_task(self._tick())
        ledger = self.ledger
        held_since = time.monotonic()
        try:
            while True:
                # A queue that holds items is read without suspending: with a full prefetch window this loop
                # would hold the event loop (HTTP, deliveries, heartbeats) for as long as the inbox lasts.
                if time.monotonic() - held_since >= MAX_HOLD_SECONDS:
                    await asyncio.sleep(0)
                    held_since = time.monotonic()
                item = await self._inbox.get()
                if item is _STOP:
                    return
                if item is _TICK:
                    if (
                        self._taken_over
                        and ledger.unacked
                        and time.monotonic() - ledger.last_commit >= self._commit_interval
                    ):
                        await ledger.commit()
                    continue
                if not self._taken_over:
                    assert self._take_over is not None
                    await self._take_over()
                    self._taken_over = True
                self._handle(item)
                if not ledger.failure and (
                    ledger.unacked >= ledger.commit_every or (not ledger.durable and self._inbox.empty())
                ):
                    await ledger.commit()
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            self._inbox.put_nowait(_TICK)

    def _handle(self, message: AbstractIncomingMessage) -> None:
        raw_id = message.message_id or (message.headers or {}).get(HEADER_ORIGINAL_MESSAGE_ID)
        message_id = str(raw_id) if raw_id else None
        blackbox = self.blackbox
        name = fingerprint(message_id, message.body)
        crashes = blackbox.crashes(name) if message.redelivered else 0
        suspect = None
        if crashes >= self._poison_after:
            refusals = [self._poison(message_id, f"the aggregator died {crashes} times while processing it")]
            # Set aside, it stays a suspect until its ack is in: killed before that, the redelivery still knows it.
            suspect = name
        else:
            blackbox.began(name)
            if self._crash_marker is not None and self._crash_marker in message.body:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                refusals = self.pipeline.process(
                    message.body, message.content_type, message_id, message.user_id
                ).refusals
            except Exception as error:  # a defect, not bad input: set the message aside and go on
                log.exception("processing message %s raised; setting it aside as poison", message_id or "without id")
                refusals = [self._poison(message_id, f"processing it raised {describe(error)}")]
            blackbox.ended()
            if crashes:
                # Processed through: what it holds does not kill the aggregator. Cleared now, not at its ack, so
                # that another message of the same body (messages without ids are known by their body) starts
                # from zero deaths.
                blackbox.forget(name)
        for refusal in refusals:
            self.letters.publish(message, refusal)
        self.ledger.applied(message, suspect)

    def _settled(self, suspects: list[bytes]) -> None:
        for suspect in suspects:
            self.blackbox.forget(suspect)

    def _poison(self, message_id: str | None, why: str) -> Refusal:
        refusal = Refusal(Reason.POISON, f"{why}; set aside so that it cannot stop the aggregator again")
        self.pipeline.count_refusal(refusal, message_id)
        if message_id:
            self.pipeline.recent_ids.add(message_id)
        return refusal

    async def queue_depths(self) -> tuple[int, int] | None:
        """Messages waiting in the queue and in the dead-letter queue; None while not consuming."""
        if self.topology is None or not self.ready:
            return None
        # Redeclaring with the same arguments is idempotent and reports the message count.
        queue = await self.topology.queue.declare()
        dead = await self.topology.dead_letter_queue.declare()
        return int(queue.message_count or 0), int(dead.message_count or 0)

    async def stop_consuming(self) -> None:
        """Ask the broker for no more messages; `run` then drains what was delivered and returns."""
        if self.topology is not None and self._consumer_tag is not None and self.ready:
            try:
                await self.topology.queue.cancel(self._consumer_tag)
            except (aiormq.exceptions.AMQPError, ChannelInvalidStateError) as error:
                log.info("could not cancel the consumer cleanly: %s", describe(error))
        self.consuming = False
        self._inbox.put_nowait(_STOP)

    async def abandon(self) -> None:
        """After an error that ends the run: close the connection without committing (the broker redelivers)."""
        self.consuming = False
        if self.connection is not None:
            self.connection.close_callbacks.discard(self._on_connection_lost)
            with anyio.move_on_after(5, shield=True):
                await self.connection.close()

    async def close(self) -> None:
        """Commit and ack what was applied, then close the connection."""
        await self.ledger.commit(wait=True)
        if self.connection is not None:
            await self.connection.close()
