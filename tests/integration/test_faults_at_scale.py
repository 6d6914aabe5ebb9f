"""Exact through kill -9 at a million series: the journal, its compaction and the restart hold at scale."""

import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import wait_for

StartAggregator = Callable[..., AggregatorProcess]
SERIES = 1_000_000
PER_MESSAGE = 1_000
CONFIG = "[catalog]\nmax_series_per_metric = 1100000\n"


def _bodies() -> list[RawMessage]:
    """A million error events, each its own series (a symbol of its own), a thousand to a message."""
    now = time.time()
    messages = []
    for start in range(0, SERIES, PER_MESSAGE):
        events = [
            {"kind": "error", "ts": now, "source": "scale", "component": "c", "error_type": "t", "symbol": f"S{index}"}
            for index in range(start, start + PER_MESSAGE)
        ]
        messages.append(RawMessage(msgspec.msgpack.encode(events), "batch", "application/msgpack", f"scale-{start}"))
    return messages


def _messages(aggregator: AggregatorProcess) -> float:
    """tickbus_messages_received_total, from the head of /metrics (the aggregator's own families come first)."""
    with urllib.request.urlopen(f"{aggregator.url}/metrics", timeout=120) as response:
        head = response.read(256 * 1024)
    for line in head.split(b"\n"):
        if line.startswith(b"tickbus_messages_received_total "):
            return float(line.rsplit(b" ", 1)[1])
    raise AssertionError("no tickbus_messages_received_total at the head of /metrics")


def _errors(aggregator: AggregatorProcess) -> tuple[float, int]:
    """The sum of trading_errors_total and its number of series, read straight off /metrics (a million lines)."""
    with urllib.request.urlopen(f"{aggregator.url}/metrics", timeout=120) as response:
        body = response.read()
    total, series = 0.0, 0
    for line in body.split(b"\n"):
        if line.startswith(b"trading_errors_total{"):
            total += float(line.rsplit(b" ", 1)[1])
            series += 1
    return total, series


@pytest.mark.volume
def test_a_million_series_stay_exact_through_kill_9_while_draining(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """1,000 messages making 1,000,000 series, drained while the aggregator is killed -9 twice: after restarts
    every series is there once with its count, nothing lost, nothing doubled."""
    config = tmp_path / "scale.toml"
    config.write_text(CONFIG)
    args = ["--state-dir", str(tmp_path / "state"), "--log-level", "warning"]
    start_aggregator(names, config=config, extra_args=args).stop()  # declare the topology
    publish_raw(names.exchange, _bodies())
    aggregator = start_aggregator(names, config=config, extra_args=args)
    for fraction in (0.25, 0.6):
        wait_for(
            lambda: _messages(aggregator) >= fraction * 1000,  # noqa: B023
            timeout=120,
            what=f"{fraction:.0%} of the messages",
        )
        assert aggregator.stop(signal.SIGKILL) == -signal.SIGKILL
        aggregator.start()
    wait_for(lambda: _errors(aggregator)[0] >= SERIES, timeout=180, interval=2.0, what="every event")
    time.sleep(1.0)
    assert _errors(aggregator) == (float(SERIES), SERIES)
    assert aggregator.stop() == 0
