"""Checkpoints in a RabbitMQ stream, so a standby replica can take over without a shared disk."""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import anyio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from aggregator.amqp.connection import describe
from aggregator.amqp.topology import TopologyError
from aggregator.blackbox import BlackBox
from aggregator.checkpoint import CheckpointError, Commit, CommitLog, collector_paused
from aggregator.dedup import RecentIds
from aggregator.selfmetrics import SelfMetrics
from aggregator.stateformat import State, decode_checkpoint, encode_checkpoint, encode_record, read_records
from aggregator.store import Store

log = logging.getLogger(__name__)

# What a message of the state stream holds: a commit's record, part of a base, or a takeover's fence.
HEADER_KIND = "x-tickbus-state"
# A base: its id, part number and parts, and the sequence of the last commit before its copy ended.
HEADER_BASE = "x-tickbus-base"
HEADER_PART = "x-tickbus-part"
HEADER_PARTS = "x-tickbus-parts"
HEADER_COVERED = "x-tickbus-covered"
# A commit's record too large for one message: its id (with HEADER_PART and HEADER_PARTS).
HEADER_RECORD = "x-tickbus-record"
# A record of every series (written when the stream was found gone): a takeover starts from it.
HEADER_FULL = "x-tickbus-full"
# Bases and large records go in messages of at most this size, well under any broker's max_message_size
# (deploy/rabbitmq sets 4 MiB; RabbitMQ's default is larger).
PART_BYTES = 1024 * 1024
COMPACT_AFTER_BYTES = 32 * 1024 * 1024


class CommitFailed(OSError):
    """The broker did not confirm a commit's record: nothing is acked until one is."""


def stream_name(queue: str) -> str:
    """The state stream of the replicas consuming `queue`."""
    return f"{queue}.state"


def _split(data: bytes) -> list[bytes]:
    return [data[start : start + PART_BYTES] for start in range(0, len(data), PART_BYTES)] or [b""]


class _Base:
    """A base (or a large record) read back in parts."""

    def __init__(self, parts: int, covered: int = 0) -> None:
        self.parts: list[bytes | None] = [None] * parts
        self.covered = covered
        self.position = -1  # where in the stream it became complete

    def add(self, part: int, data: bytes) -> None:
        if 0 <= part < len(self.parts):
            self.parts[part] = data

    def complete(self) -> bool:
        return all(part is not None for part in self.parts)

    def joined(self) -> bytes:
        return b"".join(part or b"" for part in self.parts)

    def state(self) -> State:
        return decode_checkpoint(self.joined())


