"""A replica that loses the active role with its connection: nothing pending is acked or committed from it."""

from typing import Any

from aggregator.amqp.consumer import Consumer
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
