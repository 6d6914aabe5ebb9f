"""The stack scenario: a trading desk's normal events plus incidents built to trip each shipped alert.

Phase "baseline" creates every series; phase "incident" moves the counters and histograms so that
rates, ratios and quantiles over the window are real numbers, and trips the alerts.
"""

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgspec

from schemas.events import Error, Heartbeat, Metric, Order, Portfolio, Position, Prediction, Signal, Trade
from tests.support.broker import RawMessage
from tests.support.process import AMQP_URL, Names
from tests.support.scenario import desk_events

DESK = "desk"
EXEC = "e2e-exec"
MODEL = "e2e-model"
ERRORS = "e2e-errors"
STRATEGY = "e2e-strat"
RISK = "e2e-risk"
SILENT = "e2e-silent"
SICK = "e2e-sick"
DROPPER = "e2e-dropper"
FLOOD = "e2e-flood"
BAD = "e2e-bad"
DUPLICATE = "e2e-dup"
LATE = "e2e-late"
BACKLOG = "e2e-backlog"

# Ages of the late events: well past TickbusEventsDelayed's 30s.
LATE_AGE_SECONDS = 120.0
# Distinct symbols flooding trading_signals_total per phase; the test's aggregator allows FLOOD_LIMIT series.
FLOOD_SYMBOLS = 45
FLOOD_LIMIT = 40

_json = msgspec.json.Encoder()
_ids = itertools.count()


@dataclass
class Phase:
    """What one phase publishes: events through the emitter, raw messages, and what the aggregator must count."""

    events: list[Any] = field(default_factory=list)
    raw: list[RawMessage] = field(default_factory=list)
    received: int = 0
    rejected: int = 0


def _desk(now: float) -> list[Any]:
    # The desk scenario's undeclared custom metric (cache_requests_total) is not in deploy/tickbus.toml.
    return [
        event
        for event in desk_events(DESK, now)
        if not (isinstance(event, Metric) and event.name != "kill_switch_active")
    ]


def _orders(now: float, placed: int, rejected: int, fills: int, cancelled: int, expired: int) -> list[Any]:
    base: dict[str, Any] = {"ts": now, "source": EXEC, "symbol": "BTCUSDT", "venue": "binance", "strategy": "momentum"}
    events: list[Any] = []
    events += [Order(**base, side="buy", status="placed", order_type="market", latency=0.02) for _ in range(placed)]
    events += [Order(**base, side="sell", status="rejected", reason="price_band") for _ in range(rejected)]
    for index in range(fills):
        # Market fills take 2s (TradingFillLatencyHigh); slippage alternates adverse and favorable.
        events.append(
            Order(
                **base,
                side="buy",
                status="filled",
                order_type="market",
                quantity=1.0,
                price=100.0 + index,
                latency=2.0,
                slippage_bps=4.0 if index % 2 == 0 else -2.0,
            )
        )
    events.append(
        Order(
            **base,
            side="buy",
            status="partially_filled",
            order_type="limit",
            quantity=0.5,
            price=99.0,
            latency=0.4,
            slippage_bps=0.0,
        )
    )
    events += [Order(**base, side="buy", status="cancelled", latency=0.3) for _ in range(cancelled)]
    events += [Order(**base, side="buy", status="expired", latency=60.0) for _ in range(expired)]
    return events


