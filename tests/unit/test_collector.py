"""Exposition: the Collector's output parses, has exact values, and both formats are served by the registry."""

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import CollectorRegistry

from aggregator.collector import StoreCollector
from aggregator.config import CatalogSettings
from aggregator.ingest import Ingest
from schemas.events import Heartbeat, Order
from tests.support.engine import make_ingest, read_view
from tests.support.scrape import parse, value


def _registry(clock_value: float) -> tuple[CollectorRegistry, Ingest]:
    ingest = make_ingest(CatalogSettings(heartbeat_staleness_seconds=30))
    registry = CollectorRegistry()
    registry.register(StoreCollector(read_view(ingest, lambda: clock_value)))
    return registry, ingest


def test_slippage_is_split_by_direction_with_count_and_sum() -> None:
    """Slippage sizes go in non-negative buckets, the sign in `direction`; _count and _sum are exposed per direction."""
    registry, ingest = _registry(100.0)
    fills = [
        Order(ts=1.0, source="x", symbol="S", side="buy", status="filled", slippage_bps=bps) for bps in (-3.0, 4.0, 0.0)
    ]
    ingest.apply(fills, now=1.0)
    samples = parse(generate_latest(registry).decode())
    labels = {"source": "x", "venue": "", "symbol": "S", "side": "buy"}
    adverse = {**labels, "direction": "adverse"}
    favorable = {**labels, "direction": "favorable"}
    assert value(samples, "trading_order_slippage_bps_count", **adverse) == 2
    assert value(samples, "trading_order_slippage_bps_sum", **adverse) == 4.0
    assert value(samples, "trading_order_slippage_bps_sum", **favorable) == 3.0
    assert value(samples, "trading_order_slippage_bps_bucket", **adverse, le="0.0") == 1
    assert value(samples, "trading_order_slippage_bps_bucket", **adverse, le="5.0") == 2
    assert value(samples, "trading_order_slippage_bps_bucket", **favorable, le="2.0") == 0
    assert value(samples, "trading_order_slippage_bps_bucket", **favorable, le="+Inf") == 1


def test_source_up_follows_heartbeat_staleness() -> None:
    """A source is up while its last heartbeat arrived within the staleness window."""
    registry, ingest = _registry(clock_value=100.0)
    ingest.apply([Heartbeat(ts=50.0, source="fresh")], now=90.0)
    ingest.apply([Heartbeat(ts=50.0, source="silent")], now=60.0)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "trading_source_up", source="fresh") == 1
    assert value(samples, "trading_source_up", source="silent") == 0


def test_openmetrics_output_is_well_formed() -> None:
    """The OpenMetrics rendering ends in # EOF and carries units for unit-suffixed metrics."""
    registry, ingest = _registry(1.0)
    ingest.apply([Order(ts=1.0, source="x", symbol="S", side="buy", status="filled", latency=0.01)], now=1.0)
    text = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    assert text.endswith("# EOF\n")
    assert "# UNIT trading_order_latency_seconds seconds" in text
    assert value(parse(generate_latest(registry).decode()), "tickbus_series", metric="trading_orders_total") == 1
