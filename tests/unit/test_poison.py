"""The poison breaker: the black box survives a death, and a message the aggregator died on twice is set aside."""

import asyncio
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aggregator.amqp.consumer import Consumer
from aggregator.blackbox import SIZE, BlackBox, fingerprint
from aggregator.config import AmqpSettings
from aggregator.refusal import Refusal
from tests.support.engine import make_pipeline


def _die_while_processing(directory: Path, message: bytes) -> None:
    """What a process leaves behind when it dies mid-message: `began` without `ended`, never closed."""
    box = BlackBox.open(directory)
    box.began(message)
    box._buffer.flush()  # type: ignore[union-attr]


def test_the_black_box_remembers_what_the_dead_process_was_processing(tmp_path: Path) -> None:
    """Each death while processing a message counts against it; an `ended` message is never a suspect."""
    poison, innocent = fingerprint("p-1", b""), fingerprint(None, b"body")
    box = BlackBox.open(tmp_path)
    box.began(innocent)
    box.ended()
    box.close()
    _die_while_processing(tmp_path, poison)
    box = BlackBox.open(tmp_path)
    assert box.died_processing == poison
    assert (box.crashes(poison), box.crashes(innocent)) == (1, 0)
    box.began(poison)
    box.close()
    box = BlackBox.open(tmp_path)
    assert box.crashes(poison) == 2
    box.forget(poison)
    box.close()
    box = BlackBox.open(tmp_path)
    assert box.crashes(poison) == 0
    assert box.died_processing is None
    assert (tmp_path / "blackbox").stat().st_size == SIZE


def test_checkpoint_failures_outlive_the_process(tmp_path: Path) -> None:
    """The failure total kept in the black box is there for the next run, whatever the checkpoint says."""
    box = BlackBox.open(tmp_path)
    box.count_checkpoint_failure(7)
    box.close()
    assert BlackBox.open(tmp_path).checkpoint_failures == 7


