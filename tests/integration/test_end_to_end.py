"""End to end over the real broker: producers -> RabbitMQ -> `aggregator run` -> exact values on /metrics."""

import asyncio
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable

from producers.emitter import AsyncEmitter, Emitter, EmitterSettings
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scenario import DESK_CONFIG, desk_events, desk_expected, missing_or_wrong
from tests.support.scrape import Samples, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _settings(names: Names, source: str, **overrides: object) -> EmitterSettings:
    return EmitterSettings(source=source, url=AMQP_URL, exchange=names.exchange, **overrides)  # type: ignore[arg-type]


def _wait_exact(aggregator: AggregatorProcess, expected: Samples) -> None:
    def matches() -> bool:
        return not missing_or_wrong(aggregator.scrape(), expected)

    try:
        wait_for(matches, timeout=20, what="the expected samples")
    except AssertionError:
        assert missing_or_wrong(aggregator.scrape(), expected) == {}


def test_every_kind_from_the_sync_emitter_shows_exact_values(names: Names, start_aggregator: StartAggregator) -> None:
    """The threaded Emitter's desk scenario comes out of /metrics with every expected value."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    with Emitter(_settings(names, "sync-desk", heartbeat_interval=0)) as emitter:
        for event in desk_events("sync-desk"):
            assert emitter.emit(event)
        assert emitter.flush(10)
    _wait_exact(aggregator, desk_expected("sync-desk"))


def test_every_kind_from_the_async_emitter_shows_exact_values(names: Names, start_aggregator: StartAggregator) -> None:
    """The asyncio emitter's desk scenario, one event per message, gives the same values."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)

    async def send() -> None:
        async with AsyncEmitter(_settings(names, "async-desk", heartbeat_interval=0, batch_size=1)) as emitter:
            for event in desk_events("async-desk"):
                emitter.emit(event)
            assert await emitter.flush(10)

    asyncio.run(send())
    _wait_exact(aggregator, desk_expected("async-desk"))
    samples = aggregator.scrape()
    assert value(samples, "tickbus_messages_received_total") == len(desk_events("x"))


def test_shell_emit_reaches_metrics(names: Names, start_aggregator: StartAggregator) -> None:
    """`aggregator emit` from a shell publishes events the aggregator counts exactly."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    base = [sys.executable, "-m", "aggregator", "emit", "--amqp-url", AMQP_URL, "--exchange", names.exchange]
    commands = [
        ["signal", "strategy=momentum", "symbol=BTCUSDT", "side=buy", "outcome=accepted", "confidence=0.8"],
        ["signal", "strategy=momentum", "symbol=BTCUSDT", "side=buy", "outcome=accepted", "confidence=0.6"],
        ["order", "symbol=ETHUSDT", "side=sell", "status=filled", "quantity=3", "price=10", "latency=0.02"],
        ["metric", "name=kill_switch_active", "value=1", "labels.reason=drawdown"],
    ]
    for words in commands:
        result = subprocess.run(
            [*base, *words, "--source", "shell-desk"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
    expected: Samples = {
        ("trading_signals_total", frozenset({("source", "shell-desk"), ("strategy", "momentum"), ("symbol", "BTCUSDT"),
                                             ("side", "buy"), ("outcome", "accepted"), ("reason", "")})): 2,
        ("trading_signal_confidence_ratio_sum", frozenset({("source", "shell-desk"), ("strategy", "momentum"),
                                                           ("outcome", "accepted")})): 1.4,
        ("trading_order_filled_notional_total", frozenset({("source", "shell-desk"), ("strategy", ""),
                                                           ("symbol", "ETHUSDT"), ("side", "sell")})): 30,
        ("trading_kill_switch_active", frozenset({("source", "shell-desk"), ("reason", "drawdown")})): 1,
    }  # fmt: skip
    _wait_exact(aggregator, expected)


def test_shell_emit_rejects_an_invalid_event_before_sending(names: Names) -> None:
    """A value out of range is refused by `aggregator emit` with the field named and a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "emit", "signal", "strategy=m", "symbol=X", "side=buy", "confidence=1.5",
         "--exchange", names.exchange],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "confidence" in result.stderr
    assert "<= 1.0" in result.stderr


def test_health_endpoints_and_content_negotiation(names: Names, start_aggregator: StartAggregator) -> None:
    """/healthz answers, /readyz is ready while consuming, /metrics speaks both text formats."""
    aggregator = start_aggregator(names)
    with urllib.request.urlopen(f"{aggregator.url}/healthz", timeout=5) as response:
        assert response.status == 200
    assert aggregator.ready()
    plain = urllib.request.Request(f"{aggregator.url}/metrics")
    with urllib.request.urlopen(plain, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    openmetrics = urllib.request.Request(
        f"{aggregator.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(openmetrics, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")


def test_ctrl_c_stops_cleanly(names: Names, start_aggregator: StartAggregator) -> None:
    """SIGINT, as Ctrl-C sends it, shuts down like SIGTERM: exit 0, no traceback."""
    aggregator = start_aggregator(names)
    assert aggregator.stop(signal.SIGINT) == 0
    log = aggregator.log()
    assert "received SIGINT; shutting down" in log
    assert "stopped: applied state committed and acked" in log
    assert "Traceback" not in log


def _emit(*words: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aggregator", "emit", *words, "--amqp-url", AMQP_URL]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_shell_emit_never_loses_an_event_quietly(names: Names, start_aggregator: StartAggregator) -> None:
    """A typo in a field, an exchange no aggregator listens on, or an undeclared metric: exit non-zero, say why."""
    signal_words = ["signal", "strategy=m", "symbol=X", "side=buy"]
    typo = _emit(*signal_words, "confidance=0.8", "--exchange", names.exchange)
    assert typo.returncode == 2
    assert "no field 'confidance'" in typo.stderr
    missing = _emit(*signal_words, "--exchange", f"{names.exchange}.typo")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    start_aggregator(names, config=DESK_CONFIG).stop()  # declares the exchange and binds the queue
    undeclared = _emit("metric", "name=nope", "value=1", "--exchange", names.exchange, "--config", str(DESK_CONFIG))
    assert undeclared.returncode == 2
    assert "undeclared_metric" in undeclared.stderr
    delivered = _emit(*signal_words, "--exchange", names.exchange)
    assert delivered.returncode == 0, delivered.stderr
    assert "error" not in delivered.stderr
