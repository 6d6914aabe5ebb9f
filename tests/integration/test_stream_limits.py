"""The state stream on a broker with the deployment's message size limit (deploy/rabbitmq: max_message_size 4 MiB)."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import aio_pika
import msgspec
import pytest

from tests.support.process import AggregatorProcess, Names
from tests.support.rabbitnodes import PrivateNode
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
# deploy/rabbitmq/rabbitmq.conf: the broker refuses a message over the aggregator's body limit.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
EVENTS_PER_MESSAGE = 10_000
LONG = "x" * 60  # label values near their 64-character limit: about 250 bytes a journal row


def _limit_messages(node: PrivateNode) -> None:
    node.rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {MAX_MESSAGE_SIZE}).")


async def _publish(url: str, exchange: str, messages: int, prefix: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        for number in range(messages):
            events = [
                {"kind": "error", "ts": 1.7e9, "source": f"{LONG[:50]}-{prefix}", "component": LONG,
                 "error_type": LONG, "symbol": f"{LONG[:50]}-{number}-{index}"}
                for index in range(EVENTS_PER_MESSAGE)
            ]  # fmt: skip
            body = msgspec.msgpack.encode(events)
            assert len(body) < MAX_MESSAGE_SIZE
            await target.publish(
                aio_pika.Message(body, content_type="application/msgpack", message_id=f"{prefix}-{number}"),
                routing_key="batch",
            )


def _count(aggregator: AggregatorProcess) -> float:
    return total(aggregator.scrape(), "trading_errors_total")


@pytest.mark.volume
def test_commits_of_many_changed_series_fit_the_brokers_message_size_limit(
    private_node: PrivateNode, names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Six messages of 10,000 new series each (every one under the 4 MiB limit) applied within a few commits: each
    commit's record holds more than 4 MiB of rows. The commits must still reach the stream (or be split so they
    do), so that the messages are acked; the aggregator must not fail every checkpoint from then on."""
    _limit_messages(private_node)
    config = tmp_path / "stream.toml"
    config.write_text("[catalog]\nmax_series_per_metric = 1000000\n\n[state]\nstream = true\n")
    aggregator = start_aggregator(names, config=config, amqp_url=private_node.url)
    asyncio.run(_publish(private_node.url, names.exchange, 6, "big"))
    wait_for(lambda: _count(aggregator) == 6 * EVENTS_PER_MESSAGE, what="every event applied")
    wait_for(aggregator.ready, timeout=20, what="checkpoints to succeed (ready)")
    assert "checkpoint failed" not in aggregator.log(), aggregator.log()[-2000:]


@pytest.mark.volume
def test_a_base_of_the_state_fits_the_brokers_message_size_limit(
    private_node: PrivateNode, names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """One message per commit (prefetch 1), so every record fits under 4 MiB; after about 35 MiB of records the
    state (about 35 MiB) is compacted into a base published in parts. Every part must fit the broker's limit, or
    no base is ever written and retention later leaves a standby nothing to take over from."""
    _limit_messages(private_node)
    config = tmp_path / "stream.toml"
    config.write_text("[amqp]\nprefetch = 1\n\n[catalog]\nmax_series_per_metric = 1000000\n\n[state]\nstream = true\n")
    aggregator = start_aggregator(names, config=config, amqp_url=private_node.url)
    asyncio.run(_publish(private_node.url, names.exchange, 15, "base"))
    wait_for(lambda: _count(aggregator) == 15 * EVENTS_PER_MESSAGE, timeout=60, what="every event applied")
    wait_for(
        lambda: "published a base" in aggregator.log() or "publishing a base" in aggregator.log(),
        timeout=60,
        what="a compaction",
    )
    log = aggregator.log()
    assert "checkpoint failed" not in log, log[-2000:]
    assert "publishing a base to the state stream failed" not in log, log[-2000:]
