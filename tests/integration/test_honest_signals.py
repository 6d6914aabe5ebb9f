"""What the aggregator says about itself when it cannot make progress, and SIGHUP reloading its config."""

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _errors(count: int, source: str = "disk") -> list[RawMessage]:
    stamp = time.time()
    return [
        RawMessage(
            json.dumps({"kind": "error", "ts": stamp, "source": source, "component": "c", "error_type": "t"}).encode(),
            "error",
            message_id=f"{source}-{stamp}-{index}",
        )
        for index in range(count)
    ]


def _readyz(aggregator: AggregatorProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{aggregator.url}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test: a state directory that can be filled up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    return filler


def test_a_full_state_disk_is_reported_truthfully_and_loses_nothing(
    names: Names, start_aggregator: StartAggregator, small_disk: Path
) -> None:
    """/readyz says why while the disk is full, SIGTERM logs what was not committed and exits 1, the next run
    counts everything once, and the checkpoint failure counter does not go backwards across the restart."""
    state = small_disk / "state"
    aggregator = start_aggregator(names, extra_args=["--state-dir", str(state)])
    publish_raw(names.exchange, _errors(50))
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 50, what="the first 50 events")
    filler = _fill(small_disk)
    publish_raw(names.exchange, _errors(70))
    wait_for(lambda: _readyz(aggregator)[0] == 503, what="/readyz to say not ready")
    status, body = _readyz(aggregator)
    assert "cannot commit" in body
    assert "No space left on device" in body
    wait_for(lambda: value(aggregator.scrape(), "tickbus_checkpoint_failing") == 1, what="the failing gauge")
    failures = value(aggregator.scrape(), "tickbus_checkpoint_failures_total")
    assert failures is not None
    assert failures >= 1
    assert total(aggregator.scrape(), "trading_errors_total") == 120

    assert aggregator.stop() == 1
    log = aggregator.log()
    assert "stopped without committing" in log
    assert "No space left on device" in log
    assert "stopped: applied state committed and acked" not in log

    filler.unlink()
    restarted = start_aggregator(names, extra_args=["--state-dir", str(state)])
    wait_for(lambda: total(restarted.scrape(), "trading_errors_total") == 120, what="the redelivered 70")
    time.sleep(1.0)
    samples = restarted.scrape()
    assert total(samples, "trading_errors_total") == 120
    kept = value(samples, "tickbus_checkpoint_failures_total")
    assert kept is not None
    assert kept >= failures
    assert value(samples, "tickbus_checkpoint_failing") == 0
    status, body = _readyz(restarted)
    assert status == 200
    assert restarted.stop() == 0
    assert "stopped: applied state committed and acked" in restarted.log()


def test_a_read_only_state_directory_is_refused_at_start_not_at_the_first_commit(
    names: Names, start_aggregator: StartAggregator, small_disk: Path
) -> None:
    """The state's file system is mounted read-only (a remount after an I/O error does this): the aggregator
    must exit 1 at start naming the directory, not report ready and then never ack. The messages stay queued
    and are counted once the file system is writable again."""
    state = small_disk / "state"
    aggregator = start_aggregator(names, extra_args=["--state-dir", str(state)])
    publish_raw(names.exchange, _errors(10))
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 10, what="10 events")
    assert aggregator.stop() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    publish_raw(names.exchange, _errors(5))
    refused = start_aggregator(names, extra_args=["--state-dir", str(state)], wait_ready=False)
    assert refused.process is not None
    assert refused.process.wait(30) == 1
    log = refused.log()
    assert f"state directory {state} is unusable" in log, log
    assert "Read-only file system" in log
    assert "Traceback" not in log
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    aggregator.start()
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total") == 15, what="the 5 that waited")


def test_sighup_reloads_custom_metrics_and_limits_and_refuses_what_needs_a_restart(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """A metric declared after start is accepted after SIGHUP, a changed one starts over, a broken config
    is refused with its error, an amqp change is named as needing a restart, and the process lives on."""
    config = tmp_path / "reload.toml"
    config.write_text('[[metrics]]\nname = "queue_lag"\ntype = "gauge"\nhelp = "Lag."\nlabels = ["feed"]\n')
    aggregator = start_aggregator(names, config=config)

    def metric(name: str, **labels: str) -> RawMessage:
        event = {"kind": "metric", "ts": time.time(), "source": "hup", "name": name, "value": 2, "labels": labels}
        return RawMessage(json.dumps(event).encode(), "metric")

    publish_raw(names.exchange, [metric("queue_lag", feed="a"), metric("jobs_total", queue="q")])
    wait_for(
        lambda: total(aggregator.scrape(), "tickbus_events_rejected_total", reason="undeclared_metric") == 1,
        what="the undeclared metric to be refused",
    )
    config.write_text(
        "[catalog]\nmax_series_per_metric = 3\n"
        '[[metrics]]\nname = "queue_lag"\ntype = "gauge"\nhelp = "Lag."\nlabels = ["feed", "venue"]\n'
        '[[metrics]]\nname = "jobs_total"\ntype = "counter"\nhelp = "Jobs."\nlabels = ["queue"]\n'
    )
    assert aggregator.process is not None
    aggregator.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: custom metric jobs_total added" in aggregator.log(), what="the reload")
    log = aggregator.log()
    assert "reload: custom metric queue_lag changed (0 series kept, 1 dropped)" in log
    assert "reload: catalog.max_series_per_metric = 3" in log
    publish_raw(names.exchange, [metric("jobs_total", queue="q"), metric("queue_lag", feed="a", venue="v")])
    wait_for(lambda: total(aggregator.scrape(), "trading_jobs_total") == 2, what="the newly declared counter")
    assert total(aggregator.scrape(), "trading_queue_lag", feed="a", venue="v") == 2

    config.write_text('[amqp]\nprefetch = 10\n[[metrics]]\nname = "broken"\n')
    aggregator.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in aggregator.log(), what="the broken config to be refused")
    config.write_text(
        "[amqp]\nprefetch = 10\n"
        '[[metrics]]\nname = "jobs_total"\ntype = "counter"\nhelp = "Jobs."\nlabels = ["queue"]\n'
    )
    os.kill(aggregator.process.pid, signal.SIGHUP)
    wait_for(lambda: "amqp.prefetch changed, which takes a restart" in aggregator.log(), what="the restart note")
    assert "reload: custom metric queue_lag removed" in aggregator.log()
    assert aggregator.process.poll() is None
    assert aggregator.ready()
    assert aggregator.stop() == 0
