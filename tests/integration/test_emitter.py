"""The Python emitter against the real broker: what a careless caller does must not lose or stop anything."""

import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error, Order, Signal
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for
from tests.support.tcpproxy import TcpProxy
from tests.support.topology import declare_exchange

StartAggregator = Callable[..., AggregatorProcess]


def _settings(names: Names, source: str, **overrides: Any) -> EmitterSettings:
    return EmitterSettings(source=source, url=AMQP_URL, exchange=names.exchange, **overrides)


def test_an_event_that_cannot_be_encoded_is_dropped_and_counted_not_fatal(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """A value of an unknown type is dropped (and counted); the events around it, and later ones, arrive."""
    aggregator = start_aggregator(names)
    with Emitter(_settings(names, "careless")) as emitter:
        now = time.time()
        emitter.emit(Signal(ts=now, source="careless", strategy="s", symbol="X", side="buy"))
        emitter.emit(Signal(ts=now, source="careless", strategy="s", symbol="X", side="buy", confidence=object()))  # type: ignore[arg-type]
        emitter.emit(Signal(ts=now, source="careless", strategy="s", symbol="X", side="buy"))
        assert emitter.flush(10)
        emitter.emit(Signal(ts=now, source="careless", strategy="s", symbol="X", side="buy"))
        assert emitter.flush(10)
        assert emitter.dropped == 1
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total", source="careless") == 3, what="3 signals")
    wait_for(lambda: value(aggregator.scrape(), "trading_producer_dropped_events_total", source="careless") == 1,
             what="the drop reported")  # fmt: skip


def test_decimal_prices_go_out_as_numbers(names: Names, start_aggregator: StartAggregator) -> None:
    """Trading code keeps prices as Decimal; they arrive as numbers, not dead-lettered strings."""
    aggregator = start_aggregator(names)
    with Emitter(_settings(names, "decimals")) as emitter:
        emitter.emit(Order(ts=time.time(), source="decimals", symbol="X", side="buy", status="filled",
                           quantity=Decimal("2"), price=Decimal("100.25")))  # type: ignore[arg-type]  # fmt: skip
    labels = {"source": "decimals", "strategy": "", "symbol": "X", "side": "buy"}
    wait_for(lambda: value(aggregator.scrape(), "trading_order_filled_notional_total", **labels) == 200.5,
             what="the notional")  # fmt: skip


def test_a_batch_over_the_size_limit_is_split_not_dead_lettered(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """10,000 events with 2 KB messages (20 MB) go out as several messages under the 4 MiB limit, all counted."""
    aggregator = start_aggregator(names)
    message = "x" * 2000
    with Emitter(_settings(names, "verbose", batch_size=10_000, max_buffer=20_000, linger=0.05)) as emitter:
        for _ in range(10_000):
            emitter.emit(Error(ts=time.time(), source="verbose", component="c", error_type="t", message=message))
        assert emitter.flush(60)
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source="verbose") == 10_000,
             timeout=60, what="10,000 errors")  # fmt: skip
    assert total(aggregator.scrape(), "tickbus_events_rejected_total") == 0


def test_settings_refuse_a_batch_larger_than_the_aggregator_takes() -> None:
    """batch_size over the aggregator's 10,000-event limit is a mistake caught at construction."""
    with pytest.raises(ValueError, match="batch_size must be 1 to 10000"):
        EmitterSettings(source="s", batch_size=20_000)


def test_emit_after_close_is_a_counted_drop(names: Names, start_aggregator: StartAggregator) -> None:
    """After close(), emit() says False and counts the drop instead of losing the event silently."""
    start_aggregator(names)  # close() drains only once its final heartbeat is routed to a queue
    emitter = Emitter(_settings(names, "late"))
    assert emitter.close(10)
    assert emitter.emit(Signal(ts=time.time(), source="late", strategy="s", symbol="X", side="buy")) is False
    assert emitter.dropped == 1


def test_a_script_that_never_calls_close_still_delivers(names: Names, start_aggregator: StartAggregator) -> None:
    """At interpreter exit the emitter drains what the script emitted."""
    aggregator = start_aggregator(names)
    script = (
        "import time\n"
        "from producers.emitter import Emitter, EmitterSettings\n"
        "from schemas.events import Signal\n"
        f"emitter = Emitter(EmitterSettings(source='script', url={AMQP_URL!r}, exchange={names.exchange!r}))\n"
        "for _ in range(500):\n"
        "    emitter.emit(Signal(ts=time.time(), source='script', strategy='s', symbol='X', side='buy'))\n"
    )
    assert subprocess.run([sys.executable, "-c", script], timeout=60, check=False).returncode == 0
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total", source="script") == 500, what="500 signals")


