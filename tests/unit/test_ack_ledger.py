"""The ack ledger and the dead-letter publisher against an in-memory channel: what is acked, and only when."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from aggregator.amqp.deadletter import DeadLetterPublisher
from aggregator.amqp.ledger import AckLedger
from aggregator.refusal import Refusal
from schemas.wire import HEADER_BATCH_INDEX, HEADER_REASON, Reason


@dataclass
class Journal:
    """Everything that happened, in order: publishes, confirms, checkpoint writes and acks."""

    entries: list[str] = field(default_factory=list)


@dataclass
class FakeMessage:
    """A delivered message: records its acks in the journal."""

    tag: int
    journal: Journal
    body: bytes = b'{"kind":"signal"}'
    routing_key: str = "signal"
    message_id: str | None = None
    content_type: str = "application/json"
    app_id: str | None = None
    timestamp: Any = None
    headers: dict[str, Any] = field(default_factory=dict)

    async def ack(self, multiple: bool = False) -> None:
        self.journal.entries.append(f"ack {self.tag}{' multiple' if multiple else ''}")


class FakeExchange:
    """Publishes into the journal; each confirm waits until the test releases it, or fails as told."""

    def __init__(self, channel: "FakeChannel") -> None:
        self._channel = channel

    async def publish(self, message: aio_pika.Message, routing_key: str) -> None:
        channel = self._channel
        channel.journal.entries.append(f"publish {routing_key}")
        channel.published.append(message)
        if channel.failures:
            channel.failures -= 1
            raise ConnectionError("channel closed")
        await channel.confirms.wait()
        channel.journal.entries.append(f"confirm {routing_key}")


class FakeChannel:
    """An in-memory confirm channel with one dead-letter exchange."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.is_closed = False
        self.confirms = asyncio.Event()
        self.failures = 0
        self.published: list[aio_pika.Message] = []

    async def get_exchange(self, name: str, ensure: bool = False) -> FakeExchange:
        return FakeExchange(self)


class FakeDurability:
    """A checkpointer whose writes take as long as the test says, or fail with OSError."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.written = asyncio.Event()
        self.written.set()
        self.fail_with: OSError | None = None
        self.snapshots = 0

    def capture(self) -> bytes:
        self.snapshots += 1
        self.journal.entries.append(f"snapshot {self.snapshots}")
        return b"state"

    async def persist(self, commit: bytes) -> None:
        await self.written.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.journal.entries.append(f"persisted {self.snapshots}")


def _parts(durable: bool = True) -> tuple[Journal, FakeChannel, FakeDurability, DeadLetterPublisher, AckLedger]:
    journal = Journal()
    channel = FakeChannel(journal)
    durability = FakeDurability(journal)

    async def open_channel() -> Any:
        return channel

    letters = DeadLetterPublisher(open_channel, "metrics.dead")
    ledger = AckLedger(letters, durability if durable else None, commit_every=100)
    return journal, channel, durability, letters, ledger


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_ack_waits_for_the_dead_letter_confirm_and_the_checkpoint() -> None:
    """Apply 3 messages, one with a refusal: one multiple ack of the newest, after the confirm and the write."""
    journal, channel, durability, letters, ledger = _parts()
    messages = [FakeMessage(tag, journal) for tag in (1, 2, 3)]
    for message in messages:
        if message.tag == 2:
            letters.publish(message, Refusal(Reason.MALFORMED, "bad"))  # type: ignore[arg-type]
        ledger.applied(message)
    durability.written.clear()
    commit = asyncio.create_task(ledger.commit(wait=True))
    await _settle()
    assert journal.entries == ["publish malformed"]  # nothing acked, no snapshot, while the confirm is pending
    channel.confirms.set()
    await _settle()
    assert journal.entries == ["publish malformed", "confirm malformed", "snapshot 1"]
    durability.written.set()
    await commit
    assert journal.entries[-2:] == ["persisted 1", "ack 3 multiple"]
    assert ledger.unacked == 0


@pytest.mark.anyio
async def test_a_failed_dead_letter_is_retried_and_nothing_is_acked_until_it_goes_through() -> None:
    """One failed publish is retried at once; two failures leave the messages unacked, and a later commit acks."""
    journal, channel, _, letters, ledger = _parts(durable=False)
    channel.confirms.set()
    channel.failures = 2
    message = FakeMessage(7, journal)
    letters.publish(message, Refusal(Reason.INVALID_EVENT, "bad", position=4, body=b"{}"))  # type: ignore[arg-type]
    ledger.applied(message)
    await ledger.commit()
    assert not any(entry.startswith("ack") for entry in journal.entries)
    assert ledger.unacked == 1
    await ledger.commit()
    assert journal.entries[-2:] == ["confirm invalid_event", "ack 7 multiple"]
    letter = channel.published[-1]
    assert letter.headers[HEADER_REASON] == "invalid_event"
    assert letter.headers[HEADER_BATCH_INDEX] == 4
    assert letter.body == b"{}"


@pytest.mark.anyio
async def test_a_failed_checkpoint_acks_nothing_and_the_next_one_acks_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk: no ack, the reason kept and logged once; when writes succeed, one ack covers all applied."""
    journal, _, durability, _, ledger = _parts()
    durability.fail_with = OSError(28, "No space left on device")
    for tag in (1, 2):
        ledger.applied(FakeMessage(tag, journal))
        await ledger.commit(wait=True)
    assert not any(entry.startswith("ack") for entry in journal.entries)
    assert "No space left on device" in ledger.failure
    assert [record.getMessage() for record in caplog.records if "checkpoint failed" in record.getMessage()] == [
        "checkpoint failed (OSError: [Errno 28] No space left on device); not acking until one succeeds"
    ]
    durability.fail_with = None
    ledger.applied(FakeMessage(3, journal))
    await ledger.commit(wait=True)
    assert journal.entries[-1] == "ack 3 multiple"
    assert ledger.failure == ""


@pytest.mark.anyio
async def test_one_checkpoint_write_at_a_time() -> None:
    """A commit asked for during a write is left for later, unless it waits: then it writes after the first."""
    journal, _, durability, _, ledger = _parts()
    durability.written.clear()
    ledger.applied(FakeMessage(1, journal))
    await ledger.commit()
    ledger.applied(FakeMessage(2, journal))
    await ledger.commit()
    assert durability.snapshots == 1
    durability.written.set()
    await ledger.commit(wait=True)
    assert durability.snapshots == 2
    assert [entry for entry in journal.entries if entry.startswith("ack")] == ["ack 1 multiple", "ack 2 multiple"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
