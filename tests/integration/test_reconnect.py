"""The consumer survives the broker closing its connection: it reconnects and keeps counting exactly."""

import time
from collections.abc import Callable

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error
from tests.support.broker import close_connections, connection_pids
from tests.support.process import AggregatorProcess, Names
from tests.support.rabbitnodes import PrivateNode
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _errors(count: int) -> list[Error]:
    return [Error(ts=time.time(), source="flaky", component="feed", error_type="gap") for _ in range(count)]


def test_consumer_comes_back_after_the_broker_closes_its_connection(
    private_node: PrivateNode, start_aggregator: StartAggregator
) -> None:
    """Closed from the broker side with rabbitmqctl (on a private node), the aggregator reconnects and counts
    what follows."""
    names = Names.unique()
    aggregator = start_aggregator(names, amqp_url=private_node.url)
    settings = EmitterSettings(source="flaky", url=private_node.url, exchange=names.exchange, heartbeat_interval=0)
    with Emitter(settings) as emitter:
        for event in _errors(100):
            emitter.emit(event)
        assert emitter.flush(10)
        wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 100, what="first 100 errors")

        name = f"tickbus-aggregator {names.queue}"
        (old_connection,) = connection_pids(private_node, name)
        assert close_connections(private_node, name) == 1
        # Reconnecting takes milliseconds, too short to catch /readyz at 503: the log and the pids tell.
        wait_for(lambda: "lost the connection to RabbitMQ" in aggregator.log(), timeout=10, what="the loss")
        wait_for(
            lambda: connection_pids(private_node, name) not in ([], [old_connection]),
            timeout=30,
            what="a new connection",
        )
        wait_for(aggregator.ready, timeout=30, what="the aggregator to be ready again")

        for event in _errors(150):
            emitter.emit(event)
        assert emitter.flush(10)
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 250, what="all 250 errors")
    time.sleep(0.5)
    assert total(aggregator.scrape(), "trading_errors_total") == 250
    assert "lost the connection to RabbitMQ" in aggregator.log()


def test_run_says_plainly_when_rabbitmq_is_unreachable_and_keeps_retrying(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """With nothing listening at the AMQP URL, `run` logs one clear line per retry, no traceback, and stays up."""
    aggregator = start_aggregator(
        names, extra_args=["--amqp-url", "amqp://guest:secret@127.0.0.1:1/"], wait_ready=False
    )
    wait_for(lambda: aggregator.log().count("cannot reach RabbitMQ") >= 2, timeout=15, what="two retry lines")
    log = aggregator.log()
    assert "amqp://guest:***@127.0.0.1:1/" in log
    assert "secret" not in log
    assert "Traceback" not in log
    assert not aggregator.ready()
    assert aggregator.process is not None
    assert aggregator.process.poll() is None
    assert aggregator.stop() == 0
