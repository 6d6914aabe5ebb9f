"""The poison breaker and messages without ids: identical good bodies are not set aside by two unrelated kills."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from aggregator.blackbox import FILE_NAME
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
MESSAGES = 60
EVENTS = 3_000
# The black box's processing flag: after its magic, version and failure count (aggregator/blackbox.py).
FLAG_AT = 14


def _flag(state: Path) -> int:
    return (state / FILE_NAME).read_bytes()[FLAG_AT]


def _settled(aggregator: AggregatorProcess) -> float:
    """Messages applied (their first event counted) or set aside as poison."""
    samples = aggregator.scrape()
    applied = total(samples, "trading_errors_total", source="cron", symbol="S0")
    return applied + total(samples, "tickbus_events_rejected_total", reason="poison")


def _publish_without_id(names: Names, body: bytes) -> None:
    """As a hand-written producer does: amqp-publish sets no message_id (aio-pika and aiormq always set one)."""
    subprocess.run(
        ["amqp-publish", "--url=amqp://guest:guest@127.0.0.1:5672", "-e", names.exchange, "-r", "batch",
         "-C", "application/json", "-p"],
        input=body, check=True, timeout=30,
    )  # fmt: skip


def test_two_kills_on_two_identical_messages_without_ids_set_no_good_message_aside(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """60 identical messages without ids (a cron job sending the same batch with a whole-second ts), each good.
    The aggregator is killed -9 twice while processing, each time after some copies were processed through (so a
    different message, the same body). The body did not kill it: no message may be dead-lettered as poison, and
    every event counts (at least once, as for every message without an id)."""
    state = tmp_path / "state"
    args = ["--state-dir", str(state)]
    start_aggregator(names, extra_args=args).stop()  # declares the topology
    ts = int(time.time())
    events = [
        {"kind": "error", "ts": ts, "source": "cron", "component": "c", "error_type": "t", "symbol": f"S{index}"}
        for index in range(EVENTS)
    ]
    body = json.dumps(events).encode()
    for _ in range(MESSAGES):
        _publish_without_id(names, body)
    deaths = 0
    for _ in range(20):
        aggregator = start_aggregator(names, extra_args=args, wait_ready=False)
        # The new process first clears the flag the last kill left, then sets it for each message it processes.
        wait_for(lambda: _flag(state) == 0, interval=0.001, what="the black box opened")
        wait_for(lambda: _flag(state) == 1, interval=0.001, what="a message in process")
        # Some copies are processed through first (each takes a few milliseconds), so the kill lands on a later
        # copy: two deaths on one message, with nothing processed in between, are what poison looks like.
        time.sleep(0.05)
        wait_for(lambda: _flag(state) == 1, interval=0.001, what="a later message in process")
        aggregator.stop(signal.SIGKILL)
        deaths += _flag(state) == 1
        if deaths == 2:
            break
    assert deaths == 2
    aggregator = start_aggregator(names, extra_args=args)
    wait_for(lambda: _settled(aggregator) >= MESSAGES, timeout=60, what="every message applied or set aside")
    time.sleep(1.0)
    samples = aggregator.scrape()
    assert total(samples, "tickbus_events_rejected_total", reason="poison") == 0, aggregator.log()[-3000:]
    assert total(samples, "trading_errors_total", source="cron") >= MESSAGES * EVENTS
