"""The state stream under an operator's mistakes and its own limits: counts exact, or a clear refusal."""

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aio_pika
import msgspec
import pytest

from aggregator.statestream import stream_name
from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
FAILOVER = (
    '[amqp]\nqueue_type = "quorum"\nsingle_active_consumer = true\n\n[catalog]\nmax_series_per_metric = 1000000\n'
)


def _error(index: int, source: str) -> RawMessage:
    body = json.dumps({"kind": "error", "ts": time.time(), "source": source, "component": "c", "error_type": "t"})
    return RawMessage(body.encode(), "error", message_id=f"{source}-{index}")


def _count(aggregator: AggregatorProcess, source: str) -> float:
    try:
        return total(aggregator.scrape(), "trading_errors_total", source=source)
    except OSError:
        return -1.0


async def _delete_stream(names: Names) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(stream_name(names.queue))


async def _waiting(names: Names) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue, passive=True)
        return int(queue.declaration_result.message_count or 0)


def test_commits_to_a_deleted_state_stream_are_not_taken_as_durable(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """An operator deletes `<queue>.state` while the aggregator runs. Its next commits are published to a queue
    that no longer exists: the broker drops them and still confirms (they are not mandatory), so the aggregator
    acks 20 messages whose effect is stored nowhere. After a kill -9 and one more message, at least those 20 and
    the new one must count (redelivered, or committed to a stream declared again), not start from zero."""
    config = tmp_path / "stream.toml"
    config.write_text("[state]\nstream = true\n")
    aggregator = start_aggregator(names, config=config)
    publish_raw(names.exchange, [_error(index, "deleted") for index in range(10)])
    wait_for(lambda: _count(aggregator, "deleted") == 10, what="the first 10")
    time.sleep(1.0)
    asyncio.run(_delete_stream(names))
    publish_raw(names.exchange, [_error(index, "deleted") for index in range(10, 30)])
    wait_for(lambda: _count(aggregator, "deleted") == 30, what="20 more")
    time.sleep(2.0)
    aggregator.stop(signal.SIGKILL)
    aggregator.start()
    publish_raw(names.exchange, [_error(30, "deleted")])
    wait_for(lambda: _count(aggregator, "deleted") > 0, what="the restarted aggregator to apply")
    time.sleep(2.0)
    assert _count(aggregator, "deleted") >= 21, aggregator.log()[-2000:]


@pytest.mark.volume
def test_a_state_larger_than_the_stream_retention_is_said_early_and_a_takeover_refuses_clearly(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """`state.stream_max_bytes` at its floor, 16 MiB, and 120,000 series of long labels (about 30 MiB of records):
    retention must drop records no base covers. The active replica says so while it runs (a warning naming the
    setting); when it is killed the standby must refuse to take over with one clear line naming the setting, not
    start from partial counts and not die with a traceback. The messages it did not take stay in the queue."""
    config = tmp_path / "failover.toml"
    config.write_text(FAILOVER + "\n[state]\nstream = true\nstream_max_bytes = 16777216\n")
    active = start_aggregator(names, config=config)
    standby = start_aggregator(names, config=config)
    long = "y" * 60

    def batch(number: int) -> RawMessage:
        events = [
            {"kind": "error", "ts": time.time(), "source": "retention", "component": long, "error_type": long,
             "symbol": f"{long[:50]}{number}-{index}"}
            for index in range(1000)
        ]  # fmt: skip
        return RawMessage(msgspec.msgpack.encode(events), "batch", "application/msgpack", f"retention-{number}")

    publish_raw(names.exchange, [batch(number) for number in range(120)])
    wait_for(lambda: _count(active, "retention") == 120_000, timeout=60, what="120,000 series")
    time.sleep(3.0)
    assert "over a quarter of state.stream_max_bytes" in active.log()
    active.stop(signal.SIGKILL)
    publish_raw(names.exchange, [batch(120)])
    assert standby.process is not None
    wait_for(lambda: standby.process is not None and standby.process.poll() is not None, timeout=60,
             what=f"the standby to refuse: {standby.log()[-2000:]}")  # fmt: skip
    assert standby.process.returncode == 1
    log = standby.log()
    assert "Traceback" not in log, log[-3000:]
    assert "lacks" in log, log[-3000:]
    assert "Raise state.stream_max_bytes" in log
    assert "took over" not in log
    assert "reconnecting" not in log, "the log ends with the refusal, not a reconnect that never comes"
    assert asyncio.run(_waiting(names)) >= 1, "the last batch waits in the queue for a replica that can take over"


def test_a_changed_stream_retention_is_a_clear_error_not_a_traceback_at_the_first_message(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """The stream was declared with the default retention; the operator then sets `state.stream_max_bytes` to
    256 MiB and restarts. RabbitMQ refuses the redeclaration (inequivalent x-max-length-bytes). The aggregator
    must say so as it does for the queue's own arguments (naming the setting and the fixes), at start, instead of
    serving as ready and then dying with a traceback when the first message arrives."""
    before = tmp_path / "before.toml"
    before.write_text("[state]\nstream = true\n")
    aggregator = start_aggregator(names, config=before)
    publish_raw(names.exchange, [_error(0, "retention-changed")])
    wait_for(lambda: _count(aggregator, "retention-changed") == 1, what="one event")
    time.sleep(1.0)
    aggregator.stop()
    after = tmp_path / "after.toml"
    after.write_text("[state]\nstream = true\nstream_max_bytes = 268435456\n")
    aggregator = start_aggregator(names, config=after, wait_ready=False)
    time.sleep(3.0)
    publish_raw(names.exchange, [_error(1, "retention-changed")])
    time.sleep(3.0)
    log = aggregator.log()
    assert "Traceback" not in log, log[-3000:]
    assert "stream_max_bytes" in log, log[-3000:]
