"""The desk scenario every producer sends, and the samples it must produce on /metrics."""

import json
import time
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import Event
from tests.support.scrape import Samples

SCENARIOS = Path(__file__).parent.parent / "scenarios"
DESK_EVENTS = SCENARIOS / "desk.json"
DESK_CONFIG = SCENARIOS / "desk.toml"


def desk_events(source: str, now: float | None = None) -> list[Any]:
    """The scenario's events for `source`, with `ts` turned from seconds-ago into epoch seconds."""
    now = time.time() if now is None else now
    raw = json.loads(DESK_EVENTS.read_text())["events"]
    return [msgspec.convert({**event, "source": source, "ts": now - event["ts"]}, Event) for event in raw]


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def desk_expected(source: str) -> Samples:
    """Exact samples the scenario yields for one source (a selection that covers every kind)."""
    s = source
    return {
        _key(
            "trading_signals_total",
            source=s,
            strategy="momentum",
            symbol="BTCUSDT",
            side="buy",
            outcome="generated",
            reason="",
        ): 1,
        _key(
            "trading_signals_total",
            source=s,
            strategy="momentum",
            symbol="BTCUSDT",
            side="buy",
            outcome="accepted",
            reason="",
        ): 1,
        _key(
            "trading_signals_total",
            source=s,
            strategy="mean_reversion",
            symbol="ETHUSDT",
            side="sell",
            outcome="rejected",
            reason="ml_blocked",
        ): 1,
        _key("trading_signal_confidence_ratio_count", source=s, strategy="momentum", outcome="generated"): 1,
        _key(
            "trading_signal_confidence_ratio_bucket", source=s, strategy="mean_reversion", outcome="rejected", le="0.3"
        ): 1,
        _key(
            "trading_signal_confidence_ratio_bucket", source=s, strategy="mean_reversion", outcome="rejected", le="0.25"
        ): 0,
        _key("trading_signal_generation_seconds_sum", source=s, strategy="momentum"): 0.002,
        _key(
            "trading_orders_total",
            source=s,
            strategy="",
            symbol="BTCUSDT",
            side="buy",
            order_type="limit",
            status="filled",
            venue="binance",
            reason="",
        ): 1,
        _key(
            "trading_orders_total",
            source=s,
            strategy="",
            symbol="ETHUSDT",
            side="sell",
            order_type="market",
            status="rejected",
            venue="binance",
            reason="insufficient_margin",
        ): 1,
        _key("trading_order_latency_seconds_count", source=s, venue="binance", order_type="limit", status="placed"): 1,
        _key(
            "trading_order_latency_seconds_bucket",
            source=s,
            venue="binance",
            order_type="limit",
            status="filled",
            le="0.01",
        ): 0,
        _key(
            "trading_order_latency_seconds_bucket",
            source=s,
            venue="binance",
            order_type="limit",
            status="filled",
            le="0.025",
        ): 1,
        _key(
            "trading_order_slippage_bps_sum",
            source=s,
            venue="binance",
            symbol="BTCUSDT",
            side="buy",
            direction="adverse",
        ): 1.5,
        _key("trading_order_filled_quantity_total", source=s, strategy="", symbol="BTCUSDT", side="buy"): 2,
        _key("trading_order_filled_notional_total", source=s, strategy="", symbol="BTCUSDT", side="buy"): 201,
        _key(
            "trading_predictions_total",
            source=s,
            model="signal_filter",
            model_version="3",
            symbol="BTCUSDT",
            decision="accept",
        ): 1,
        _key("trading_prediction_probability_ratio_sum", source=s, model="signal_filter", decision="block"): 0.31,
        _key(
            "trading_prediction_expected_profit_ratio_count",
            source=s,
            model="signal_filter",
            decision="accept",
            direction="gain",
        ): 1,
        _key(
            "trading_prediction_expected_profit_ratio_sum",
            source=s,
            model="signal_filter",
            decision="block",
            direction="loss",
        ): 0.004,
        _key("trading_prediction_latency_seconds_count", source=s, model="signal_filter"): 2,
        _key(
            "trading_prediction_outcomes_total", source=s, model="signal_filter", model_version="3", correct="true"
        ): 1,
        _key(
            "trading_prediction_outcomes_total", source=s, model="signal_filter", model_version="3", correct="false"
        ): 1,
        _key(
            "trading_errors_total", source=s, component="executor", error_type="timeout", severity="warning", symbol=""
        ): 1,
        # desk.json sends the newer position (2s ago) before an older one (3s ago): the newer must stay.
        _key("trading_position_quantity", source=s, account="", strategy="", symbol="BTCUSDT"): 2,
        _key("trading_position_unrealized_pnl", source=s, account="", strategy="", symbol="BTCUSDT"): 15.5,
        _key("trading_portfolio_equity", source=s, account=""): 100000,
        _key("trading_portfolio_drawdown_ratio", source=s, account=""): 0.05,
        _key("trading_portfolio_open_positions", source=s, account=""): 1,
        _key("trading_portfolio_total_return_ratio", source=s, account=""): 0.12,
        _key("trading_trades_total", source=s, strategy="momentum", symbol="BTCUSDT", side="buy", result="win"): 1,
        _key(
            "trading_trades_total", source=s, strategy="mean_reversion", symbol="ETHUSDT", side="sell", result="loss"
        ): 1,
        _key("trading_trade_profit_total", source=s, strategy="momentum", symbol="BTCUSDT"): 25,
        _key("trading_trade_loss_total", source=s, strategy="mean_reversion", symbol="ETHUSDT"): 10,
        _key("trading_source_info", source=s, version="1.2.3"): 1,
        _key("trading_source_up", source=s): 1,
        _key("trading_producer_dropped_events_total", source=s): 0,
        _key("trading_process_resident_memory_bytes", source=s): 52428800,
        _key("trading_process_cpu_seconds_total", source=s): 1.5,
        # One ok call to postgres (0.004 s, in (0.001, 0.005]) and a report that redis is down.
        _key("trading_dependency_calls_total", source=s, dependency="postgres", operation="select", outcome="ok"): 1,
        _key(
            "trading_dependency_latency_seconds_bucket", source=s, dependency="postgres", operation="select", le="0.001"
        ): 0,
        _key(
            "trading_dependency_latency_seconds_bucket", source=s, dependency="postgres", operation="select", le="0.005"
        ): 1,
        _key("trading_dependency_latency_seconds_sum", source=s, dependency="postgres", operation="select"): 0.004,
        _key("trading_dependency_up", source=s, dependency="redis"): 0,
        _key("trading_kill_switch_active", source=s, reason="manual"): 1,
        _key("trading_cache_requests_total", source=s, cache="features", result="hit"): 3,
    }


def missing_or_wrong(samples: Samples, expected: Samples) -> dict[str, tuple[float, float | None]]:
    """Every expected sample that is absent or differs, as name{labels} -> (expected, actual)."""
    problems = {}
    for key, want in expected.items():
        got = samples.get(key)
        if got is None or abs(got - want) > 1e-9:
            name, labels = key
            problems[f"{name}{dict(sorted(labels))}"] = (want, got)
    return problems