class StreamCheckpointer(CommitLog):
    """Commits to a RabbitMQ stream (`<queue>.state`), confirmed before the acks they cover.

    The active replica appends one record per commit, and now and then a base (the whole state, in
    parts), like the state directory's journal. A replica that becomes active (the broker delivers
    to it, as the single active consumer of the queue) first publishes a fence to the stream and
    reads the stream to it: then it holds every record the previous active one committed.
    """

    def __init__(
        self,
        stream: str,
        store: Store,
        recent_ids: RecentIds,
        metrics: SelfMetrics,
        blackbox: BlackBox | None = None,
        max_bytes: int = 4 * COMPACT_AFTER_BYTES,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
    ) -> None:
        super().__init__(store, recent_ids, metrics, blackbox)
        self.stream = stream
        self.max_bytes = max_bytes
        self._compact_after_bytes = compact_after_bytes
        self.read_stall_seconds = 15.0  # a takeover's read with no message for this long is given up
        self._open_channel: Callable[[], Awaitable[AbstractChannel]] | None = None
        self._channel: AbstractChannel | None = None
        self._since_base = 0
        self._base_bytes = 0
        self._compacting = False
        # The stream was gone from the broker at the last publish: the next commit declares it again and
        # writes every series, since the records it held are lost.
        self._lost = False

    def bind(self, open_channel: Callable[[], Awaitable[AbstractChannel]]) -> None:
        """Where channels to the broker come from (the consumer's connection)."""
        self._open_channel = open_channel

    async def _publish_channel(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            assert self._open_channel is not None, "bind() first"
            self._channel = await self._open_channel()
        return self._channel

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare the stream (idempotent): retention by size, newest kept."""
        try:
            await channel.declare_queue(
                self.stream,
                durable=True,
                arguments={
                    "x-queue-type": "stream",
                    "x-max-length-bytes": self.max_bytes,
                    # Retention drops whole segments: small ones, so it keeps close to the limit.
                    "x-stream-max-segment-size-bytes": max(self.max_bytes // 8, 1024 * 1024),
                },
            )
        except aiormq.exceptions.ChannelAccessRefused as error:
            raise TopologyError(
                f"RabbitMQ refused access to the state stream {self.stream!r} ({error.args[0]}): the aggregator's user "
                "needs configure, write and read on it and write on the default exchange (scripts/rabbitmq-access "
                "--state-stream grants them)"
            ) from None
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            raise TopologyError(
                f"the state stream {self.stream!r} already exists on the broker with other settings "
                f"({error.args[0]}): set state.stream_max_bytes back to the retention it was declared with, or, "
                f"with every replica of the queue stopped, delete it (`rabbitmqctl delete_queue {self.stream}`: "
                f"the state it holds is lost, so counts start from zero)"
            ) from None

    def capture(self, full: bool = False) -> Commit:
        return super().capture(full or self._lost)

    async def _send(self, body: bytes, headers: dict[str, Any]) -> None:
        try:
            channel = await self._publish_channel()
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.stream,
                timeout=30,
            )
        except aiormq.exceptions.DeliveryError:
            self._lost = True
            raise CommitFailed(
                f"the state stream {self.stream!r} is gone from the broker (deleted?): the next commit declares it "
                "again and writes every series to it"
            ) from None
        except Exception as error:  # a commit that is not confirmed is not a commit: nothing is acked
            why = describe(error)
            raise CommitFailed(f"the state stream {self.stream!r} did not confirm a record: {why}") from None

    # --- committing ------------------------------------------------------------------------------------

    async def _append(self, commit: Commit) -> int:
        if commit.full:
            channel = await self._publish_channel()
            try:
                await self.declare(channel)
            except TopologyError as error:
                raise CommitFailed(str(error)) from None
        data = await anyio.to_thread.run_sync(lambda: encode_record(commit.state()))
        parts = _split(data)
        extra = {HEADER_FULL: 1} if commit.full else {}
        if len(parts) == 1:
            await self._send(data, {HEADER_KIND: "record", **extra})
        else:
            # Confirmed part by part; a record missing parts (its writer died or lost the broker) was never
            # confirmed whole, so nothing it covers was acked, and a takeover leaves it out.
            record_id = uuid.uuid4().hex
            for number, part in enumerate(parts):
                await self._send(
                    part,
                    {
                        HEADER_KIND: "record",
                        HEADER_RECORD: record_id,
                        HEADER_PART: number,
                        HEADER_PARTS: len(parts),
                        **extra,
                    },
                )
        if len(data) * 4 > self.max_bytes:
            log.warning(
                "a commit's record of the state is %d bytes, over a quarter of state.stream_max_bytes (%d): raise "
                "it, or retention may drop records before a base covers them and a standby cannot take over",
                len(data),
                self.max_bytes,
            )
        if commit.full:
            self._lost = False
            self._since_base, self._base_bytes = 0, len(data)
            log.warning(
                "declared the state stream %r again and wrote every series to it (%d bytes)", self.stream, len(data)
            )
        else:
            self._since_base += len(data)
        return len(data)

    async def _after_commit(self, commit: Commit, size: int) -> None:
        # A base at least every quarter of the retention, so retention never drops the records after the
        # newest base before the next one is complete.
        threshold = min(max(self._compact_after_bytes, self._base_bytes), self.max_bytes // 4)
        if self._compacting or self._since_base <= threshold:
            return
        self._compacting = True
        marker = self.sequence
        self._since_base = 0
        try:
            data = await anyio.to_thread.run_sync(self._copy_base, marker)
            covered = self.sequence  # the copy may hold changes of commits up to this one and after it
            base_id = uuid.uuid4().hex
            parts = _split(data)
            for number, part in enumerate(parts):
                headers = {
                    HEADER_KIND: "base",
                    HEADER_BASE: base_id,
                    HEADER_PART: number,
                    HEADER_PARTS: len(parts),
                    HEADER_COVERED: covered,
                }
                await self._send(part, headers)
            self._base_bytes = len(data)
            log.info("published a base of the state to the stream (%d bytes in %d part(s))", len(data), len(parts))
            if len(data) * 4 > self.max_bytes:
                log.warning(
                    "a base of the state is %d bytes, over a quarter of state.stream_max_bytes (%d): raise it, or "
                    "retention may drop a base before the next one is complete",
                    len(data),
                    self.max_bytes,
                )
        except OSError as error:
            log.error("publishing a base to the state stream failed (%s); the next compaction tries again", error)
        finally:
            self._compacting = False

    def _copy_base(self, marker: int) -> bytes:
        return encode_checkpoint(State(marker, time.time(), self.recent_ids.snapshot(), self.store.chunks()))

    # --- taking over -----------------------------------------------------------------------------------

    async def take_over(self) -> int:
        """Load the state the stream holds, up to a fence published now; the number of records applied."""
        started = time.monotonic()
        log.info("taking over: reading the state stream %r", self.stream)
        fence = uuid.uuid4().hex
        await self._send(b"", {HEADER_KIND: "fence", HEADER_BASE: fence})
        try:
            messages = await self._read_to(fence)
        except TimeoutError:
            # Tried once more on a new channel: a takeover that waits forever without a word is the worst outcome.
            log.warning("reading the state stream %r stalled; reading it again", self.stream)
            try:
                messages = await self._read_to(fence)
            except TimeoutError:
                raise CheckpointError(
                    f"reading the state stream {self.stream!r} stalled twice: no message for "
                    f"{self.read_stall_seconds:g}s before the fence this replica published. Nothing was taken "
                    "over or acked; check the stream on the broker (rabbitmqctl list_queues name messages)."
                ) from None
        with collector_paused():
            applied = self._rebuild(messages)
        log.info(
            "took over: loaded %d record(s) of the state stream %r in %.2fs (sequence %d)",
            applied,
            self.stream,
            time.monotonic() - started,
            self.sequence,
        )
        return applied

    async def _read_to(self, fence: str) -> list[tuple[dict[str, Any], bytes]]:
        assert self._open_channel is not None, "bind() first"
        channel = await self._open_channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(self.stream, ensure=False)
        messages: list[tuple[dict[str, Any], bytes]] = []
        seen = asyncio.get_running_loop().create_future()

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = dict(message.headers or {})
            await message.ack()
            if headers.get(HEADER_KIND) == "fence":
                if headers.get(HEADER_BASE) == fence and not seen.done():
                    seen.set_result(None)
                return
            messages.append((headers, message.body))

        tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        try:
            while not seen.done():
                count = len(messages)
                try:
                    await asyncio.wait_for(asyncio.shield(seen), self.read_stall_seconds)
                except TimeoutError:
                    if len(messages) == count:
                        raise
        finally:
            await queue.cancel(tag)
            await channel.close()
        return messages

    @staticmethod
    def _read(messages: list[tuple[dict[str, Any], bytes]]) -> tuple[list[State], dict[str, _Base], int, bool]:
        """The stream's records (large ones joined from parts), its bases, where its newest full record is (or -1)."""
        records: list[State] = []
        bases: dict[str, _Base] = {}
        pieces: dict[str, _Base] = {}
        full_from = -1  # the newest record of every series: nothing before it is needed
        for headers, body in messages:
            kind = headers.get(HEADER_KIND)
            if kind == "record":
                record_id = headers.get(HEADER_RECORD)
                if record_id is not None:
                    piece = pieces.setdefault(str(record_id), _Base(int(headers[HEADER_PARTS])))
                    piece.add(int(headers[HEADER_PART]), body)
                    if not piece.complete():
                        continue
                    del pieces[str(record_id)]
                found, stopped = read_records(body if record_id is None else piece.joined())
                if stopped:
                    log.error("the state stream holds a damaged record (%s); skipping it", stopped)
                elif headers.get(HEADER_FULL):
                    full_from = len(records)
                records.extend(found)
            elif kind == "base":
                base = bases.setdefault(
                    str(headers[HEADER_BASE]), _Base(int(headers[HEADER_PARTS]), int(headers[HEADER_COVERED]))
                )
                base.add(int(headers[HEADER_PART]), body)
                if base.complete() and base.position < 0:
                    base.position = len(records)
        unconfirmed = [piece for piece in pieces.values() if piece.parts[0] is not None]
        if unconfirmed:
            log.info(
                "left out %d record(s) of the state stream missing their last parts: never confirmed, so never acked",
                len(unconfirmed),
            )
        # Retention drops the oldest messages: a record or base whose first part is gone was cut by it.
        trimmed = any(piece.parts[0] is None for piece in [*pieces.values(), *bases.values()])
        return records, bases, full_from, trimmed

    def _rebuild(self, messages: list[tuple[dict[str, Any], bytes]]) -> int:
        """The state from the stream's messages: the newest usable base, then the records after its marker."""
        records, bases, full_from, trimmed = self._read(messages)
        last_sequence = max((record.sequence for record in records), default=0)
        # A base counts once a commit after its copy succeeded: everything it holds was committed then.
        usable = [base for base in bases.values() if base.complete() and last_sequence > base.covered]
        snapshot = usable[-1].state() if usable else None
        if full_from >= 0 and (snapshot is None or records[full_from].sequence > snapshot.sequence):
            snapshot = None
            records = records[full_from:]
        for family in self.store.families.values():
            family.restore([])
        self.recent_ids.restore([])
        self.sequence = 0
        if snapshot is not None:
            self._restore_base(snapshot, f"the stream {self.stream!r}")
        replay = [record for record in records if snapshot is None or record.sequence > snapshot.sequence]
        expected = snapshot.sequence + 1 if snapshot is not None else records[0].sequence if full_from >= 0 else 1
        if (replay and replay[0].sequence > expected) or (trimmed and snapshot is None and full_from < 0):
            lacking = f"the commits {expected} to {replay[0].sequence - 1}" if replay else "the start of its history"
            raise CheckpointError(
                f"the state stream {self.stream!r} lacks {lacking} (retention dropped commits before a base covered "
                "them): taking over would start from wrong counts. Raise state.stream_max_bytes (with the replicas "
                "stopped, delete the stream to declare it anew; counts then start from zero)."
            )
        for record in replay:
            self._apply_record(record)
        self.recent_ids.take_new()
        self._restored(f"the stream {self.stream!r}")
        return len(replay)
