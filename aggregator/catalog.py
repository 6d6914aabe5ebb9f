"""The built-in metric catalog: which series each event kind updates, declared as data."""

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.events import (
    Dependency,
    Error,
    EventBase,
    Heartbeat,
    Order,
    Portfolio,
    Position,
    Prediction,
    Signal,
    Trade,
)


class MetricType(enum.StrEnum):
    """How a series is updated and exposed."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


Getter = str | Callable[[Any], Any]
"""An event field name, or a function of the event, giving a label value or a sample value."""

# Latency from a co-located matching engine (100 us) to a slow broker REST round trip (10 s).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Slippage in basis points, by size; its sign is the `direction` label, because OpenMetrics
# histograms with negative buckets may not carry a sum and traders need the average.
SLIPPAGE_BPS_BUCKETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# Calls to databases, caches and external APIs: a millisecond to a minute.
DEPENDENCY_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PROBABILITY_BUCKETS = tuple(round(step * 0.05, 2) for step in range(1, 21))
# Size of an expected return as a fraction, up to 10%; its sign is the `direction` label (gain, loss).
RETURN_BUCKETS = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)
# Holding time of a trade: a second to a week.
HOLDING_TIME_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its name (without namespace), type, help, unit and how an event feeds it.

    `labels` maps each label name to the event field (or function) giving its value; `value`
    gives the sample (None counts 1). A spec is skipped for an event whose value is None, or that
    does not meet `when`.
    """

    name: str
    type: MetricType
    help: str
    labels: Mapping[str, Getter] = field(default_factory=dict)
    value: Getter | None = None
    unit: str = ""
    buckets: tuple[float, ...] = ()
    when: "FieldIn | None" = None
    # The value is a producer's running total: the counter adds its increase, per `cumulative_key`.
    cumulative_key: Getter | None = None
    # At most one series per value of the first N labels: a new label set replaces the old one.
    exclusive_prefix: int = 0
    # Gauges: seconds a series lives without updates (None: `gauge_ttl_seconds`; 0: forever).
    ttl_seconds: float | None = None


@dataclass(frozen=True)
class FieldIn:
    """A condition on one event field: its value is one of `values` (or, negated, none of them)."""

    field: str
    values: frozenset[Any]
    negate: bool = False


def field_in(field_name: str, *values: Any, negate: bool = False) -> FieldIn:
    return FieldIn(field_name, frozenset(values), negate)


FILLED = field_in("status", "filled", "partially_filled")
# A prediction event with `correct` set reports an earlier prediction's outcome: it is not a new prediction.
NOT_AN_OUTCOME_REPORT = field_in("correct", None)


def _fields(*names: str) -> dict[str, Getter]:
    return {name: name for name in names}


@dataclass(frozen=True)
class Product:
    """A sample: the product of two event fields, or none when either is missing."""

    fields: tuple[str, str]
    op = "product"  # how the compiled loop (aggregator/_fastapply.pyx) knows it, without a Python call per event

    def __call__(self, event: Any) -> Any:
        first, second = getattr(event, self.fields[0]), getattr(event, self.fields[1])
        return None if first is None or second is None else first * second


@dataclass(frozen=True)
class Magnitude:
    """A sample: the absolute value of an event field, or none when it is missing."""

    fields: tuple[str]
    op = "magnitude"

    def __call__(self, event: Any) -> Any:
        value = getattr(event, self.fields[0])
        return None if value is None else abs(value)


@dataclass(frozen=True)
class SignWord:
    """A label: one word when an event field is below zero, another when it is not (or is missing)."""

    fields: tuple[str]
    words: tuple[str, str]  # (below zero, otherwise)
    op = "sign"

    def __call__(self, event: Any) -> str:
        value = getattr(event, self.fields[0])
        return self.words[0] if value is not None and value < 0 else self.words[1]


_NOTIONAL = Product(("quantity", "price"))
_SLIPPAGE_DIRECTION = SignWord(("slippage_bps",), ("favorable", "adverse"))
_EXPECTED_DIRECTION = SignWord(("expected_profit",), ("loss", "gain"))


def _trade_result(trade: Trade) -> str:
    if trade.pnl > 0:
        return "win"
    if trade.pnl < 0:
        return "loss"
    return "breakeven"


def _bool_label(field_name: str) -> Callable[[Any], str]:
    def label(event: Any) -> str:
        return "true" if getattr(event, field_name) else "false"

    return label


SOURCE = _fields("source")

