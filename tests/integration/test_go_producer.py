"""The Go producer (producers/go, built offline from Debian packages) into a real aggregator, compared with Python."""

import json
import os
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
GO_PRODUCER = ROOT / "producers" / "go"


def _go(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`go` in producers/go with the module proxy off (all from Debian packages) and no C toolchain needed."""
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    return subprocess.run(
        ["go", *arguments], cwd=GO_PRODUCER, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def go_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install Go and the RabbitMQ client from Debian (a no-op once done) and build the commands offline."""
    installed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-go")], capture_output=True, text=True, timeout=600, check=False
    )
    assert installed.returncode == 0, installed.stderr
    out = tmp_path_factory.mktemp("go-bin")
    built = _go("build", "-o", f"{out}/", "./cmd/...")
    assert built.returncode == 0, built.stderr
    return out


def _emit_cli(go_bin: Path, names: Names, source: str, events: list[dict[str, Any]], *options: str) -> dict[str, Any]:
    """Run cmd/tickbus-emit on the events; its one-line JSON report."""
    result = subprocess.run(
        [str(go_bin / "tickbus-emit"), "-source", source, "-exchange", names.exchange, *options],
        input="\n".join(json.dumps(event) for event in events),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_go_vet_and_unit_tests_pass(go_bin: Path) -> None:
    """`go vet` is clean and the Go unit tests (no broker) pass, offline."""
    vetted = _go("vet", "./...")
    assert vetted.returncode == 0, vetted.stderr
    tested = _go("test", "-count=1", "-v", ".")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("--- PASS") >= 5
    assert "--- FAIL" not in tested.stdout


def test_go_desk_scenario_matches_the_python_emitter(
    go_bin: Path, names: Names, start_aggregator: StartAggregator
) -> None:
    """Batched and one-per-message, the Go producer's desk scenario gives exactly the Python emitter's samples."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    now = time.time()
    events = len(desk_raw(now))
    with Tap(names) as tap:
        send_python_reference(names, "py-ref", now)
        batched = _emit_cli(go_bin, names, "go-batched", desk_raw(now), "-heartbeat", "0")
        single = _emit_cli(go_bin, names, "go-single", desk_raw(now), "-heartbeat", "0", "-batch-size", "1")
        produced = assert_same_as_python(aggregator, "go-batched", "py-ref")
        assert assert_same_as_python(aggregator, "go-single", "py-ref") == produced
        messages = tap.messages()

    assert batched == {"accepted": events, "dropped": 0, "confirmed": events, "messages": 1, "drained": True}
    assert single == {"accepted": events, "dropped": 0, "confirmed": events, "messages": events, "drained": True}
    batch_messages = [message for message in messages if message.app_id == "go-batched"]
    assert [message.routing_key for message in batch_messages] == ["batch"]
    single_messages = [message for message in messages if message.app_id == "go-single"]
    assert [message.routing_key for message in single_messages] == [event["kind"] for event in desk_raw(now)]
    assert assert_producer_properties(single_messages, "go-single") == list(range(1, events + 1))
    assert assert_producer_properties(batch_messages, "go-batched") == [1]
    assert total(aggregator.scrape(), "tickbus_events_rejected_total") == 0


def test_go_drops_are_counted_and_reported_by_heartbeat(
    go_bin: Path, names: Names, start_aggregator: StartAggregator
) -> None:
    """Past its buffer the Go producer drops and counts; its final heartbeat brings the count to /metrics."""
    aggregator = start_aggregator(names)
    errors = [{"kind": "error", "component": "feed", "error_type": "gap"} for _ in range(1000)]
    report = _emit_cli(
        go_bin, names, "go-drops", errors, "-max-buffer", "10", "-batch-size", "10", "-heartbeat", "60s",
        "-version", "2.0.0",
    )  # fmt: skip
    dropped: int = report["dropped"]
    assert report["accepted"] + dropped == 1000
    assert report["dropped"] > 0
    assert report["confirmed"] == report["accepted"]

    def reported() -> bool:
        samples = aggregator.scrape()
        return value(samples, "trading_producer_dropped_events_total", source="go-drops") == dropped

    wait_for(reported, timeout=20, what="the drop count from the heartbeat")
    samples = aggregator.scrape()
    assert total(samples, "trading_errors_total", source="go-drops") == report["accepted"]
    assert value(samples, "trading_source_info", source="go-drops", version="2.0.0") == 1
    assert (value(samples, "trading_process_resident_memory_bytes", source="go-drops") or 0) > 100_000
    assert (value(samples, "trading_process_cpu_seconds_total", source="go-drops") or 0) > 0


def test_go_producer_rides_out_a_broker_outage(
    go_bin: Path, names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With the broker away, Emit still returns at once; events wait, are retried, and arrive exactly once."""
    aggregator = start_aggregator(names)
    assert_rides_out_an_outage([str(go_bin / "tickbus-driver")], names, aggregator, "go-outage", tmp_path / "go.err")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_go_producer_started_before_the_aggregator_loses_nothing(
    go_bin: Path, names: Names, start_aggregator: StartAggregator, tmp_path: Path, topology: str
) -> None:
    """Events the Go producer sends before any aggregator queue exists are held (returned or refused by the
    broker, never counted as confirmed) and delivered exactly once when the aggregator starts."""
    assert_nothing_lost_before_the_aggregator(
        [str(go_bin / "tickbus-driver")], names, start_aggregator, "go-early", tmp_path / "go.err", topology
    )


def test_go_producer_keeps_several_publishes_in_flight(
    go_bin: Path, names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With one event per message, the Go producer has several messages awaiting confirms at once, and never
    more than MaxInFlight; with a window of 1, one at a time."""
    aggregator = start_aggregator(names)
    command = [str(go_bin / "tickbus-driver")]
    assert assert_publishes_overlap(command, names, aggregator, "go-w1", tmp_path / "w1.err", window=1) == 1
    assert assert_publishes_overlap(command, names, aggregator, "go-w16", tmp_path / "w16.err", window=16) > 1
