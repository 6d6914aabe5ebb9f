"""The typed metric events: one tagged msgspec Struct per kind, discriminated by the `kind` field."""

from typing import Annotated, Literal

import msgspec

from schemas.types import (
    Amount,
    BasisPoints,
    Count,
    FreeText,
    Identifier,
    LabelName,
    LabelValue,
    MetricName,
    NonNegativeAmount,
    Probability,
    Ratio,
    RequiredLabel,
    Seconds,
    SourceName,
    Timestamp,
)

SignalSide = Literal["buy", "sell", "long", "short", "hold", "close"]
SignalOutcome = Literal["generated", "accepted", "rejected"]
OrderSide = Literal["buy", "sell"]
OrderStatus = Literal["placed", "filled", "partially_filled", "cancelled", "rejected", "expired"]
Severity = Literal["debug", "info", "warning", "error", "critical"]


class EventBase(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, tag_field="kind"):
    """Fields every event carries: when it happened and who emitted it, and optionally a trace id.

    `trace_id` (an order's `order_id` too) becomes an OpenMetrics exemplar on the histogram bucket and
    counter the event updates, so a slow bucket leads to the request or order that landed there; ids
    never become labels.
    """

    ts: Timestamp
    source: SourceName
    trace_id: Identifier = ""


class Signal(EventBase, tag="signal", frozen=True):
    """A strategy generated, accepted or rejected a trading signal."""

    strategy: RequiredLabel
    symbol: RequiredLabel
    side: SignalSide
    outcome: SignalOutcome = "generated"
    reason: LabelValue = ""
    confidence: Probability | None = None
    latency: Seconds | None = None


class Order(EventBase, tag="order", frozen=True):
    """An order changed state: placed, (partially) filled, cancelled, rejected or expired."""

    symbol: RequiredLabel
    side: OrderSide
    status: OrderStatus
    order_type: LabelValue = "market"
    strategy: LabelValue = ""
    venue: LabelValue = ""
    reason: LabelValue = ""
    quantity: NonNegativeAmount | None = None
    price: NonNegativeAmount | None = None
    latency: Seconds | None = None
    slippage_bps: BasisPoints | None = None
    order_id: Identifier = ""


class Prediction(EventBase, tag="prediction", frozen=True):
    """A model made a prediction; or, with `correct` set, a report of an earlier prediction's outcome."""

    model: RequiredLabel
    model_version: LabelValue = ""
    symbol: LabelValue = ""
    decision: LabelValue = ""
    probability: Probability | None = None
    expected_profit: Amount | None = None
    latency: Seconds | None = None
    correct: bool | None = None


class Error(EventBase, tag="error", frozen=True):
    """A component hit an error; the message is kept for logs, never made a label."""

    component: RequiredLabel
    error_type: RequiredLabel
    severity: Severity = "error"
    symbol: LabelValue = ""
    message: FreeText = ""


class Position(EventBase, tag="position", frozen=True):
    """The current state of one position; quantity 0 means closed."""

    symbol: RequiredLabel
    quantity: Amount
    account: LabelValue = ""
    strategy: LabelValue = ""
    avg_price: NonNegativeAmount | None = None
    market_value: Amount | None = None
    unrealized_pnl: Amount | None = None
    realized_pnl: Amount | None = None


class Portfolio(EventBase, tag="portfolio", frozen=True):
    """The current state of an account or portfolio: value, cash, P&L, drawdown, exposure."""

    account: LabelValue = ""
    equity: Amount | None = None
    cash: Amount | None = None
    exposure: Amount | None = None
    unrealized_pnl: Amount | None = None
    realized_pnl: Amount | None = None
    daily_pnl: Amount | None = None
    daily_return: Amount | None = None
    drawdown: Ratio | None = None
    open_positions: Count | None = None
    total_return: Amount | None = None


class Trade(EventBase, tag="trade", frozen=True):
    """A round-trip trade closed with a realised P&L: the basis of win rate and profit factor."""

    symbol: RequiredLabel
    side: OrderSide
    pnl: Amount
    strategy: LabelValue = ""
    account: LabelValue = ""
    quantity: NonNegativeAmount | None = None
    holding_time: Seconds | None = None


class Heartbeat(EventBase, tag="heartbeat", frozen=True):
    """A source is alive; `dropped` is the producer's cumulative count of events it had to drop.

    `resident_memory_bytes` and `cpu_seconds` (cumulative) describe the producer's process, as the
    process metrics of an in-process Prometheus client did.
    """

    version: LabelValue = ""
    instance: Identifier = ""
    healthy: bool = True
    started_at: Timestamp | None = None
    dropped: Count = 0
    resident_memory_bytes: Count | None = None
    cpu_seconds: NonNegativeAmount | None = None


class Dependency(EventBase, tag="dependency", frozen=True):
    """Something the source depends on (database, cache, broker, data provider, API): its state, or one call.

    With `up` it reports a state (connected or not); with `outcome` (ok, error, timeout, ...) one call.
    """

    dependency: RequiredLabel
    operation: LabelValue = ""
    outcome: LabelValue = ""
    up: bool | None = None
    latency: Seconds | None = None


class Metric(EventBase, tag="metric", frozen=True):
    """An observation for a custom metric declared in the aggregator's config."""

    name: MetricName
    value: Amount
    labels: dict[LabelName, LabelValue] = {}


Event = Signal | Order | Prediction | Error | Position | Portfolio | Trade | Heartbeat | Dependency | Metric
EVENT_TYPES: tuple[type[EventBase], ...] = (
    Signal,
    Order,
    Prediction,
    Error,
    Position,
    Portfolio,
    Trade,
    Heartbeat,
    Dependency,
    Metric,
)

MAX_BATCH_EVENTS = 10_000
Batch = Annotated[list[Event], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]


def kind_of(event_type: type[EventBase]) -> str:
    """The wire `kind` tag of an event class."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


KINDS: tuple[str, ...] = tuple(kind_of(event_type) for event_type in EVENT_TYPES)
