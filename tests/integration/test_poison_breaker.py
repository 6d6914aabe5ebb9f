"""The poison breaker sets aside a message the aggregator died on twice, never a good one hit by unrelated kills."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.blackbox import FILE_NAME
from benchmarks.live import events_total
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
MESSAGES = 60
EVENTS = 3_000
# The crash-loop test's messages: large enough that a message stays in process for several milliseconds on a fast
# machine, so that polling the black box sees it there even while the test's process is descheduled for a while.
LOOP_EVENTS = 10_000
LOOP_MESSAGES = 40
# The black box's processing flag: after its magic, version and failure count (aggregator/blackbox.py).
FLAG_AT = 14


def _flag(state: Path) -> int:
    return (state / FILE_NAME).read_bytes()[FLAG_AT]


def _settled(aggregator: AggregatorProcess) -> float:
    """Messages applied (their first event counted) or set aside as poison."""
    samples = aggregator.scrape()
    applied = total(samples, "trading_errors_total", source="cron", symbol="S0")
    return applied + total(samples, "tickbus_events_rejected_total", reason="poison")


def _publish_without_id(names: Names, body: bytes) -> None:
    """As a hand-written producer does: amqp-publish sets no message_id (aio-pika and aiormq always set one)."""
    subprocess.run(
        ["amqp-publish", "--url=amqp://guest:guest@127.0.0.1:5672", "-e", names.exchange, "-r", "batch",
         "-C", "application/json", "-p"],
        input=body, check=True, timeout=30,
    )  # fmt: skip


def test_two_kills_on_two_identical_messages_without_ids_set_no_good_message_aside(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """60 identical messages without ids (a cron job sending the same batch with a whole-second ts), each good.
    The aggregator is killed -9 twice while processing, each time after some copies were processed through (so a
    different message, the same body). The body did not kill it: no message may be dead-lettered as poison, and
    every event counts (at least once, as for every message without an id)."""
    state = tmp_path / "state"
    args = ["--state-dir", str(state)]
    start_aggregator(names, extra_args=args).stop()  # declares the topology
    ts = int(time.time())
    events = [
        {"kind": "error", "ts": ts, "source": "cron", "component": "c", "error_type": "t", "symbol": f"S{index}"}
        for index in range(EVENTS)
    ]
    body = json.dumps(events).encode()
    for _ in range(MESSAGES):
        _publish_without_id(names, body)
    deaths = 0
    for _ in range(20):
        aggregator = start_aggregator(names, extra_args=args, wait_ready=False)
        # The new process first clears the flag the last kill left, then sets it for each message it processes.
        wait_for(lambda: _flag(state) == 0, interval=0.001, what="the black box opened")
        wait_for(lambda: _flag(state) == 1, interval=0.001, what="a message in process")
        # Some copies are processed through first (each takes a few milliseconds), so the kill lands on a later
        # copy: two deaths on one message, with nothing processed in between, are what poison looks like.
        time.sleep(0.05)
        wait_for(lambda: _flag(state) == 1, interval=0.001, what="a later message in process")
        aggregator.stop(signal.SIGKILL)
        deaths += _flag(state) == 1
        if deaths == 2:
            break
    assert deaths == 2
    aggregator = start_aggregator(names, extra_args=args)
    wait_for(lambda: _settled(aggregator) >= MESSAGES, timeout=60, what="every message applied or set aside")
    time.sleep(1.0)
    samples = aggregator.scrape()
    assert total(samples, "tickbus_events_rejected_total", reason="poison") == 0, aggregator.log()[-3000:]
    assert total(samples, "trading_errors_total", source="cron") >= MESSAGES * EVENTS


def _current(state: Path) -> bytes:
    """The fingerprint of the message in process (or the last one processed)."""
    return (state / FILE_NAME).read_bytes()[FLAG_AT + 1 : FLAG_AT + 17]


@pytest.mark.volume
def test_a_message_processed_cleanly_after_a_death_is_no_longer_a_suspect(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """A crash loop that never lets a commit finish (commits every 60 s here; a slow disk or a liveness probe
    killing the process does the same): run 1 is killed while message M is in process; run 2 processes M cleanly
    and is killed while processing a later message; run 3 is killed while M is in process again. M survived run 2,
    so docs/operations.md says it is cleared ('one that is processed cleanly afterwards is cleared'); it must not
    be dead-lettered as poison with 'died 2 times' in run 4."""
    config = tmp_path / "slow-commits.toml"
    config.write_text("[catalog]\nmax_series_per_metric = 500000\n\n[state]\ncheckpoint_interval_seconds = 60\n")
    state = tmp_path / "state"
    args = ["--state-dir", str(state)]
    start_aggregator(names, config=config, extra_args=args).stop()
    for number in range(LOOP_MESSAGES):
        events = [
            {"kind": "error", "ts": time.time(), "source": "loop", "component": "c", "error_type": "t",
             "symbol": f"S{number}-{index}"}
            for index in range(LOOP_EVENTS)
        ]  # fmt: skip
        body = json.dumps(events).encode()
        subprocess.run(
            ["amqp-publish", "--url=amqp://guest:guest@127.0.0.1:5672", "-e", names.exchange, "-r", "batch",
             "-C", "application/json", "-p", "--header", f"x-tickbus-message-id: loop-{number}"],
            input=body, check=True, timeout=30,
        )  # fmt: skip

    def run_until(condition: Callable[[], bool], what: str) -> None:
        aggregator = start_aggregator(names, config=config, extra_args=args, wait_ready=False)
        wait_for(lambda: _flag(state) == 0, interval=0.001, what="the black box opened")
        wait_for(condition, interval=0.0005, timeout=60, what=what)
        aggregator.stop(signal.SIGKILL)

    suspect: list[bytes] = []

    def first_in_process() -> bool:
        if _flag(state) == 1:
            suspect.append(_current(state))
            return True
        return False

    run_until(first_in_process, "a message in process")
    seen = []

    def after_the_suspect() -> bool:
        current, flag = _current(state), _flag(state)
        if current == suspect[0]:
            seen.append(True)
        return bool(seen) and flag == 1 and current != suspect[0]

    run_until(after_the_suspect, "the suspect processed, then another message in process")
    run_until(lambda: _flag(state) == 1 and _current(state) == suspect[0], "the suspect in process again")
    aggregator = start_aggregator(names, config=config, extra_args=args)
    wait_for(lambda: "died" in aggregator.log().split("consuming queue")[-1] or
             events_total(aggregator.port) >= LOOP_MESSAGES * LOOP_EVENTS,
             timeout=60, what="the backlog")  # fmt: skip
    time.sleep(1.0)
    samples = aggregator.scrape()
    assert total(samples, "tickbus_events_rejected_total", reason="poison") == 0, aggregator.log()[-3000:]
