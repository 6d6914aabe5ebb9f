"""The catalog applied to events: which series each kind updates, custom metrics and their refusals."""

import pytest

from aggregator.config import CatalogSettings, CustomMetric
from aggregator.ingest import Ingest
from aggregator.store import CounterFamily, GaugeFamily, HistogramFamily
from schemas.events import Heartbeat, Metric, Order, Position, Prediction, Signal, Trade
from tests.support.engine import make_ingest


@pytest.fixture
def ingest() -> Ingest:
    custom = [
        CustomMetric(name="kill_switch_active", type="gauge", help="h", labels=["reason"]),
        CustomMetric(name="ai_cost_usd_total", type="counter", help="h", labels=["provider"]),
        CustomMetric(name="feature_seconds", type="histogram", help="h", buckets=[0.1, 1.0]),
    ]
    return make_ingest(CatalogSettings(namespace="desk"), custom)


def _series(ingest: Ingest, name: str) -> dict[tuple[str, ...], object]:
    return dict(ingest.store.families[name].series)


def test_every_built_in_metric_follows_prometheus_naming(ingest: Ingest) -> None:
    """Counters end in _total, units close the name, everything carries the namespace and a source label."""
    for spec, family in ingest.specs:
        assert family.name.startswith("desk_")
        assert family.name.endswith("_total") == isinstance(family, CounterFamily), family.name
        if spec.unit:
            assert family.name.endswith("_" + spec.unit), family.name
        assert family.label_names[0] == "source", family.name
        assert spec.help.endswith("."), family.name


def test_order_fill_updates_counts_latency_slippage_and_volume(ingest: Ingest) -> None:
    """A fill counts, observes latency and slippage, and adds quantity and notional."""
    fill = Order(ts=1.0, source="ex", symbol="BTC", side="buy", status="filled", quantity=2, price=10,
                 latency=0.003, slippage_bps=-1.0)  # fmt: skip
    placed = Order(ts=1.0, source="ex", symbol="BTC", side="buy", status="placed", slippage_bps=3.0)
    assert ingest.apply([fill, placed], now=2.0) == []
    assert _series(ingest, "desk_orders_total") == {
        ("ex", "", "BTC", "buy", "market", "filled", "", ""): 1.0,
        ("ex", "", "BTC", "buy", "market", "placed", "", ""): 1.0,
    }
    slippage = ingest.store.families["desk_order_slippage_bps"]
    assert isinstance(slippage, HistogramFamily)
    assert {key: counts.tolist() for key, counts in slippage.series.items()} == {
        ("ex", "", "BTC", "buy", "favorable"): [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1.0]
    }
    assert _series(ingest, "desk_order_filled_notional_total") == {("ex", "", "BTC", "buy"): 20.0}
    assert _series(ingest, "desk_order_latency_seconds")[("ex", "", "market", "filled")] is not None


def test_optional_fields_left_out_update_nothing(ingest: Ingest) -> None:
    """A signal without confidence or latency counts but observes no histogram."""
    ingest.apply([Signal(ts=1.0, source="s", strategy="m", symbol="X", side="buy")], now=2.0)
    assert len(_series(ingest, "desk_signals_total")) == 1
    assert _series(ingest, "desk_signal_confidence_ratio") == {}
    assert _series(ingest, "desk_signal_generation_seconds") == {}


def test_trades_feed_win_rate_and_profit_factor(ingest: Ingest) -> None:
    """Wins, losses, gross profit and gross loss come from closed trades."""
    trades = [Trade(ts=1.0, source="s", symbol="X", side="buy", pnl=pnl) for pnl in (10.0, -4.0, 6.0, 0.0)]
    ingest.apply(trades, now=2.0)
    results = {key[-1]: count for key, count in _series(ingest, "desk_trades_total").items()}
    assert results == {"win": 2.0, "loss": 1.0, "breakeven": 1.0}
    assert _series(ingest, "desk_trade_profit_total") == {("s", "", "X"): 16.0}
    assert _series(ingest, "desk_trade_loss_total") == {("s", "", "X"): 4.0}


def test_heartbeats_feed_liveness_version_and_drops(ingest: Ingest) -> None:
    """Last seen, version info and the producer's cumulative drops as a counter."""
    ingest.apply([Heartbeat(ts=10.0, source="p", version="1.0", instance="a", dropped=3)], now=11.0)
    ingest.apply([Heartbeat(ts=20.0, source="p", version="1.1", instance="a", dropped=5)], now=21.0)
    assert _series(ingest, "desk_producer_dropped_events_total") == {("p",): 5.0}
    assert set(_series(ingest, "desk_source_info")) == {("p", "1.1")}
    last_seen = ingest.store.families["desk_source_last_seen_timestamp_seconds"]
    assert isinstance(last_seen, GaugeFamily)
    assert last_seen.series[("p",)] == (20.0, 20.0)


