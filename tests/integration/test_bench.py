"""The bench's measurements at tiny sizes against the real broker, the real aggregator and collectd.

What is checked is the shape and the bookkeeping (every event counted, every queue deleted, nothing left running),
never a speed: a benchmark is not a test.
"""

import asyncio
import math
from pathlib import Path

import aio_pika
import pytest

from benchmarks import collectd, emitting, live, scale
from benchmarks.harness import counter_bodies, mixed_events
from benchmarks.ingest import drain_aggregator, drain_ceiling
from producers.emitter import Emitter, EmitterSettings
from schemas.wire import Codec
from tests.support.process import AMQP_URL


@pytest.fixture
def declared_names(monkeypatch: pytest.MonkeyPatch) -> list[live.Names]:
    """Every exchange and queue pair a measurement makes, to check afterwards that it deleted them."""
    made: list[live.Names] = []
    fresh = live.Names.fresh

    def recording(what: str = "bench") -> live.Names:
        made.append(fresh(what))
        return made[-1]

    monkeypatch.setattr(live.Names, "fresh", staticmethod(recording))
    return made


def _gone(names: list[live.Names]) -> list[str]:
    """The queues and exchanges of `names` (dead-letter pairs included) that still exist on the broker."""

    async def check() -> list[str]:
        left = []
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for pair in names:
                for queue in (pair.queue, f"{pair.queue}.dead"):
                    channel = await connection.channel()
                    try:
                        await channel.declare_queue(queue, passive=True)
                        left.append(queue)
                    except aio_pika.exceptions.ChannelClosed:
                        pass
                for exchange in (pair.exchange, f"{pair.exchange}.dead"):
                    channel = await connection.channel()
                    try:
                        await channel.declare_exchange(exchange, passive=True)
                        left.append(exchange)
                    except aio_pika.exceptions.ChannelClosed:
                        pass
        return left

    return asyncio.run(check())


def test_the_aggregator_and_the_ceiling_drain_the_same_bodies_and_leave_nothing_declared(
    tmp_path: Path, declared_names: list[live.Names]
) -> None:
    """Three 1,000-event messages: the aggregator (checkpoints on) applies all 3,000 events and the plain consumer
    acks all three messages; both report a time and the aggregator its CPU; their queues are deleted after."""
    bodies = [
        Codec("application/msgpack").encode(mixed_events(3000)[start : start + 1000]) for start in (0, 1000, 2000)
    ]
    ours = drain_aggregator(AMQP_URL, bodies, "batch", 3000, tmp_path)
    ceiling = drain_ceiling(AMQP_URL, bodies, "batch", 3000)
    assert (ours.events, ceiling.events) == (3000, 3000)
    assert ours.seconds > 0
    assert ceiling.seconds > 0
    assert ours.cpu_seconds >= 0
    assert len(declared_names) == 2
    assert _gone(declared_names) == []


def test_collectd_counts_every_putval_report_with_no_error_and_is_not_left_running(
    tmp_path: Path, declared_names: list[live.Names]
) -> None:
    """5,000 counter reports in five messages over three series: collectd (Debian's, from scripts/install-collectd)
    shows their sum on write_prometheus, logs no refused value, and its process and queue are gone after."""
    drain, errors = collectd.drain_collectd(AMQP_URL, collectd.bodies(5000, 1000, 3), "batch", 5000, tmp_path)
    assert drain.events == 5000
    assert drain.cpu_seconds >= 0
    assert errors == 0
    assert _gone(declared_names) == []
    assert not any(path.name.startswith("collectd-") for path in tmp_path.iterdir())
    ours = drain_aggregator(AMQP_URL, counter_bodies(5000, 1000, 3), "batch", 5000, tmp_path)
    assert ours.events == 5000


def test_a_series_scale_row_counts_every_series_samples_healthz_and_restarts(
    tmp_path: Path, declared_names: list[live.Names]
) -> None:
    """2,000 events over 500 label sets make 1,000 series (the row's config lifts the per-metric limit as the 1M row
    needs); the row has a restart time, a peak RSS, a scrape and the commits' figures."""
    row = scale.measure(AMQP_URL, 500, 2000, tmp_path)
    assert (row.label_sets, row.events, row.series) == (500, 2000, 1000.0)
    assert row.events_per_second > 0
    assert row.peak_rss_mb > 10
    assert row.scrape_mb > 0
    assert row.state_mb > 0
    assert 0 < row.restart_seconds < math.inf
    assert 0 < row.restart_rss_mb < row.peak_rss_mb * 2
    assert row.healthz_samples == 0 or row.healthz_p99_ms <= row.healthz_max_ms
    assert _gone(declared_names) == []


def test_the_emitter_measurements_confirm_everything_they_emit(declared_names: list[live.Names]) -> None:
    """CPU per event is measured for all four sides; a low rate passes with nothing dropped; the search stops at its
    bound when every rate up to it passes."""
    cpu = emitting.cpu_per_event(AMQP_URL, 2000)
    assert min(cpu.inc_ns, cpu.emit_ns, cpu.build_and_emit_ns, cpu.process_ns) > 0
    found = emitting.highest_drop_free_rate(AMQP_URL, 0.1, start=1000, steps=1, up_to=4000, progress=lambda _: None)
    assert [trial.rate for trial in found.trials] == [1000, 2000, 4000]
    assert all(trial.passed and trial.dropped == 0 for trial in found.trials)
    assert found.rate == 4000
    assert _gone(declared_names) == []


def test_a_rate_the_buffer_cannot_hold_fails_the_trial(declared_names: list[live.Names]) -> None:
    """With a 10-event buffer, 200,000 events/s overflows before the publisher drains it: drops are counted and the
    trial does not pass, so the search cannot report a rate that lost events."""
    names = live.Names.fresh("emitfail")
    with live.declared(AMQP_URL, names):
        live.declare_aggregator_queue(AMQP_URL, names)
        settings = EmitterSettings(source="bench", url=AMQP_URL, exchange=names.exchange, max_buffer=10)
        with Emitter(settings) as emitter:
            trial = emitting.emit_at(emitter, 200_000, 0.2)
    assert trial.dropped > 0
    assert not trial.passed
    assert _gone(declared_names) == []