def test_an_unusable_state_directory_leaves_a_black_box_in_memory(tmp_path: Path) -> None:
    """No file can be made: the aggregator still runs, with the breaker off and a logged reason."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    box = BlackBox.open(blocked)
    assert not box.persistent
    box.began(fingerprint("x", b""))
    assert not isinstance(box._buffer, mmap.mmap)


@dataclass
class FakeMessage:
    body: bytes
    message_id: str | None
    redelivered: bool
    content_type: str = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "signal"
    app_id: str | None = None
    timestamp: Any = None
    # The consumer hands the publishing user to the pipeline (authenticated sources).
    user_id: str | None = None

    acked: bool = False

    async def ack(self, multiple: bool = False) -> None:
        self.acked = True


class RecordedLetters:
    def __init__(self) -> None:
        self.refusals: list[Refusal] = []

    def publish(self, message: Any, refusal: Refusal) -> None:
        self.refusals.append(refusal)


def _consumer(tmp_path: Path) -> tuple[Consumer, RecordedLetters]:
    consumer = Consumer(AmqpSettings(), make_pipeline(), blackbox=BlackBox.open(tmp_path), poison_after=2)
    letters = RecordedLetters()
    consumer.letters = letters  # type: ignore[assignment]
    return consumer, letters


def test_a_redelivered_message_the_aggregator_died_on_twice_is_set_aside(tmp_path: Path) -> None:
    """Not processed a third time: dead-lettered as poison and counted; once, and only on redelivery."""
    body = b'{"kind": "error", "ts": 1.0, "source": "s", "component": "c", "error_type": "t"}'
    name = fingerprint("m-1", body)
    _die_while_processing(tmp_path, name)
    _die_while_processing(tmp_path, name)
    consumer, letters = _consumer(tmp_path)
    message = FakeMessage(body, "m-1", redelivered=True)
    consumer._handle(message)  # type: ignore[arg-type]
    assert [refusal.reason for refusal in letters.refusals] == ["poison"]
    assert "died 2 times" in letters.refusals[0].detail
    metrics = consumer.pipeline.ingest.self_metrics
    assert metrics.events_rejected.series == {("poison", "", ""): 1.0}
    assert metrics.messages_received.series[()] == 0.0, "the pipeline never saw it"
    assert "m-1" in consumer.pipeline.recent_ids, "a redelivery after a crash is skipped, not set aside again"
    assert consumer.blackbox.crashes(name) == 2, "a suspect until its ack is in"
    asyncio.run(consumer.ledger.commit())
    assert message.acked
    assert consumer.blackbox.crashes(name) == 0, "set aside once; a replay is processed again"


def test_a_suspect_that_survives_processing_is_cleared(tmp_path: Path) -> None:
    """A message that was merely in flight at one kill -9 is processed normally and stops being a suspect."""
    body = b'{"kind": "error", "ts": 1.0, "source": "s", "component": "c", "error_type": "t"}'
    name = fingerprint("m-2", body)
    _die_while_processing(tmp_path, name)
    consumer, letters = _consumer(tmp_path)
    consumer._handle(FakeMessage(body, "m-2", redelivered=True))  # type: ignore[arg-type]
    assert letters.refusals == []
    asyncio.run(consumer.ledger.commit())
    assert consumer.blackbox.crashes(name) == 0
    assert consumer.pipeline.ingest.self_metrics.events_received.series == {("error", "s"): 1.0}


def test_an_error_while_processing_sets_the_message_aside_and_the_consumer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect raised while applying one message dead-letters it as poison at once; the next one applies."""
    consumer, letters = _consumer(tmp_path)
    original = consumer.pipeline.process

    def process(body: bytes, content_type: str | None, message_id: str | None, user_id: str | None) -> Any:
        if b"boom" in body:
            raise ZeroDivisionError("boom")
        return original(body, content_type, message_id, user_id)

    monkeypatch.setattr(consumer.pipeline, "process", process)
    good = b'{"kind": "error", "ts": 1.0, "source": "s", "component": "c", "error_type": "t"}'
    consumer._handle(FakeMessage(b'{"boom": 1}', "m-3", redelivered=False))  # type: ignore[arg-type]
    consumer._handle(FakeMessage(good, "m-4", redelivered=False))  # type: ignore[arg-type]
    assert [refusal.reason for refusal in letters.refusals] == ["poison"]
    assert "ZeroDivisionError: boom" in letters.refusals[0].detail
    assert consumer.pipeline.ingest.self_metrics.events_received.series == {("error", "s"): 1.0}
    assert consumer.ledger.unacked == 2


def test_the_first_delivery_is_never_poison(tmp_path: Path) -> None:
    """A message that is not a redelivery is processed even if its fingerprint is a suspect (a producer retry)."""
    body = b'{"kind": "error", "ts": 1.0, "source": "s", "component": "c", "error_type": "t"}'
    _die_while_processing(tmp_path, fingerprint("m-5", body))
    _die_while_processing(tmp_path, fingerprint("m-5", body))
    consumer, letters = _consumer(tmp_path)
    consumer._handle(FakeMessage(body, "m-5", redelivered=False))  # type: ignore[arg-type]
    assert letters.refusals == []


def test_a_body_processed_through_between_two_deaths_is_not_poison(tmp_path: Path) -> None:
    """Messages without ids are known by their body. A cron job's identical messages: one was in flight at a kill,
    the redelivered copy is processed through (so the body does not kill), then another copy is in flight at a
    second kill. The body has one death against it, not two: the next copy is processed, not set aside."""
    body = b'{"kind": "error", "ts": 1.0, "source": "s", "component": "c", "error_type": "t"}'
    name = fingerprint(None, body)
    _die_while_processing(tmp_path, name)
    consumer, letters = _consumer(tmp_path)
    consumer._handle(FakeMessage(body, None, redelivered=True))  # type: ignore[arg-type]
    assert consumer.blackbox.crashes(name) == 0, "cleared once processed through, before its ack"
    consumer.blackbox.close()
    _die_while_processing(tmp_path, name)
    consumer, letters = _consumer(tmp_path)
    consumer._handle(FakeMessage(body, None, redelivered=True))  # type: ignore[arg-type]
    assert letters.refusals == []
    assert consumer.pipeline.ingest.self_metrics.events_received.series == {("error", "s"): 1.0}
