"""The operator's dead-letter queue tool: list, show, replay and purge what the aggregator refused."""

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from yarl import URL

from aggregator.amqp.connection import connect
from aggregator.config import AmqpSettings
from schemas.wire import (
    CONTENT_TYPE_ALIASES,
    CONTENT_TYPE_MSGPACK,
    HEADER_BATCH_INDEX,
    HEADER_DETAIL,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REASON,
    HEADER_SOURCE,
)


@dataclass(frozen=True)
class DeadLetterView:
    """One dead-lettered message as an operator sees it."""

    position: int
    reason: str
    detail: str
    routing_key: str
    message_id: str
    batch_index: int | None
    content_type: str
    body: bytes

    def as_json(self) -> dict[str, Any]:
        """Every field as JSON-ready data (`dlq list --json`): the body as text and, exactly, as base64."""
        return {
            "position": self.position,
            "reason": self.reason,
            "detail": self.detail,
            "routing_key": self.routing_key,
            "message_id": self.message_id,
            "batch_index": self.batch_index,
            "content_type": self.content_type,
            "body": self.body_text(),
            "body_base64": base64.b64encode(self.body).decode(),
        }

    def body_text(self) -> str:
        """The body as readable text: MessagePack shown as JSON, anything else as UTF-8 (replacing bad bytes)."""
        if CONTENT_TYPE_ALIASES.get(self.content_type) == CONTENT_TYPE_MSGPACK:
            try:
                return msgspec.json.encode(msgspec.msgpack.decode(self.body)).decode()
            except (msgspec.DecodeError, TypeError):
                pass
        return self.body.decode("utf-8", errors="replace")


def _view(position: int, message: AbstractIncomingMessage) -> DeadLetterView:
    headers: dict[str, Any] = dict(message.headers or {})
    index = headers.get(HEADER_BATCH_INDEX)
    return DeadLetterView(
        position=position,
        reason=str(headers.get(HEADER_REASON, _broker_reason(headers))),
        detail=str(headers.get(HEADER_DETAIL, "")),
        routing_key=str(headers.get(HEADER_ORIGINAL_ROUTING_KEY, message.routing_key or "")),
        message_id=str(headers.get(HEADER_ORIGINAL_MESSAGE_ID, message.message_id or "")),
        batch_index=int(index) if index is not None else None,
        content_type=message.content_type or "",
        body=message.body,
    )


def _routing_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The letter's x-tickbus-source, so that a sharded deployment routes the replay to the source's replica."""
    source = (message.headers or {}).get(HEADER_SOURCE)
    return {} if source is None else {HEADER_SOURCE: source}


def _broker_reason(headers: dict[str, Any]) -> str:
    """Messages the broker dead-lettered itself (delivery limit, expiry) carry x-death instead of our header."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return f"broker:{deaths[0].get('reason', 'unknown')}"
    return "unknown"


class ReplayRefused(RuntimeError):
    """A replayed letter could not be routed: it is left in the dead-letter queue."""


class DeadLetterQueue:
    """The dead-letter queue of one aggregator's topology, as an operator works on it."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, amqp: AmqpSettings) -> None:
        self._channel = channel
        self._queue = queue
        self._amqp = amqp

    @classmethod
    @asynccontextmanager
    async def open(cls, amqp: AmqpSettings) -> AsyncIterator["DeadLetterQueue"]:
        connection = await connect(amqp, f"tickbus-dlq {amqp.dead_letter_queue_name}")
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queue = await channel.declare_queue(amqp.dead_letter_queue_name, durable=True, passive=True)
            yield cls(channel, queue, amqp)

    async def _take(self, limit: int, taking: Callable[[int], None] | None = None) -> list[AbstractIncomingMessage]:
        taken: list[AbstractIncomingMessage] = []
        while len(taken) < limit:
            message = await self._queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append(message)
            if taking is not None:
                taking(len(taken))
        return taken

    async def _put_back(self, messages: list[AbstractIncomingMessage]) -> None:
        for message in messages:
            await message.nack(requeue=True)

    async def peek(self, limit: int) -> list[DeadLetterView]:
        """Up to `limit` dead letters, oldest first, left in the queue."""
        taken = await self._take(limit)
        views = [_view(position, message) for position, message in enumerate(taken, start=1)]
        await self._put_back(taken)
        return views

    @property
    def count(self) -> int:
        """Messages the dead-letter queue held when it was opened."""
        return int(self._queue.declaration_result.message_count or 0)

    async def replay(
        self, limit: int, reason: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Publish dead letters back to the exchange under their original routing key; returns how many.

        Each replay gets a message id derived from the original, so replaying the same letter twice
        after it was applied counts it once. `progress(done, total)` follows the work: each letter is taken
        from the queue, then published (or put back), two steps per letter.
        """
        expected = min(limit, self.count)
        taken = await self._take(limit, None if progress is None else lambda got: progress(got, 2 * max(expected, got)))
        exchange = await self._channel.get_exchange(self._amqp.exchange)
        replayed = 0
        keep = []
        for done, message in enumerate(taken):
            if progress is not None:
                progress(len(taken) + done, 2 * len(taken))
            view = _view(0, message)
            if reason is not None and view.reason != reason:
                keep.append(message)
                continue
            original = view.message_id or uuid.uuid4().hex
            index = "" if view.batch_index is None else f":{view.batch_index}"
            routing_key = view.routing_key or "replay"
            try:
                await exchange.publish(
                    aio_pika.Message(
                        view.body,
                        content_type=view.content_type or None,
                        message_id=f"{original}{index}:replay",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        app_id=message.app_id,
                        headers=_routing_headers(message),
                        # Replayed under the operator's user: with authenticated sources, that user needs
                        # the letters' sources (or `*`) in source_auth.users.
                        user_id=URL(self._amqp.url).user or None,
                    ),
                    routing_key=routing_key,
                    mandatory=True,
                )
            except aiormq.exceptions.PublishError:
                await self._put_back([message, *keep, *taken[taken.index(message) + 1 :]])
                raise ReplayRefused(
                    f"no queue is bound to exchange {self._amqp.exchange!r} for routing key {routing_key!r}; "
                    f"nothing more was replayed (replayed {replayed}). Is --exchange the aggregator's exchange?"
                ) from None
            await message.ack()
            replayed += 1
        if progress is not None:
            progress(2 * len(taken), 2 * len(taken))
        await self._put_back(keep)
        return replayed

    async def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        result = await self._queue.purge()
        return int(result.message_count or 0)