BUILTIN_CATALOG: Mapping[type[EventBase], tuple[MetricSpec, ...]] = {
    Signal: (
        MetricSpec(
            "signals_total",
            MetricType.COUNTER,
            "Trading signals by strategy, symbol, side and outcome (generated, accepted, rejected).",
            _fields("source", "strategy", "symbol", "side", "outcome", "reason"),
        ),
        MetricSpec(
            "signal_confidence_ratio",
            MetricType.HISTOGRAM,
            "Confidence of trading signals, 0..1.",
            _fields("source", "strategy", "outcome"),
            value="confidence",
            unit="ratio",
            buckets=PROBABILITY_BUCKETS,
        ),
        MetricSpec(
            "signal_generation_seconds",
            MetricType.HISTOGRAM,
            "Time taken to generate a trading signal (the latency of `generated` signals).",
            _fields("source", "strategy"),
            value="latency",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            when=field_in("outcome", "generated"),
        ),
        MetricSpec(
            "signal_decision_seconds",
            MetricType.HISTOGRAM,
            "Time taken to accept or reject a signal (the latency of `accepted` and `rejected` signals).",
            _fields("source", "strategy", "outcome"),
            value="latency",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            when=field_in("outcome", "generated", negate=True),
        ),
    ),
    Order: (
        MetricSpec(
            "orders_total",
            MetricType.COUNTER,
            "Order state changes by symbol, side, type, status, venue and reason.",
            _fields("source", "strategy", "symbol", "side", "order_type", "status", "venue", "reason"),
        ),
        MetricSpec(
            "order_latency_seconds",
            MetricType.HISTOGRAM,
            "Time from order submission to this state change (placement ack, fill, cancel).",
            _fields("source", "venue", "order_type", "status"),
            value="latency",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
        ),
        MetricSpec(
            "order_slippage_bps",
            MetricType.HISTOGRAM,
            "Size of fill slippage against the expected price, in basis points; direction is adverse "
            "(worse, or zero) or favorable (price improvement).",
            {**_fields("source", "venue", "symbol", "side"), "direction": _SLIPPAGE_DIRECTION},
            value=Magnitude(("slippage_bps",)),
            unit="bps",
            buckets=SLIPPAGE_BPS_BUCKETS,
            when=FILLED,
        ),
        MetricSpec(
            "order_filled_quantity_total",
            MetricType.COUNTER,
            "Quantity filled, summed over fill events (each fill event reports its own quantity).",
            _fields("source", "strategy", "symbol", "side"),
            value="quantity",
            when=FILLED,
        ),
        MetricSpec(
            "order_filled_notional_total",
            MetricType.COUNTER,
            "Traded value (quantity x price) of fills, in the quote currency.",
            _fields("source", "strategy", "symbol", "side"),
            value=_NOTIONAL,
            when=FILLED,
        ),
    ),
    Prediction: (
        MetricSpec(
            "predictions_total",
            MetricType.COUNTER,
            "Model predictions by model, version, symbol and decision (outcome reports not included).",
            _fields("source", "model", "model_version", "symbol", "decision"),
            when=NOT_AN_OUTCOME_REPORT,
        ),
        MetricSpec(
            "prediction_probability_ratio",
            MetricType.HISTOGRAM,
            "Predicted probability, 0..1.",
            _fields("source", "model", "decision"),
            value="probability",
            unit="ratio",
            buckets=PROBABILITY_BUCKETS,
            when=NOT_AN_OUTCOME_REPORT,
        ),
        MetricSpec(
            "prediction_expected_profit_ratio",
            MetricType.HISTOGRAM,
            "Size of the expected profit (gain) or loss of the predicted trade as a fraction (0.01 = 1%).",
            {**_fields("source", "model", "decision"), "direction": _EXPECTED_DIRECTION},
            value=Magnitude(("expected_profit",)),
            unit="ratio",
            buckets=RETURN_BUCKETS,
            when=NOT_AN_OUTCOME_REPORT,
        ),
        MetricSpec(
            "prediction_latency_seconds",
            MetricType.HISTOGRAM,
            "Time taken to produce a prediction.",
            _fields("source", "model"),
            value="latency",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            when=NOT_AN_OUTCOME_REPORT,
        ),
        MetricSpec(
            "prediction_outcomes_total",
            MetricType.COUNTER,
            "Outcome reports (prediction events with `correct` set), by whether the prediction was correct "
            "(accuracy = true / all).",
            {**_fields("source", "model", "model_version"), "correct": _bool_label("correct")},
            when=field_in("correct", None, negate=True),
        ),
    ),
    Error: (
        MetricSpec(
            "errors_total",
            MetricType.COUNTER,
            "Errors by component, type, severity and symbol.",
            _fields("source", "component", "error_type", "severity", "symbol"),
        ),
    ),
    Position: tuple(
        MetricSpec(
            f"position_{value_field}",
            MetricType.GAUGE,
            help_text,
            _fields("source", "account", "strategy", "symbol"),
            value=value_field,
        )
        for value_field, help_text in (
            ("quantity", "Current position size, signed (negative is short; 0 is closed)."),
            ("avg_price", "Average entry price of the position."),
            ("market_value", "Market value of the position, in account currency."),
            ("unrealized_pnl", "Unrealised P&L of the position, in account currency."),
            ("realized_pnl", "Realised P&L of the position, in account currency."),
        )
    ),
    Portfolio: tuple(
        MetricSpec(
            f"portfolio_{metric_name}",
            MetricType.GAUGE,
            help_text,
            _fields("source", "account"),
            value=value_field,
            unit=unit,
        )
        for metric_name, value_field, unit, help_text in (
            ("equity", "equity", "", "Total portfolio value (equity), in account currency."),
            ("cash", "cash", "", "Cash balance, in account currency."),
            ("exposure", "exposure", "", "Gross exposure, in account currency."),
            ("unrealized_pnl", "unrealized_pnl", "", "Unrealised P&L, in account currency."),
            ("realized_pnl", "realized_pnl", "", "Realised P&L, in account currency."),
            ("daily_pnl", "daily_pnl", "", "P&L since the start of the trading day, in account currency."),
            ("daily_return_ratio", "daily_return", "ratio", "Return since the start of the trading day (0.01 = 1%)."),
            ("drawdown_ratio", "drawdown", "ratio", "Drawdown from the equity peak, 0..1."),
            ("open_positions", "open_positions", "", "Number of open positions."),
            ("total_return_ratio", "total_return", "ratio", "Return since inception (0.01 = 1%)."),
        )
    ),
    Trade: (
        MetricSpec(
            "trades_total",
            MetricType.COUNTER,
            "Closed trades by result (win, loss, breakeven): win rate = win / all.",
            {**_fields("source", "strategy", "symbol", "side"), "result": _trade_result},
        ),
        MetricSpec(
            "trade_profit_total",
            MetricType.COUNTER,
            "Sum of P&L of winning trades (gross profit), in account currency.",
            _fields("source", "strategy", "symbol"),
            value=lambda trade: trade.pnl if trade.pnl > 0 else None,
        ),
        MetricSpec(
            "trade_loss_total",
            MetricType.COUNTER,
            "Sum of losses of losing trades as a positive number (gross loss): profit factor = profit / loss.",
            _fields("source", "strategy", "symbol"),
            value=lambda trade: -trade.pnl if trade.pnl < 0 else None,
        ),
        MetricSpec(
            "trade_holding_seconds",
            MetricType.HISTOGRAM,
            "Time a trade was held, from open to close.",
            _fields("source", "strategy"),
            value="holding_time",
            unit="seconds",
            buckets=HOLDING_TIME_BUCKETS,
        ),
    ),
    Heartbeat: (
        MetricSpec(
            "source_last_seen_timestamp_seconds",
            MetricType.GAUGE,
            "Producer time of the last heartbeat from the source.",
            SOURCE,
            value="ts",
            unit="seconds",
        ),
        MetricSpec(
            "source_healthy",
            MetricType.GAUGE,
            "1 if the source's last heartbeat reported it healthy, else 0.",
            SOURCE,
            value=lambda heartbeat: 1.0 if heartbeat.healthy else 0.0,
        ),
        MetricSpec(
            "source_start_time_seconds",
            MetricType.GAUGE,
            "Start time of the source's producer, seconds since the epoch.",
            SOURCE,
            value="started_at",
            unit="seconds",
        ),
        MetricSpec(
            "source_info",
            MetricType.GAUGE,
            "Version of the source, as labels; always 1.",
            _fields("source", "version"),
            value=lambda heartbeat: 1.0,
            exclusive_prefix=1,
        ),
        MetricSpec(
            "producer_dropped_events_total",
            MetricType.COUNTER,
            "Events the source's producer dropped because its buffer was full (from heartbeats).",
            SOURCE,
            value="dropped",
            cumulative_key="instance",
        ),
        MetricSpec(
            "process_resident_memory_bytes",
            MetricType.GAUGE,
            "Resident memory of the source's process (from heartbeats).",
            SOURCE,
            value="resident_memory_bytes",
            unit="bytes",
        ),
        MetricSpec(
            "process_cpu_seconds_total",
            MetricType.COUNTER,
            "CPU time (user and system) the source's process has used (from heartbeats).",
            SOURCE,
            value="cpu_seconds",
            cumulative_key="instance",
        ),
    ),
    Dependency: (
        MetricSpec(
            "dependency_up",
            MetricType.GAUGE,
            "1 while the source reports the dependency (database, cache, broker, feed, API) up, else 0.",
            _fields("source", "dependency"),
            value=lambda dependency: 1.0 if dependency.up else 0.0,
            when=field_in("up", None, negate=True),
        ),
        MetricSpec(
            "dependency_last_success_timestamp_seconds",
            MetricType.GAUGE,
            "Producer time of the last call to the dependency with outcome ok (data freshness).",
            _fields("source", "dependency"),
            value="ts",
            unit="seconds",
            when=field_in("outcome", "ok"),
            # Kept however long the dependency keeps failing, so "no success for an hour" can alert.
            ttl_seconds=0,
        ),
        MetricSpec(
            "dependency_calls_total",
            MetricType.COUNTER,
            "Calls to the dependency by operation and outcome (ok, error, timeout, rate_limited, ...).",
            _fields("source", "dependency", "operation", "outcome"),
            when=field_in("outcome", "", negate=True),
        ),
        MetricSpec(
            "dependency_latency_seconds",
            MetricType.HISTOGRAM,
            "Latency of calls to the dependency.",
            _fields("source", "dependency", "operation"),
            value="latency",
            unit="seconds",
            buckets=DEPENDENCY_LATENCY_BUCKETS,
        ),
    ),
}

SOURCE_UP = MetricSpec(
    "source_up",
    MetricType.GAUGE,
    "1 if the source sent a heartbeat within the staleness window, else 0.",
    SOURCE,
)
