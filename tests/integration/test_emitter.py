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


def test_emit_after_close_is_a_counted_drop(names: Names) -> None:
    """After close(), emit() says False and counts the drop instead of losing the event silently."""
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