def _predictions(now: float, count: int) -> list[Any]:
    # 500ms per prediction: TradingPredictionLatencyHigh. Expected profit both ways; then outcome reports.
    predictions: list[Any] = [
        Prediction(
            ts=now,
            source=MODEL,
            model="ranker",
            model_version="7",
            symbol="BTCUSDT",
            decision="accept" if index % 3 else "block",
            probability=0.35 + 0.05 * (index % 10),
            expected_profit=0.012 if index % 4 else -0.004,
            latency=0.5,
        )
        for index in range(count)
    ]
    outcomes = [
        Prediction(ts=now, source=MODEL, model="ranker", model_version="7", symbol="BTCUSDT", correct=index % 3 != 0)
        for index in range(count // 2)
    ]
    return predictions + outcomes


def _signals(now: float, count: int) -> list[Any]:
    """Signals a strategy generated, then accepted or rejected (the time each decision took)."""
    common: dict[str, Any] = {"ts": now, "source": STRATEGY, "strategy": "momentum", "symbol": "ETHUSDT", "side": "buy"}
    events: list[Any] = []
    for index in range(count):
        events.append(Signal(**common, outcome="generated", confidence=0.6, latency=0.004))
        if index % 2:
            events.append(Signal(**common, outcome="accepted", confidence=0.6, latency=0.03))
        else:
            events.append(Signal(**common, outcome="rejected", reason="risk_limit", confidence=0.6, latency=0.01))
    return events


def _portfolio(now: float) -> list[Any]:
    common: dict[str, Any] = {"ts": now, "source": RISK, "cash": 50_000.0, "exposure": 120_000.0,
                              "unrealized_pnl": -800.0, "realized_pnl": 2500.0, "daily_pnl": -1500.0,
                              "daily_return": -0.015, "open_positions": 2}  # fmt: skip
    return [
        # main: 15%, no published limit (default 10%). tight: 7% over its 5%. hedge: 12% under its 15%.
        Portfolio(**common, account="main", equity=85_000.0, drawdown=0.15),
        Portfolio(**common, account="tight", equity=93_000.0, drawdown=0.07),
        Portfolio(**common, account="hedge", equity=88_000.0, drawdown=0.12),
        Metric(ts=now, source=RISK, name="drawdown_limit_ratio", value=0.05, labels={"account": "tight"}),
        Metric(ts=now, source=RISK, name="drawdown_limit_ratio", value=0.15, labels={"account": "hedge"}),
        Position(
            ts=now,
            source=RISK,
            account="main",
            strategy="momentum",
            symbol="ETHUSDT",
            quantity=-3.0,
            avg_price=2000.0,
            market_value=-6100.0,
            unrealized_pnl=-100.0,
            realized_pnl=40.0,
        ),
    ]


def _trades(now: float, wins: int, losses: int) -> list[Any]:
    return [
        Trade(ts=now, source=STRATEGY, strategy="momentum", symbol="BTCUSDT", side="buy", pnl=30.0, holding_time=90.0)
        for _ in range(wins)
    ] + [
        Trade(
            ts=now, source=STRATEGY, strategy="momentum", symbol="BTCUSDT", side="sell", pnl=-20.0, holding_time=400.0
        )
        for _ in range(losses)
    ]


def _flood(now: float, prefix: str) -> list[Any]:
    return [
        Signal(ts=now, source=FLOOD, strategy="scanner", symbol=f"{prefix}{index:03d}", side="buy", confidence=0.5)
        for index in range(FLOOD_SYMBOLS)
    ]


def _raw(event: Any, message_id: str | None = None) -> RawMessage:
    return RawMessage(_json.encode(event), routing_key=type(event).__struct_config__.tag, message_id=message_id)


def _undeclared(now: float) -> Metric:
    return Metric(
        ts=now, source=BAD, name="cache_requests_total", value=1, labels={"cache": "features", "result": "hit"}
    )


def baseline(now: float | None = None) -> Phase:
    """Every series the dashboards and rules read, created once."""
    now = time.time() if now is None else now
    phase = Phase()
    phase.events += _desk(now)
    phase.events += _orders(now, placed=1, rejected=1, fills=2, cancelled=1, expired=1)
    phase.events += _predictions(now, 4)
    phase.events += _signals(now, 2)
    phase.events.append(Error(ts=now, source=ERRORS, component="executor", error_type="timeout", severity="error"))
    phase.events += _trades(now, wins=1, losses=1)
    phase.events += _portfolio(now)
    phase.events += [
        Heartbeat(ts=now, source=SILENT, version="0.9.0", instance="s1", started_at=now - 60),
        Heartbeat(ts=now, source=SICK, version="2.0.1", instance="k1", started_at=now - 600, healthy=False),
        Heartbeat(ts=now, source=DROPPER, version="1.0.0", instance="d1", started_at=now - 60, dropped=0),
    ]
    phase.events += _flood(now, "A")
    phase.events.append(_undeclared(now))
    _add_raw(phase, now, late=0)
    phase.received = len(phase.events) - 1 + 1  # every event but the undeclared metric, plus the duplicated one
    phase.rejected = 1 + 1  # the undeclared metric, the undecodable message
    return phase


def incident(now: float | None = None) -> Phase:
    """The same desk a moment later, with every incident the alerts watch for."""
    now = time.time() if now is None else now
    phase = Phase()
    phase.events += _desk(now)
    phase.events += _orders(now, placed=20, rejected=10, fills=20, cancelled=3, expired=2)
    phase.events += _predictions(now, 20)
    phase.events += _signals(now, 10)
    phase.events += [
        Error(ts=now, source=ERRORS, component="executor", error_type="timeout", severity="error") for _ in range(60)
    ]
    phase.events += [
        Error(ts=now, source=ERRORS, component="feed", error_type="gap", severity="warning", symbol="ETHUSDT")
        for _ in range(5)
    ]
    phase.events += _trades(now, wins=3, losses=2)
    phase.events += _portfolio(now)
    phase.events += [
        Heartbeat(ts=now, source=SICK, version="2.0.1", instance="k1", started_at=now - 600, healthy=False),
        Heartbeat(ts=now, source=DROPPER, version="1.0.0", instance="d1", started_at=now - 60, dropped=7),
    ]
    phase.events += _flood(now, "B")
    phase.events.append(_undeclared(now))
    late = 20
    _add_raw(phase, now, late=late)
    phase.received = len(phase.events) - 1 + 1 + late
    phase.rejected = 1 + 1
    return phase


def _add_raw(phase: Phase, now: float, late: int) -> None:
    """An undecodable message, one message delivered twice under one id, and `late` old single-event messages."""
    phase.raw.append(RawMessage(b"this is not json", routing_key="signal"))
    duplicated = _raw(
        Signal(ts=now, source=DUPLICATE, strategy="momentum", symbol="BTCUSDT", side="buy"), f"e2e-dup-{next(_ids)}"
    )
    phase.raw += [duplicated, duplicated]
    # One event per message: the aggregator measures freshness per message.
    phase.raw += [
        _raw(Signal(ts=now - LATE_AGE_SECONDS, source=LATE, strategy="momentum", symbol="BTCUSDT", side="sell"))
        for _ in range(late)
    ]


async def _publish_many(exchange_name: str, count: int, batch: int) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        for start in range(0, count, batch):
            now = time.time()
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            _json.encode(
                                Signal(ts=now, source=BACKLOG, strategy="replay", symbol="BTCUSDT", side="buy")
                            ),
                            content_type="application/json",
                        ),
                        routing_key="signal",
                    )
                    for _ in range(start, min(count, start + batch))
                )
            )


def publish_backlog(exchange_name: str, count: int) -> None:
    """Publish `count` single-event messages as fast as the broker confirms them."""
    asyncio.run(_publish_many(exchange_name, count, batch=1000))


async def _delete(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for queue in queues:
            channel = await connection.channel()
            await channel.queue_delete(queue)
        for exchange in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)


def delete_topology(names: Names) -> None:
    """Remove a test's queues and exchanges (with their dead-letter twins) from the broker."""
    asyncio.run(_delete([names.queue, names.dead_letter_queue], [names.exchange, f"{names.exchange}.dead"]))
