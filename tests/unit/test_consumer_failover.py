"""The consumer's loop: a replica losing the active role acks nothing pending; a full inbox never holds the loop."""

import asyncio
import time
from typing import Any

from aggregator.amqp.consumer import _STOP, Consumer
from aggregator.config import AmqpSettings
from tests.support.engine import make_pipeline


class Message:
    async def ack(self, multiple: bool = False) -> None:
        raise AssertionError("a message of a lost channel is never acked")


async def _take_over() -> Any:
    return None


def test_losing_the_connection_forgets_what_is_pending_and_releases_the_state() -> None:
    """After the loss: no unacked message left to ack, the service told to clear its series, take-over owed."""
    released: list[bool] = []
    consumer = Consumer(AmqpSettings(), make_pipeline(), take_over=_take_over, released=lambda: released.append(True))
    consumer._taken_over = True
    consumer.ledger.applied(Message())
    consumer._on_connection_lost()
    assert consumer.ledger.unacked == 0
    assert released == [True]
    assert not consumer._taken_over
    consumer._on_connection_lost()  # a second loss while still waiting: nothing more to release
    assert released == [True]


def test_a_single_replica_keeps_its_pending_messages_across_a_reconnect() -> None:
    """Without failover, messages applied before a reconnect stay pending: redeliveries are skipped by id."""
    consumer = Consumer(AmqpSettings(), make_pipeline())
    consumer.ledger.applied(Message())
    consumer._on_connection_lost()
    assert consumer.ledger.unacked == 1


def test_a_full_inbox_does_not_hold_the_event_loop() -> None:
    """Messages processed back to back give the loop a turn every few milliseconds (HTTP, deliveries, heartbeats)."""
    consumer = Consumer(AmqpSettings(), make_pipeline())
    consumer._taken_over = True
    handled: list[object] = []

    def handle(message: Any) -> None:
        time.sleep(0.001)  # a large message's apply
        handled.append(message)

    consumer._handle = handle  # type: ignore[method-assign]
    for index in range(200):
        consumer._inbox.put_nowait(index)
    consumer._inbox.put_nowait(_STOP)
    seen_at: list[int] = []

    async def other_work() -> None:
        while len(handled) < 200:
            seen_at.append(len(handled))
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(consumer.run(), other_work())

    asyncio.run(main())
    assert len(handled) == 200
    turns = [count for count in seen_at if 0 < count < 200]
    assert len(turns) >= 10, f"the loop ran other work only at {seen_at}"
    assert max(b - a for a, b in zip([0, *turns], [*turns, 200], strict=True)) <= 20
