"""Checks every producer must pass about routing: nothing is confirmed into a void, and publishes overlap."""

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.driver import ProducerDriver
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, wait_for
from tests.support.topology import declare_exchange

TOPOLOGIES = ("no exchange", "exchange without a queue")


def assert_nothing_lost_before_the_aggregator(
    command: list[str],
    names: Names,
    start_aggregator: Callable[..., AggregatorProcess],
    source: str,
    stderr: Path,
    topology: str,
) -> None:
    """Drive a producer (its test driver `command` + JSON options) started before any aggregator declared its
    queue: flush says no while nothing can be routed, the reason names the missing piece, and once the
    aggregator runs every event is counted exactly once."""
    if topology == "exchange without a queue":
        declare_exchange(names.exchange)
    options = {"source": source, "url": AMQP_URL, "exchange": names.exchange, "heartbeatIntervalMs": 0,
               "retryMaxMs": 300, "batchSize": 7, "maxInFlight": 4}  # fmt: skip
    driver = ProducerDriver([*command, json.dumps(options)], stderr)
    try:
        errors = [{"kind": "error", "component": "boot", "error_type": f"e{index % 3}"} for index in range(300)]
        assert driver.send("emit", events=errors)["took"] == 300
        early = driver.send("flush", timeout_ms=1500)
        assert early["ok"] is False, early
        assert early["confirmed"] == 0, early
        expected = "does not exist" if topology == "no exchange" else "no queue is bound for routing key 'batch'"
        assert expected in early["last_error"], early

        aggregator = start_aggregator(names)
        after = driver.send("flush", timeout_ms=20_000)
        assert after["ok"], after
        assert after["confirmed"] == 300
        assert after["last_error"] == ""
        assert driver.send("close", timeout_ms=5_000)["ok"]
    finally:
        driver.stop()
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source=source) == 300, what="300 errors")
    time.sleep(0.3)
    assert total(aggregator.scrape(), "trading_errors_total", source=source) == 300
    logged = driver.stderr()
    assert logged.count("tickbus: cannot publish to RabbitMQ") == 1, logged
    assert logged.count("works again") == 1, logged


def assert_publishes_overlap(
    command: list[str], names: Names, aggregator: AggregatorProcess, source: str, stderr: Path, window: int
) -> int:
    """One event per message through a producer with a window of `window`: everything arrives; the most
    publishes the producer had awaiting confirms at once (never more than the window)."""
    options = {"source": source, "url": AMQP_URL, "exchange": names.exchange, "heartbeatIntervalMs": 0,
               "batchSize": 1, "maxInFlight": window}  # fmt: skip
    driver = ProducerDriver([*command, json.dumps(options)], stderr)
    try:
        errors = [{"kind": "error", "component": "feed", "error_type": "gap"} for _ in range(1000)]
        assert driver.send("emit", events=errors)["took"] == 1000
        flushed = driver.send("flush", timeout_ms=30_000)
        assert flushed["ok"], flushed
        assert driver.send("close", timeout_ms=5_000)["ok"]
    finally:
        driver.stop()
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source=source) == 1000, what="1000 errors")
    peak: int = flushed["peak_in_flight"]
    assert 1 <= peak <= window
    return peak
