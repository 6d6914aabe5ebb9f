"""Publishing refusals to the dead-letter exchange in the background, confirmed before anything is acked."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from aggregator.amqp.connection import describe
from aggregator.refusal import Refusal
from schemas.wire import (
    HEADER_BATCH_INDEX,
    HEADER_DETAIL,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REASON,
    HEADER_SOURCE,
)

log = logging.getLogger(__name__)
DETAIL_MAX_CHARACTERS = 1000
# While the dead-letter queue is full, one log line per this many seconds says how many letters were dropped.
DROP_LOG_SECONDS = 10.0


def dead_letter(message: AbstractIncomingMessage, refusal: Refusal) -> aio_pika.Message:
    """The dead letter for a refusal of (part of) `message`: the refused body, why, and where it came from."""
    headers: dict[str, Any] = {
        HEADER_REASON: str(refusal.reason),
        HEADER_DETAIL: refusal.detail[:DETAIL_MAX_CHARACTERS],
        HEADER_ORIGINAL_ROUTING_KEY: message.routing_key or "",
        HEADER_ORIGINAL_MESSAGE_ID: message.message_id or "",
    }
    if refusal.position is not None:
        headers[HEADER_BATCH_INDEX] = refusal.position
    source = (message.headers or {}).get(HEADER_SOURCE)
    if source is not None:
        headers[HEADER_SOURCE] = source  # a replayed letter goes back to its source's shard
    return aio_pika.Message(
        refusal.body or message.body,
        content_type=refusal.content_type or message.content_type or None,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        app_id=message.app_id,
        timestamp=message.timestamp,
    )


class DeadLetterPublisher:
    """Publishes dead letters without waiting for each confirm; `delivered()` waits for all of them.

    A flood of bad input then costs no round trip per message, and the ack ledger asks `delivered()`
    before it acks, so no dead letter is lost unsaid: a publish that failed is retried, and until it goes
    through nothing is acked (the broker redelivers, and the refusal is made again). The one exception is a
    letter the broker nacks: the dead-letter queue is bounded (max-length or max-length-bytes with overflow
    reject-publish) and full. Retrying would stop the aggregator's queue behind it, so the letter is
    dropped, handed to `on_dropped` (counted) and logged once per DROP_LOG_SECONDS with how many.
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        exchange_name: str,
        on_dropped: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._open_channel = open_channel
        self._exchange_name = exchange_name
        self._on_dropped = on_dropped
        self._channel: AbstractChannel | None = None
        # Letters published while the channel opens wait on this (FIFO) lock: they share one channel and keep
        # their order, so the dead-letter queue lists refusals in the order they were made.
        self._opening = asyncio.Lock()
        # Failed openings so far, and the last one's error: the letters that waited for an opening that failed
        # fail with it at once instead of each trying (and timing out) in turn.
        self._open_failures = 0
        self._open_error: BaseException | None = None
        self._in_flight: list[asyncio.Future[None]] = []
        self._failed: list[tuple[aio_pika.Message, str]] = []
        self._error: BaseException | None = None
        self.dropped = 0
        self._dropped_unlogged = 0
        self._drop_logged_at = 0.0

    def publish(self, message: AbstractIncomingMessage, refusal: Refusal) -> None:
        letter = dead_letter(message, refusal)
        self._in_flight.append(asyncio.ensure_future(self._send(letter, str(refusal.reason))))

    async def _send(self, letter: aio_pika.Message, routing_key: str) -> None:
        try:
            exchange = await self._exchange()
            await exchange.publish(letter, routing_key=routing_key)
        except aiormq.exceptions.DeliveryError:
            self._dropped(routing_key)
        except Exception as error:  # retried by delivered(); nothing is acked until it goes through
            self._failed.append((letter, routing_key))
            self._error = error

    async def _exchange(self) -> AbstractExchange:
        failures = self._open_failures
        async with self._opening:
            if self._channel is None or self._channel.is_closed:
                if self._open_failures != failures and self._open_error is not None:
                    raise self._open_error  # the opening this letter waited for failed
                try:
                    self._channel = await self._open_channel()
                except Exception as error:
                    self._open_failures += 1
                    self._open_error = error
                    raise
            return await self._channel.get_exchange(self._exchange_name, ensure=False)

    def _dropped(self, reason: str) -> None:
        """The broker nacked a dead letter: its queue is full. Count it; log the first and then a count per window."""
        self.dropped += 1
        self._on_dropped(reason)
        now = time.monotonic()
        if now - self._drop_logged_at < DROP_LOG_SECONDS:
            self._dropped_unlogged += 1
            return
        log.warning(
            "RabbitMQ refused %d dead letter(s) (the latest: %s): the dead-letter queue is full (its max-length or "
            "max-length-bytes policy, overflow reject-publish). Refused letters are dropped and counted in "
            "tickbus_dead_letters_dropped_total{reason} (logged at most every %gs); make room with "
            "`aggregator dlq list` / `replay` / `purge`",
            self._dropped_unlogged + 1,
            reason,
            DROP_LOG_SECONDS,
        )
        self._dropped_unlogged = 0
        self._drop_logged_at = now

    async def delivered(self) -> bool:
        """Wait for the dead letters in flight, retry failed ones once; True when none is left undelivered."""
        for attempt in range(2):
            if attempt:
                retry, self._failed = self._failed, []
                self._in_flight += [asyncio.ensure_future(self._send(*letter)) for letter in retry]
            in_flight, self._in_flight = self._in_flight, []
            if in_flight:
                await asyncio.gather(*in_flight)
            if not self._failed:
                return True
        log.error(
            "could not dead-letter %d message(s) (%s); not acking until they are published",
            len(self._failed),
            describe(self._error),
        )
        return False
