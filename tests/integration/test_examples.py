"""The examples run as a user runs them, against the real broker and an aggregator, and show up on /metrics."""

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for

ROOT = Path(__file__).resolve().parents[2]
StartAggregator = Callable[..., AggregatorProcess]
# example -> (the series each must have fed, with its source)
EXPECTED = {
    "strategy": ["trading_signals_total", "trading_signal_confidence_ratio_count", "trading_position_quantity"],
    "executor": ["trading_orders_total", "trading_order_latency_seconds_count", "trading_trades_total"],
    "model": ["trading_predictions_total", "trading_prediction_outcomes_total", "trading_errors_total"],
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_each_example_emits_what_it_says_and_reports_its_source(
    names: Names, start_aggregator: StartAggregator, example: str
) -> None:
    """`python examples/NAME.py` for a few seconds: exit 0, every delivered; its series on /metrics under its source,
    and its heartbeats make the source up, healthy and versioned."""
    aggregator = start_aggregator(names)
    source = f"{example}-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{example}.py"), "--url", AMQP_URL, "--exchange", names.exchange,
         "--source", source, "--duration", "3"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"{source}: done")
    assert "0 dropped" in result.stdout

    def fed() -> bool:
        samples = aggregator.scrape()
        # Counts have grown; a gauge (a position may be short, its quantity negative or 0) is there.
        return all(
            total(samples, name, source=source) > 0
            if name.endswith(("_total", "_count"))
            else any(n == name and ("source", source) in labels for n, labels in samples)
            for name in EXPECTED[example]
        )

    wait_for(fed, timeout=20, what=f"the series of {example}")
    samples = aggregator.scrape()
    assert value(samples, "trading_source_up", source=source) == 1.0
    assert value(samples, "trading_source_healthy", source=source) == 1.0
    assert total(samples, "trading_source_info", source=source) == 1.0
    assert total(samples, "tickbus_events_rejected_total", source=source) == 0
    if example == "executor":
        assert total(samples, "trading_dependency_calls_total", source=source, dependency="binance") > 0
        assert value(samples, "trading_portfolio_equity", source=source, account="main") is not None
