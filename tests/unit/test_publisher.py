"""The emitter's publisher without a broker: what counts as settled, and how failures are held and logged."""

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiormq
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from producers.emitter import EmitterSettings, Outgoing, Publisher
from producers.outbox import Outbox
from schemas.events import Signal


def _publisher(events: int, **overrides: object) -> Publisher:
    settings = EmitterSettings(source="unit", exchange="desk", batch_size=1, heartbeat_interval=0, **overrides)  # type: ignore[arg-type]
    outbox = Outbox(1000)
    for _ in range(events):
        outbox.put(Signal(ts=time.time(), source="unit", strategy="s", symbol="X", side="buy"))
    return Publisher(settings, outbox)


def _taken(publisher: Publisher) -> list[Outgoing]:
    """Every message the publisher would send, in order, without starting a publish."""
    while publisher._take_batch():
        pass
    taken = list(publisher._pending)
    publisher._pending.clear()
    return taken


def _done(loop: asyncio.AbstractEventLoop, error: BaseException | None = None) -> "asyncio.Future[None]":
    future: asyncio.Future[None] = loop.create_future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
    return future


def _returned(routing_key: str) -> aiormq.exceptions.PublishError:
    frame = spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="desk", routing_key=routing_key)
    return aiormq.exceptions.PublishError(DeliveredMessage(frame, ContentHeader(), b"", None), frame)  # type: ignore[arg-type]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def test_settled_counts_only_a_prefix_of_what_was_taken(loop: asyncio.AbstractEventLoop) -> None:
    """Messages confirmed out of order settle nothing until every earlier one is confirmed, so flush() never
    returns while an earlier event is still unconfirmed."""
    publisher = _publisher(3)
    first, second, third = _taken(publisher)
    publisher._finished(third, False, _done(loop))
    publisher._finished(second, False, _done(loop))
    assert publisher.settled == 0
    publisher._finished(first, False, _done(loop))
    assert publisher.settled == 3


def test_a_returned_message_is_held_and_logged_once_until_a_probe_goes_through(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """A message the broker returns as unroutable is not settled but held for a retry; the failure and the
    recovery are one log line each, whatever the number of failed attempts in between."""
    caplog.set_level(logging.INFO, logger="producers.emitter")
    publisher = _publisher(2, retry_max_seconds=0.4)
    first, second = _taken(publisher)
    publisher._finished(first, False, _done(loop, _returned("signal")))
    publisher._finished(second, False, _done(loop, _returned("signal")))
    assert publisher.settled == 0
    assert list(publisher._pending) == [second, first]
    assert publisher.last_error == (
        "no queue is bound for routing key 'signal' on exchange 'desk' (returned as unroutable)"
    )
    delays = []
    for _ in range(5):
        probe = publisher._pending.popleft()
        publisher._finished(probe, True, _done(loop, _returned("signal")))
        delays.append(publisher._retry_delay)
    assert delays == [0.2, 0.4, 0.4, 0.4, 0.4]  # doubling from 0.1 s, capped at retry_max_seconds
    assert [record.getMessage() for record in caplog.records] == [
        "tickbus: cannot publish to RabbitMQ: no queue is bound for routing key 'signal' on exchange 'desk' "
        "(returned as unroutable); holding events and retrying"
    ]

    publisher._finished(publisher._pending.popleft(), True, _done(loop))
    assert publisher.last_error == ""
    assert publisher.settled == 0  # the other message is still held, and it came first
    assert caplog.records[-1].getMessage().startswith("tickbus: publishing to RabbitMQ works again after ")
    publisher._finished(publisher._pending.popleft(), False, _done(loop))
    assert publisher.settled == 2
    assert len(caplog.records) == 2


def test_a_change_of_failure_is_one_more_line(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Broker unreachable, then the exchange missing: each new reason is said once."""
    caplog.set_level(logging.INFO, logger="producers.emitter")
    publisher = _publisher(1)
    (message,) = _taken(publisher)
    for error in (
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionRefusedError(111, "Connect call failed"),
        aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND - no exchange 'desk' in vhost '/'"),
        aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND - no exchange 'desk' in vhost '/'"),
    ):
        publisher._finished(publisher._pending.popleft() if publisher._pending else message, True, _done(loop, error))
    assert [record.getMessage() for record in caplog.records] == [
        "tickbus: cannot publish to RabbitMQ: RabbitMQ is unreachable ([Errno 111] Connect call failed); "
        "holding events and retrying",
        "tickbus: still cannot publish to RabbitMQ, now: exchange 'desk' does not exist "
        "(has the aggregator never run?)",
    ]
    assert publisher.settled == 0


def test_an_event_that_cannot_be_encoded_settles_in_its_place(loop: asyncio.AbstractEventLoop) -> None:
    """A dropped event counts as settled only once the messages taken before it are."""
    publisher = _publisher(1)
    unencodable: Any = object()
    publisher.outbox.put(
        Signal(ts=time.time(), source="unit", strategy="s", symbol="X", side="buy", confidence=unencodable)
    )
    (message,) = _taken(publisher)
    assert publisher.settled == 0
    assert publisher.outbox.dropped == 1
    publisher._finished(message, False, _done(loop))
    assert publisher.settled == 2
