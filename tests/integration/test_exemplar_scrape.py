"""Whatever a producer puts in a trace id, the real Prometheus keeps scraping the aggregator (OpenMetrics)."""

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.prometheus import PrometheusServer, ensure_prometheus
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]


@pytest.mark.parametrize("trace_id", ["\x00", "a\x00b"])
def test_a_trace_id_holding_a_nul_does_not_fail_every_scrape(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path, trace_id: str
) -> None:
    """One valid error event whose trace_id holds a NUL character (the schema allows any 128 characters, JSON
    writes it as \\u0000). Prometheus scrapes with OpenMetrics by default; it must still scrape the aggregator
    (target up, no scrape error), not refuse every /metrics from then on."""
    ensure_prometheus()
    aggregator = start_aggregator(names)
    event = {"kind": "error", "ts": time.time(), "source": "nul", "component": "c", "error_type": "t",
             "trace_id": trace_id}  # fmt: skip
    publish_raw(names.exchange, [RawMessage(json.dumps(event).encode(), "error", message_id="nul-1")])
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source="nul") == 1, what="the event")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": "tickbus", "static_configs": [{"targets": [f"127.0.0.1:{aggregator.port}"]}]}
                ],
            }
        )
    )
    prometheus = PrometheusServer(config, tmp_path).start()
    try:
        targets = wait_for(
            lambda: [target for target in prometheus.active_targets() if target["health"] != "unknown"],
            what="a first scrape",
        )
        time.sleep(2.0)
        targets = prometheus.active_targets()
        assert [(target["health"], target["lastError"]) for target in targets] == [("up", "")]
    finally:
        prometheus.stop()
