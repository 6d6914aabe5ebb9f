"""The ack ledger: which applied messages may be acked, and when: after their dead letters and a checkpoint."""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import aiormq
from aio_pika.exceptions import ChannelInvalidStateError

from aggregator.amqp.connection import describe

log = logging.getLogger(__name__)
C = TypeVar("C")


class Ackable(Protocol):
    """A delivered message, as far as acking goes."""

    async def ack(self, multiple: bool = False) -> None: ...


class Durability(Protocol[C]):
    """Where applied state is made durable before messages are acked (the checkpointer)."""

    def capture(self) -> C: ...

    async def persist(self, commit: C) -> None: ...


class Letters(Protocol):
    """The dead-letter publisher, as far as acking goes: every letter published so far confirmed or not."""

    async def delivered(self) -> bool: ...


class AckLedger:
    """Acks applied messages once it is safe: their dead letters confirmed and their effect durable.

    The order for every ack: (1) the messages were applied, (2) every dead letter published for them
    was confirmed by the broker, (3) a checkpoint holding their effect is on disk, (4) one `ack` with
    `multiple` for the newest of them. Without durability (no state directory) step 3 is skipped.
    The commit point is fixed on the event loop (in O(families), see aggregator.checkpoint); the
    write runs in the background while ingestion goes on, and the ack follows it. One write at a time.
    """

    def __init__(
        self,
        letters: Letters,
        durability: "Durability[Any] | None",
        commit_every: int,
        settled: Callable[[list[bytes]], None] = lambda tokens: None,
    ) -> None:
        self._letters = letters
        self._durability = durability
        self.commit_every = commit_every
        # Called with the tokens of the messages an ack covered, once the broker has their ack.
        self._settled = settled
        self._tokens: list[bytes] = []
        self._last: Ackable | None = None
        self.unacked = 0
        self.last_commit = time.monotonic()
        self._persisting: asyncio.Task[None] | None = None
        # Why the last checkpoint failed, while it keeps failing.
        self.failure: str = ""

    @property
    def durable(self) -> bool:
        return self._durability is not None

    def forget(self) -> None:
        """The channel the pending messages came on is gone: they are redelivered, and not acked from here."""
        self._last = None
        self.unacked = 0
        self._tokens = []

    def applied(self, message: Ackable, token: bytes | None = None) -> None:
        """`message` was applied (and its refusals handed to the dead-letter publisher).

        `token`, if given, is handed to `settled` once the message is acked.
        """
        self._last = message
        self.unacked += 1
        if token is not None:
            self._tokens.append(token)

    async def commit(self, wait: bool = False) -> None:
        """Ack every message applied so far, once safe.

        A commit asked for while a write is in flight is left to the next one, unless `wait`: then the
        in-flight write and this one finish first.
        """
        if self._persisting is not None:
            if not wait:
                return
            await self._persisting
        message = self._last
        if message is None or not await self._letters.delivered():
            return
        count, tokens = self.unacked, self._tokens
        self._last = None
        self.unacked = 0
        self._tokens = []
        self.last_commit = time.monotonic()
        if self._durability is None:
            await self._ack(message, tokens)
            return
        self._persisting = asyncio.create_task(
            self._persist_then_ack(self._durability.capture(), message, count, tokens)
        )
        if wait:
            await self._persisting

    async def _persist_then_ack(self, commit: Any, message: Ackable, count: int, tokens: list[bytes]) -> None:
        assert self._durability is not None
        try:
            await self._durability.persist(commit)
        except OSError as error:
            # Nothing is acked: the broker keeps the messages, and once the prefetch window is full it
            # stops delivering until a checkpoint succeeds again.
            if not self.failure:
                log.error("checkpoint failed (%s); not acking until one succeeds", describe(error))
            self.failure = describe(error)
            if self._last is None:
                self._last = message
            self.unacked += count
            self._tokens[:0] = tokens
            return
        finally:
            self._persisting = None
        if self.failure:
            log.info("checkpoints succeed again")
        self.failure = ""
        await self._ack(message, tokens)

    async def _ack(self, message: Ackable, tokens: list[bytes]) -> None:
        try:
            await message.ack(multiple=True)
        except (ChannelInvalidStateError, aiormq.exceptions.AMQPError) as error:
            # The channel went away: the broker redelivers, and recent message ids make that count once.
            log.info("could not ack (%s); the broker will redeliver", describe(error))
            return
        if tokens:
            self._settled(tokens)