def test_custom_metrics_apply_with_their_declared_labels(ingest: Ingest) -> None:
    """Declared gauges, counters and histograms take `metric` events, with the source label added."""
    events = [
        Metric(ts=1.0, source="risk", name="kill_switch_active", value=1, labels={"reason": "dd"}),
        Metric(ts=1.0, source="agent", name="ai_cost_usd_total", value=0.25, labels={"provider": "x"}),
        Metric(ts=1.0, source="agent", name="ai_cost_usd_total", value=0.5, labels={"provider": "x"}),
        Metric(ts=1.0, source="agent", name="feature_seconds", value=0.5),
    ]
    assert ingest.apply(events, now=2.0) == []
    assert _series(ingest, "desk_kill_switch_active") == {("risk", "dd"): (1.0, 1.0)}
    assert _series(ingest, "desk_ai_cost_usd_total") == {("agent", "x"): 0.75}
    histogram = ingest.store.families["desk_feature_seconds"]
    assert isinstance(histogram, HistogramFamily)
    assert {key: counts.tolist() for key, counts in histogram.series.items()} == {("agent",): [0, 1, 0, 0.5]}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (Metric(ts=1.0, source="s", name="undeclared", value=1), "undeclared_metric"),
        (Metric(ts=1.0, source="s", name="kill_switch_active", value=1), "label_mismatch"),
        (
            Metric(ts=1.0, source="s", name="kill_switch_active", value=1, labels={"reason": "a", "x": "b"}),
            "label_mismatch",
        ),
        (
            Metric(ts=1.0, source="s", name="ai_cost_usd_total", value=-1, labels={"provider": "x"}),
            "negative_increment",
        ),
        (Metric(ts=1.0, source="s", name="feature_seconds", value=-0.5), "negative_observation"),
    ],
)
def test_custom_metric_events_that_do_not_fit_are_refused(ingest: Ingest, event: Metric, reason: str) -> None:
    """Undeclared names, wrong label sets and negative counter increments are refused and change nothing."""
    before = ingest.store.snapshot()
    refused = ingest.apply([event], now=2.0)
    assert [r[1] for r in refused] == [reason]
    after = ingest.store.snapshot()
    assert {k: v for k, v in after.items() if not k.startswith("tickbus_")} == {
        k: v for k, v in before.items() if not k.startswith("tickbus_")
    }


def test_signal_latency_is_generation_or_decision_by_outcome(ingest: Ingest) -> None:
    """Generated signals feed the generation histogram; accepted and rejected ones the decision histogram."""
    signals = [
        Signal(ts=1.0, source="s", strategy="m", symbol="X", side="buy", outcome=outcome, latency=0.001)
        for outcome in ("generated", "accepted", "rejected")
    ]
    ingest.apply(signals, now=2.0)
    assert set(_series(ingest, "desk_signal_generation_seconds")) == {("s", "m")}
    assert set(_series(ingest, "desk_signal_decision_seconds")) == {("s", "m", "accepted"), ("s", "m", "rejected")}


def test_an_outcome_report_is_not_counted_as_a_new_prediction(ingest: Ingest) -> None:
    """A prediction event with `correct` set counts only in the outcomes."""
    ingest.apply([Prediction(ts=1.0, source="m", model="x", probability=0.7, expected_profit=-0.01)], now=2.0)
    ingest.apply([Prediction(ts=3.0, source="m", model="x", correct=True)], now=4.0)
    assert list(_series(ingest, "desk_predictions_total").values()) == [1.0]
    assert set(_series(ingest, "desk_prediction_outcomes_total")) == {("m", "x", "", "true")}
    assert set(_series(ingest, "desk_prediction_expected_profit_ratio")) == {("m", "x", "", "loss")}


def test_a_custom_metric_may_not_take_a_built_in_name() -> None:
    """Declaring a custom metric named like a built-in one is an error that names both."""
    clash = CustomMetric(name="errors_total", type="counter", help="h")
    with pytest.raises(ValueError, match="has the name of the built-in metric trading_errors_total"):
        make_ingest(CatalogSettings(), [clash])


def test_the_aggregator_s_own_gauges_never_expire(ingest: Ingest) -> None:
    """Gauge expiry drops a silent source's gauges, never tickbus_start_time_seconds and its kind."""
    metrics = ingest.self_metrics
    metrics.set_gauge(metrics.start_time, 100.0, now=100.0)
    ingest.apply([Position(ts=100.0, source="p", symbol="X", quantity=1.0)], now=100.0)
    assert ingest.store.expire_gauges(now=2_000.0, default_ttl=900.0, source_activity=ingest.sources.activity) == 1
    assert metrics.start_time.series == {(): (100.0, 100.0)}


def test_a_custom_gauge_with_ttl_zero_never_expires() -> None:
    """A state like a kill switch, declared with ttl_seconds = 0, outlives gauge_ttl_seconds; others expire."""
    custom = [
        CustomMetric(name="kill_switch_active", type="gauge", help="h", ttl_seconds=0),
        CustomMetric(name="queue_lag", type="gauge", help="h"),
    ]
    ingest = make_ingest(CatalogSettings(namespace="desk"), custom)
    ingest.apply(
        [Metric(ts=1.0, source="risk", name=name, value=1) for name in ("kill_switch_active", "queue_lag")], 1.0
    )
    assert ingest.store.expire_gauges(now=10_000.0, default_ttl=900.0, source_activity=ingest.sources.activity) == 1
    assert _series(ingest, "desk_kill_switch_active") == {("risk",): (1.0, 1.0)}
    assert _series(ingest, "desk_queue_lag") == {}


def test_gauges_of_a_source_still_talking_do_not_expire(ingest: Ingest) -> None:
    """A position set once stays while its source keeps sending anything; it goes once the source is silent."""
    ingest.apply([Position(ts=100.0, source="book", symbol="X", quantity=3.0)], now=100.0)
    ingest.apply([Heartbeat(ts=950.0, source="book")], now=950.0)
    assert ingest.store.expire_gauges(now=1_000.0, default_ttl=900.0, source_activity=ingest.sources.activity) == 0
    assert _series(ingest, "desk_position_quantity") == {("book", "", "", "X"): (3.0, 100.0)}
    assert ingest.store.expire_gauges(now=2_000.0, default_ttl=900.0, source_activity=ingest.sources.activity) == 4
    assert _series(ingest, "desk_position_quantity") == {}
