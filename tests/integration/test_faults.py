"""Nothing lost, nothing counted twice: crashes, broker restarts, poison, SIGTERM and corrupt checkpoints."""

import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.stateformat import encode_record, read_records
from producers.emitter import Emitter, EmitterSettings
from schemas.events import Signal
from tests.support.broker import RawMessage, drain, publish_raw
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.rabbitnodes import PrivateNode
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]
STRATEGIES = ("alpha", "beta", "gamma", "delta")


def _stream(
    names: Names, source: str, count: int, seconds: float, batch_size: int = 100, url: str = AMQP_URL
) -> threading.Thread:
    """Emit `count` signals evenly over about `seconds`, cycling through four strategies, in a thread."""

    def run() -> None:
        settings = EmitterSettings(
            source=source, url=url, exchange=names.exchange, batch_size=batch_size, max_buffer=count
        )
        with Emitter(settings) as emitter:
            chunk = max(1, int(count / (seconds / 0.01)))
            sent = 0
            while sent < count:
                now = time.time()
                for index in range(sent, min(count, sent + chunk)):
                    strategy = STRATEGIES[index % len(STRATEGIES)]
                    assert emitter.emit(Signal(ts=now, source=source, strategy=strategy, symbol="BTCUSDT", side="buy"))
                sent += chunk
                time.sleep(0.01)
            assert emitter.flush(120)
            assert emitter.dropped == 0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _assert_exact(aggregator: AggregatorProcess, source: str, count: int, timeout: float = 60) -> None:
    per_strategy = count // len(STRATEGIES)

    def done() -> bool:
        return total(aggregator.scrape(), "trading_signals_total", source=source) >= count

    wait_for(done, timeout=timeout, what=f"{count} signals")
    time.sleep(0.5)
    samples = aggregator.scrape()
    for strategy in STRATEGIES:
        assert total(samples, "trading_signals_total", source=source, strategy=strategy) == per_strategy, strategy


def _state_args(tmp_path: Path) -> list[str]:
    return ["--state-dir", str(tmp_path / "state")]


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """200,000 events stream in while the aggregator is killed -9 three times; every counter ends exact."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    count = 200_000
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path))
    producer = _stream(names, "crashy", count, seconds=8)
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 2.5))
        assert aggregator.stop(signal.SIGKILL) == -signal.SIGKILL, f"seed {seed}"
        aggregator.start()
    producer.join(120)
    assert not producer.is_alive()
    _assert_exact(aggregator, "crashy", count)
    samples = aggregator.scrape()
    assert value(samples, "tickbus_checkpoint_failures_total") == 0


def test_broker_restart_mid_stream_reconnects_everything_and_counts_exactly(
    module_private_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """rabbitmqctl stop_app / start_app (on a private node) while events flow: producer and aggregator
    reconnect, totals exact."""
    count = 40_000
    names = Names.unique()
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path), amqp_url=module_private_node.url)
    producer = _stream(names, "bounced", count, seconds=6, url=module_private_node.url)
    time.sleep(1.5)
    module_private_node.rabbitmqctl("stop_app")
    try:
        wait_for(lambda: not aggregator.ready(), timeout=15, what="readiness to drop")
        time.sleep(2)
    finally:
        module_private_node.rabbitmqctl("start_app")
        module_private_node.rabbitmqctl("await_startup")
    wait_for(aggregator.ready, timeout=60, what="the aggregator to reconnect")
    producer.join(120)
    assert not producer.is_alive()
    _assert_exact(aggregator, "bounced", count)


def test_poison_in_a_stream_is_dead_lettered_and_never_stalls_the_queue(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """On a quorum queue, 200 bad messages among 20,000 good events: all dead-lettered, all good ones counted once."""
    config = tmp_path / "quorum.toml"
    config.write_text('[amqp]\nqueue_type = "quorum"\ndelivery_limit = 3\n')
    aggregator = start_aggregator(names, config=config, extra_args=_state_args(tmp_path))
    producer = _stream(names, "mixed", 20_000, seconds=3)
    poison = [b"\x00\xff garbage", b'{"kind": "signal"}', b'{"kind": "ufo", "ts": 1, "source": "x"}', b"[]"]
    for round_number in range(50):
        publish_raw(
            names.exchange,
            [RawMessage(body, "signal", message_id=f"p{round_number}-{i}") for i, body in enumerate(poison)],
        )
        time.sleep(0.04)
    producer.join(120)
    _assert_exact(aggregator, "mixed", 20_000)
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 200, what="200 rejections")
    dead = drain(names.dead_letter_queue)
    assert len(dead) == 200
    assert {str(message.headers["x-tickbus-reason"]) for message in dead} == {
        "malformed", "invalid_event", "unknown_kind", "invalid_batch",
    }  # fmt: skip


def test_sigterm_mid_stream_checkpoints_and_needs_no_redelivery(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """SIGTERM while events flow: exit 0, a final checkpoint, nothing applied twice after restart, totals exact."""
    count = 60_000
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path))
    producer = _stream(names, "graceful", count, seconds=4)
    time.sleep(1.5)
    assert aggregator.stop(signal.SIGTERM) == 0
    assert "stopped: applied state committed and acked" in aggregator.log()
    aggregator.start()
    producer.join(120)
    _assert_exact(aggregator, "graceful", count)
    assert value(aggregator.scrape(), "tickbus_duplicate_messages_total") == 0


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _journal_signals(state: Path) -> list[float]:
    """The signal total after each journal record of the state directory, in order."""
    totals: dict[tuple[str, ...], float] = {}
    after_each = []
    for segment in sorted(state.glob("journal.*")):
        records, stopped = read_records(segment.read_bytes())
        assert stopped == ""
        for record in records:
            _, rows = record.families().get("trading_signals_total", ("counter", []))
            totals.update((tuple(key), row[0] if isinstance(row, list) else row) for key, row in rows)
            after_each.append(sum(totals.values()))
    return after_each


def test_a_damaged_journal_record_is_reported_and_the_counts_before_it_kept(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """A journal record damaged on disk: a clear error in the log and the counts of the records before it, not zero."""
    state = tmp_path / "state"
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path))
    _stream(names, "ckpt", 2_000, seconds=1).join(60)
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total") == 2_000, what="2000 signals")
    assert aggregator.stop(signal.SIGTERM) == 0
    totals = _journal_signals(state)
    assert totals[-1] == 2_000
    assert len(totals) >= 3
    # Damage the middle of the journal: flip a byte inside the second-to-last record.
    segment = max(state.glob("journal.*"))
    data = segment.read_bytes()
    records, _ = read_records(data)
    last_two = sum(len(encode_record(record)) for record in records[-2:])
    damaged = bytearray(data)
    damaged[len(data) - last_two + 30] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    before = _journal_totals_before_last_two(totals, len(records))
    aggregator.start()
    assert total(aggregator.scrape(), "trading_signals_total", source="ckpt") == before
    log = aggregator.log()
    assert "is damaged (a record with a bad checksum" in log
    assert "counts of the records after that point, already acknowledged, are missing" in log


def _journal_totals_before_last_two(totals: list[float], records_in_last_segment: int) -> float:
    """The total after the last record that comes before the last segment's last two records."""
    index = len(totals) - 3
    assert records_in_last_segment >= 2
    return totals[index] if index >= 0 else 0.0


