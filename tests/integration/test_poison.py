"""A message that kills the aggregator is set aside as poison, while a backlog counts exactly through kill -9s."""

import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.wire import HEADER_DETAIL, HEADER_ORIGINAL_MESSAGE_ID, HEADER_REASON
from tests.support.broker import RawMessage, drain, publish_raw, queue_depth
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
BACKLOG = 20_000
POISON_AT = 5_000
CRASH_MARKER = "kills-the-aggregator"


def _error(index: int, message: str = "") -> bytes:
    event = {"kind": "error", "ts": time.time(), "source": "backlog", "component": "c", "error_type": "t"}
    if message:
        event["message"] = message
    return json.dumps(event).encode()


def _wait_consuming(aggregator: AggregatorProcess) -> None:
    process = aggregator.process
    assert process is not None
    wait_for(lambda: "consuming queue" in aggregator.log() or process.poll() is not None, what="it to consume")


@pytest.mark.volume
def test_poison_is_set_aside_and_a_quorum_backlog_counts_exactly_through_seven_kill_9(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """20,000 messages on a quorum queue, one of which kills the aggregator whenever it is processed.

    Seven kill -9 in a row at random moments, plus the crashes the poison causes: the poison message is
    dead-lettered as `poison` once the aggregator died on it twice, no good message is dead-lettered
    (by the aggregator, or by the broker's delivery limit), and every good event counts exactly once.
    """
    config = tmp_path / "quorum.toml"
    config.write_text('[amqp]\nqueue_type = "quorum"\n')
    state = tmp_path / "state"
    args = ["--state-dir", str(state), "--crash-on-body", CRASH_MARKER]
    # Declare the topology (an aggregator that starts and stops at once), then build the backlog.
    start_aggregator(names, config=config, extra_args=args).stop()
    messages = [
        RawMessage(_error(index, CRASH_MARKER if index == POISON_AT else ""), "error", message_id=f"m-{index}")
        for index in range(BACKLOG)
    ]
    publish_raw(names.exchange, messages)

    rng = random.Random(11)
    deaths = {"kill -9": 0, "poison": 0}
    while deaths["kill -9"] < 7:
        aggregator = start_aggregator(names, config=config, extra_args=args, wait_ready=False)
        assert aggregator.process is not None
        # Killed while draining: a random moment within the first quarter second of consuming.
        _wait_consuming(aggregator)
        deadline = time.monotonic() + rng.uniform(0.02, 0.25)
        while time.monotonic() < deadline and aggregator.process.poll() is None:
            time.sleep(0.005)
        if aggregator.process.poll() is None:
            aggregator.stop(signal.SIGKILL)
            deaths["kill -9"] += 1
        else:
            assert aggregator.stop() == -signal.SIGKILL, aggregator.log()
            deaths["poison"] += 1

    assert queue_depth(names.queue) > 0, "the kills landed while the backlog was still draining"
    aggregator = start_aggregator(names, config=config, extra_args=args, wait_ready=False)

    def drained() -> bool:
        assert aggregator.process is not None
        if aggregator.process.poll() is not None:  # died on the poison again: the next run sets it aside
            deaths["poison"] += 1
            aggregator.start(wait_ready=False)
        try:
            samples = aggregator.scrape()
        except OSError:
            return False
        return total(samples, "trading_errors_total", source="backlog") >= BACKLOG - 1

    wait_for(drained, timeout=120, what="the backlog to drain")
    aggregator.wait_ready()
    time.sleep(1.0)  # one more commit interval: a late duplicate would show now
    samples = aggregator.scrape()
    assert total(samples, "trading_errors_total", source="backlog") == BACKLOG - 1
    assert deaths["poison"] <= 2, deaths
    assert total(samples, "tickbus_events_rejected_total", reason="poison") == 1
    dead = drain(names.dead_letter_queue)
    # Dead letters are at least once: a kill -9 between a letter's confirm and the checkpoint covering it
    # sets the poison aside again on its redelivery. Every letter is that one message, none a good one.
    assert dead
    assert {str(letter.headers[HEADER_REASON]) for letter in dead} == {"poison"}
    assert {str(letter.headers[HEADER_ORIGINAL_MESSAGE_ID]) for letter in dead} == {f"m-{POISON_AT}"}
    assert "died 2 times" in str(dead[0].headers[HEADER_DETAIL])
    assert CRASH_MARKER.encode() in dead[0].body
    assert aggregator.stop() == 0
