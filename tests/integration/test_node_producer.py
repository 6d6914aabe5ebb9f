"""The Node.js producer (producers/node) over the real broker into a real aggregator, compared with Python's."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.crosscheck import (
    Tap,
    assert_producer_properties,
    assert_rides_out_an_outage,
    assert_same_as_python,
    desk_raw,
    send_python_reference,
)
from tests.support.driver import ROOT
from tests.support.process import AggregatorProcess, Names
from tests.support.routing import TOPOLOGIES, assert_nothing_lost_before_the_aggregator, assert_publishes_overlap
from tests.support.scenario import DESK_CONFIG
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]
NODE = ROOT / "producers" / "node"


@pytest.fixture(scope="module", autouse=True)
def node_dependencies() -> None:
    """A fresh machine installs Node.js and the producer's npm dependencies by itself (a no-op once done)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-node-deps")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (NODE / "node_modules" / "amqplib" / "package.json").exists()


def _emit_cli(names: Names, source: str, events: list[dict[str, Any]], *options: str) -> dict[str, Any]:
    """Run bin/tickbus-emit.js on the events; its one-line JSON report."""
    result = subprocess.run(
        ["node", str(NODE / "bin" / "tickbus-emit.js"), "--source", source, "--exchange", names.exchange, *options],
        input="\n".join(json.dumps(event) for event in events),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_node_unit_tests_pass() -> None:
    """The Node-side unit tests (node's built-in runner, no broker) all pass."""
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=NODE, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
    passed = int(result.stdout.split("# pass ")[1].split()[0])
    assert passed >= 9


def test_node_desk_scenario_matches_the_python_emitter(names: Names, start_aggregator: StartAggregator) -> None:
    """Batched and one-per-message, the Node producer's desk scenario gives exactly the Python emitter's samples."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    now = time.time()
    with Tap(names) as tap:
        send_python_reference(names, "py-ref", now)
        batched = _emit_cli(names, "node-batched", desk_raw(now), "--heartbeat-ms", "0")
        single = _emit_cli(names, "node-single", desk_raw(now), "--heartbeat-ms", "0", "--batch-size", "1")
        produced = assert_same_as_python(aggregator, "node-batched", "py-ref")
        assert assert_same_as_python(aggregator, "node-single", "py-ref") == produced
        messages = tap.messages()

    events = len(desk_raw(now))
    assert batched == {"accepted": events, "dropped": 0, "confirmed": events, "messages": 1, "drained": True}
    assert single == {"accepted": events, "dropped": 0, "confirmed": events, "messages": events, "drained": True}
    batch_messages = [message for message in messages if message.app_id == "node-batched"]
    assert [message.routing_key for message in batch_messages] == ["batch"]
    assert len(json.loads(batch_messages[0].body)) == events
    single_messages = [message for message in messages if message.app_id == "node-single"]
    assert [message.routing_key for message in single_messages] == [event["kind"] for event in desk_raw(now)]
    assert assert_producer_properties(single_messages, "node-single") == list(range(1, events + 1))
    assert assert_producer_properties(batch_messages, "node-batched") == [1]
    assert total(aggregator.scrape(), "tickbus_events_rejected_total") == 0


def test_node_drops_are_counted_and_reported_by_heartbeat(names: Names, start_aggregator: StartAggregator) -> None:
    """Past its buffer the Node producer drops and counts; its final heartbeat brings the count to /metrics."""
    aggregator = start_aggregator(names)
    errors = [{"kind": "error", "component": "feed", "error_type": "gap"} for _ in range(100)]
    report = _emit_cli(
        names, "node-drops", errors, "--max-buffer", "10", "--heartbeat-ms", "60000", "--version", "2.0.0"
    )
    assert report["accepted"] == 10
    assert report["dropped"] == 90
    assert report["confirmed"] == 10

    def reported() -> bool:
        return value(aggregator.scrape(), "trading_producer_dropped_events_total", source="node-drops") == 90

    wait_for(reported, timeout=20, what="the drop count from the heartbeat")
    samples = aggregator.scrape()
    assert total(samples, "trading_errors_total", source="node-drops") == 10
    assert value(samples, "trading_source_info", source="node-drops", version="2.0.0") == 1
    assert (value(samples, "trading_process_resident_memory_bytes", source="node-drops") or 0) > 1_000_000
    assert (value(samples, "trading_process_cpu_seconds_total", source="node-drops") or 0) > 0
    assert value(samples, "trading_source_up", source="node-drops") == 1


def test_node_producer_rides_out_a_broker_outage(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With the broker away, emit() still returns at once; events wait, are retried, and arrive exactly once."""
    aggregator = start_aggregator(names)
    assert_rides_out_an_outage(
        ["node", str(NODE / "testing" / "driver.js")], names, aggregator, "node-outage", tmp_path / "node.err"
    )


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_node_producer_started_before_the_aggregator_loses_nothing(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path, topology: str
) -> None:
    """Events the Node producer sends before any aggregator queue exists are held (returned or refused by the
    broker, never counted as confirmed) and delivered exactly once when the aggregator starts."""
    assert_nothing_lost_before_the_aggregator(
        ["node", str(NODE / "testing" / "driver.js")], names, start_aggregator, "node-early", tmp_path / "node.err",
        topology,
    )  # fmt: skip


def test_node_producer_keeps_several_publishes_in_flight(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With one event per message, the Node producer has several messages awaiting confirms at once, and never
    more than maxInFlight; with a window of 1, one at a time."""
    aggregator = start_aggregator(names)
    command = ["node", str(NODE / "testing" / "driver.js")]
    assert assert_publishes_overlap(command, names, aggregator, "node-w1", tmp_path / "w1.err", window=1) == 1
    assert assert_publishes_overlap(command, names, aggregator, "node-w16", tmp_path / "w16.err", window=16) > 1