def test_no_readable_checkpoint_refuses_to_start_at_zero(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """If every checkpoint is damaged the aggregator exits with an error instead of silently counting from zero."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "base").write_bytes(b"TBCK garbage")
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path), wait_ready=False)
    assert aggregator.process is not None
    assert aggregator.process.wait(30) == 1
    assert "no readable checkpoint" in aggregator.log()
    assert "move the files aside" in aggregator.log()


def test_a_mistyped_namespace_is_refused_at_start_and_the_counts_are_kept(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """200 signals counted under `trading`; the operator restarts with `catalog.namespace = "tradng"`. The
    aggregator must exit 1 with one line naming the setting (not serve empty series and erase the state at the
    next compaction), and once the namespace is put back the 200 are there."""
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path))
    _stream(names, "namespace", 200, seconds=0.5).join(60)
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total") == 200, what="200 signals")
    assert aggregator.stop(signal.SIGTERM) == 0
    typo = tmp_path / "typo.toml"
    typo.write_text('[catalog]\nnamespace = "tradng"\n')
    refused = start_aggregator(names, config=typo, extra_args=_state_args(tmp_path), wait_ready=False)
    assert refused.process is not None
    assert refused.process.wait(30) == 1
    log = refused.log()
    assert "none of them is defined now" in log, log
    assert "catalog.namespace" in log
    assert "Traceback" not in log
    aggregator.start()
    assert total(aggregator.scrape(), "trading_signals_total", source="namespace") == 200


@pytest.mark.parametrize("queue_type", ["quorum"])
def test_an_existing_queue_with_other_arguments_is_a_clear_error(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path, queue_type: str
) -> None:
    """A classic queue already declared under the name: starting as quorum says which queue and how to fix it."""
    start_aggregator(names).stop()
    config = tmp_path / "other.toml"
    config.write_text(f'[amqp]\nqueue_type = "{queue_type}"\n')
    aggregator = start_aggregator(names, config=config, wait_ready=False)
    assert aggregator.process is not None
    assert aggregator.process.wait(30) == 1
    log = aggregator.log()
    assert f"queue {names.queue!r} already exists on the broker with different settings" in log
    assert "x-queue-type" in log
    assert "Traceback" not in log


def test_producer_buffers_while_the_broker_is_away_and_reports_its_drops_exactly(
    module_private_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With the broker (a private node's application) stopped, emit() never blocks; what fits waits and is
    delivered, the rest is counted as dropped and that exact count reaches /metrics through heartbeats."""
    names = Names.unique()
    aggregator = start_aggregator(names, extra_args=_state_args(tmp_path), amqp_url=module_private_node.url)
    settings = EmitterSettings(source="patient", url=module_private_node.url, exchange=names.exchange, max_buffer=500,
                               batch_size=100, heartbeat_interval=0.5)  # fmt: skip
    emitter = Emitter(settings)
    assert emitter.flush(10)
    module_private_node.rabbitmqctl("stop_app")
    try:
        started = time.perf_counter()
        accepted = sum(
            emitter.emit(Signal(ts=time.time(), source="patient", strategy="s", symbol="X", side="buy"))
            for _ in range(2_000)
        )
        assert time.perf_counter() - started < 1.0  # never blocked on the absent broker
    finally:
        module_private_node.rabbitmqctl("start_app")
        module_private_node.rabbitmqctl("await_startup")
    assert emitter.dropped == 2_000 - accepted
    assert 0 < emitter.dropped < 2_000
    assert emitter.close(60)
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total", source="patient") == accepted,
             timeout=60, what=f"{accepted} delivered signals")  # fmt: skip
    wait_for(lambda: value(aggregator.scrape(), "trading_producer_dropped_events_total", source="patient")
             == emitter.dropped, timeout=30, what="the drop count")  # fmt: skip