@pytest.mark.parametrize("topology", ["no exchange", "exchange without a queue"])
def test_an_emitter_started_before_the_aggregator_loses_nothing(
    names: Names, start_aggregator: StartAggregator, topology: str
) -> None:
    """Events emitted before the aggregator ever declared its queue are held, not confirmed into the void: flush
    says False until they are routed, and once the aggregator runs each one is counted exactly once."""
    if topology == "exchange without a queue":
        declare_exchange(names.exchange)  # what an older emitter left behind: the broker would drop the messages
    settings = _settings(names, "early", batch_size=7, max_in_flight=4, retry_max_seconds=0.5, heartbeat_interval=0)
    with Emitter(settings) as emitter:
        for index in range(300):
            assert emitter.emit(Error(ts=time.time(), source="early", component="boot", error_type=f"e{index % 3}"))
        assert not emitter.flush(1.5)
        expected = "does not exist" if topology == "no exchange" else "no queue is bound for routing key 'batch'"
        assert expected in emitter.publisher.last_error
        assert emitter.publisher.settled == 0

        aggregator = start_aggregator(names)
        assert emitter.flush(30)
        assert emitter.publisher.last_error == ""
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source="early") == 300, what="300 errors")
    time.sleep(0.3)
    assert total(aggregator.scrape(), "trading_errors_total", source="early") == 300


def test_several_publishes_are_in_flight_at_once(names: Names, start_aggregator: StartAggregator) -> None:
    """With one event per message, the publisher keeps up to max_in_flight messages awaiting confirms at once;
    with a window of 1 it waits for each confirm before the next publish."""
    aggregator = start_aggregator(names)
    peaks = {}
    for window in (1, 16):
        source = f"window-{window}"
        settings = _settings(names, source, batch_size=1, max_in_flight=window, heartbeat_interval=0)
        with Emitter(settings) as emitter:
            for _ in range(2000):
                assert emitter.emit(Signal(ts=time.time(), source=source, strategy="s", symbol="X", side="buy"))
            assert emitter.flush(60)
            peaks[window] = emitter.publisher.peak_in_flight
    assert peaks[1] == 1
    assert 1 < peaks[16] <= 16
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total") == 4000, what="2 x 2000 signals")


UNCONFIGURED_PROGRAM = """
import sys, time
from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error
url, exchange = sys.argv[1], sys.argv[2]
emitter = Emitter(EmitterSettings(source="bare", url=url, exchange=exchange, heartbeat_interval=0,
                                  retry_max_seconds=0.2, batch_size=10))
def burst():
    for _ in range(50):
        emitter.emit(Error(ts=time.time(), source="bare", component="feed", error_type="gap"))
burst()
print("flushed", emitter.flush(10), flush=True)
sys.stdin.readline()  # the broker is away now
burst()
print("held", emitter.flush(2), flush=True)
sys.stdin.readline()  # the broker is back
print("flushed", emitter.flush(30), emitter.close(10), flush=True)
"""


def test_an_outage_logs_one_line_per_state_change_and_no_traceback(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """A program that never configured logging, whose connection is cut and refused for seconds, gets two lines
    on stderr (publishing fails, publishing works again) and no traceback or client-library retry lines; then
    everything it emitted arrives."""
    aggregator = start_aggregator(names)
    with TcpProxy() as proxy:
        program = subprocess.Popen(
            [sys.executable, "-c", UNCONFIGURED_PROGRAM, proxy.url, names.exchange],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert program.stdin is not None
        assert program.stdout is not None
        try:
            assert program.stdout.readline().split() == ["flushed", "True"]
            proxy.down()
            program.stdin.write("down\n")
            program.stdin.flush()
            assert program.stdout.readline().split() == ["held", "False"]
            time.sleep(2)  # about ten refused reconnects at retry_max_seconds=0.2
            proxy.up()
            program.stdin.write("up\n")
            program.stdin.flush()
            assert program.stdout.readline().split() == ["flushed", "True", "True"]
            _, stderr = program.communicate(timeout=30)
        finally:
            program.kill()
    assert proxy.connections == 2
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("tickbus: cannot publish to RabbitMQ: RabbitMQ is unreachable ("), stderr
    assert lines[1].startswith("tickbus: publishing to RabbitMQ works again after "), stderr
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source="bare") == 100, what="100 errors")
    time.sleep(0.3)
    assert total(aggregator.scrape(), "trading_errors_total", source="bare") == 100
