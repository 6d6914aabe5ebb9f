"""Catalog behaviour over the real broker: cardinality guard, gauge ordering, expiry and source liveness."""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error, EventBase, Heartbeat, Position
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _send(names: Names, events: Sequence[EventBase], source: str = "t") -> None:
    settings = EmitterSettings(source=source, url=AMQP_URL, exchange=names.exchange, heartbeat_interval=0)
    with Emitter(settings) as emitter:
        for event in events:
            assert emitter.emit(event)
        assert emitter.flush(10)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_cardinality_guard_folds_new_label_sets_and_keeps_sums_exact(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With a limit of 5 series, 40 symbols fold into one overflow series; the total is exact and it is logged once."""
    aggregator = start_aggregator(names, config=_config(tmp_path, "[catalog]\nmax_series_per_metric = 5\n"))
    now = time.time()
    errors = [
        Error(ts=now, source="feed", component="md", error_type="gap", symbol=f"SYM{index % 40}")
        for index in range(400)
    ]
    _send(names, errors)
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 400, what="400 errors")
    samples = aggregator.scrape()
    series = [labels for name, labels in samples if name == "trading_errors_total"]
    assert len(series) == 6  # five real label sets and the overflow series
    overflow = value(samples, "trading_errors_total", source="__overflow__", component="__overflow__",
                     error_type="__overflow__", severity="__overflow__", symbol="__overflow__")  # fmt: skip
    assert overflow == 400 - 5 * 10
    assert value(samples, "tickbus_series_overflow_total", metric="trading_errors_total") == 350
    assert aggregator.log().count("trading_errors_total reached its limit of 5 series") == 1


def test_a_late_older_position_never_overwrites_a_newer_one(names: Names, start_aggregator: StartAggregator) -> None:
    """Gauges are last-by-event-time: the newer quantity stays when an older event arrives after it."""
    aggregator = start_aggregator(names)
    now = time.time()
    _send(names, [
        Position(ts=now, source="book", symbol="ETH", quantity=3.0),
        Position(ts=now - 10, source="book", symbol="ETH", quantity=99.0),
        Position(ts=now - 5, source="book", symbol="BTC", quantity=1.0),
        Position(ts=now - 1, source="book", symbol="BTC", quantity=2.0),
    ])  # fmt: skip
    labels = {"source": "book", "account": "", "strategy": ""}
    wait_for(lambda: value(aggregator.scrape(), "trading_position_quantity", symbol="BTC", **labels) == 2.0,
             what="the BTC position")  # fmt: skip
    assert value(aggregator.scrape(), "trading_position_quantity", symbol="ETH", **labels) == 3.0


def test_gauges_of_a_silent_source_expire_but_counters_stay(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """After gauge_ttl_seconds without updates a source's gauges disappear; its counters keep their totals."""
    config = _config(tmp_path, "[catalog]\ngauge_ttl_seconds = 1.5\nheartbeat_staleness_seconds = 1\n")
    aggregator = start_aggregator(names, config=config)
    now = time.time()
    _send(names, [
        Position(ts=now, source="gone", symbol="ETH", quantity=3.0),
        Heartbeat(ts=now, source="gone", version="2.0"),
        Error(ts=now, source="gone", component="c", error_type="t"),
    ])  # fmt: skip
    position = {"source": "gone", "account": "", "strategy": "", "symbol": "ETH"}
    wait_for(lambda: value(aggregator.scrape(), "trading_position_quantity", **position) == 3.0, what="position")
    assert value(aggregator.scrape(), "trading_source_up", source="gone") == 1
    wait_for(lambda: value(aggregator.scrape(), "trading_source_up", source="gone") == 0, timeout=5, what="down")
    wait_for(lambda: value(aggregator.scrape(), "trading_position_quantity", **position) is None, timeout=10,
             what="the position to expire")  # fmt: skip
    samples = aggregator.scrape()
    assert total(samples, "trading_errors_total", source="gone") == 1
    assert (value(samples, "tickbus_expired_series_total") or 0) >= 1
