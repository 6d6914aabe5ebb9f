"""A standby replica takes over when the active one is killed: state from the broker's stream, counts exact."""

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]
EVENTS = 200_000
FAILOVER_CONFIG = """
[amqp]
queue_type = "quorum"
single_active_consumer = true

[state]
stream = true
"""


def _received(aggregator: AggregatorProcess) -> float:
    try:
        return value(aggregator.scrape(), "tickbus_messages_received_total") or 0.0
    except OSError:
        return 0.0


def _stream(names: Names, done: threading.Event) -> threading.Thread:
    def produce() -> None:
        settings = EmitterSettings(source="failover", url=AMQP_URL, exchange=names.exchange, batch_size=200)
        with Emitter(settings) as emitter:
            for index in range(EVENTS):
                while not emitter.emit(
                    Error(ts=time.time(), source="failover", component="c", error_type=f"t{index % 7}")
                ):
                    time.sleep(0.01)
                if index % 2_000 == 0:
                    time.sleep(0.2)  # about 20 s for the whole stream: room for three failovers
            assert emitter.flush(120)
        done.set()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    return thread


@pytest.mark.volume
def test_a_standby_takes_over_three_kill_9s_of_the_active_replica_with_exact_counts(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Two replicas on one queue (single active consumer), checkpoints in the broker's stream: the active one is
    killed three times mid-stream, the standby takes over each time, and the final count is exact."""
    config = tmp_path / "failover.toml"
    config.write_text(FAILOVER_CONFIG)
    replicas = [start_aggregator(names, config=config) for _ in range(2)]
    done = threading.Event()
    producer = _stream(names, done)
    wait_for(lambda: any(_received(replica) > 0 for replica in replicas), what="one replica to consume")
    takeovers: list[float] = []
    for _ in range(3):
        time.sleep(2.5)
        active = max(replicas, key=_received)
        standby = next(replica for replica in replicas if replica is not active)
        before = _received(standby)
        killed_at = time.monotonic()
        active.stop(signal.SIGKILL)
        wait_for(lambda: _received(standby) > before, timeout=60, what="the standby to take over")  # noqa: B023
        takeovers.append(time.monotonic() - killed_at)
        active.start()  # back as the standby
    producer.join(180)
    assert done.is_set()
    active = max(replicas, key=_received)
    wait_for(lambda: total(active.scrape(), "trading_errors_total", source="failover") >= EVENTS, timeout=120,
             what="every event")  # fmt: skip
    time.sleep(1.0)
    assert total(active.scrape(), "trading_errors_total", source="failover") == EVENTS
    assert "took over: loaded" in active.log()
    print(f"takeover times after kill -9 (s): {[round(seconds, 2) for seconds in takeovers]}")
    assert len(takeovers) == 3
