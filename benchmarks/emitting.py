"""The Python emitter: its CPU per event against prometheus_client's labels().inc(), and its highest drop-free rate."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from benchmarks.live import Names, declare_aggregator_queue, declared, purge
from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error

SYMBOLS = [f"SYM{index}" for index in range(50)]
FLUSH_TIMEOUT = 30.0
# A rate passes if the loop emitted at least this share of it, or needed less than the trial's time to emit it all.
REACHED = 0.97


@dataclass
class CpuPerEvent:
    """CPU nanoseconds per event of prometheus_client's labels().inc() and of the emitter.

    For the emitter: emit() in the caller's thread (of a built event, and building it too), and the emitting process
    as a whole (building, emit(), and the publisher thread encoding and publishing with confirms).
    """

    inc_ns: float
    emit_ns: float
    build_and_emit_ns: float
    process_ns: float


@dataclass
class Trial:
    rate: float
    reached: float
    dropped: int
    confirmed: bool
    # Seconds the loop spent building and emitting, its waits for the next events to fall due left out.
    busy: float = 0.0
    seconds: float = 0.0

    @property
    def kept_up(self) -> bool:
        """The loop reached the rate, or could have.

        A process descheduled while it waited (a busy machine) emits late but not too slowly, whereas a loop that
        cannot keep up is busy for longer than the trial.
        """
        return self.reached >= REACHED * self.rate or self.busy <= self.seconds

    @property
    def passed(self) -> bool:
        return self.dropped == 0 and self.confirmed and self.kept_up


@dataclass
class DropFree:
    """The highest rate one process emitted for `seconds` with nothing dropped and everything confirmed."""

    rate: float
    seconds: float
    max_buffer: int
    trials: list[Trial] = field(default_factory=list)


def error_event(index: int, now: float) -> Error:
    return Error(ts=now, source="bench", component="feed", error_type="gap", symbol=SYMBOLS[index % 50])


def cpu_per_event(url: str, count: int) -> CpuPerEvent:
    """Each measured in process CPU time (this process runs nothing else meanwhile), thread CPU time for emit()."""
    registry = CollectorRegistry()
    counter = Counter("bench_errors", "h", ["source", "component", "error_type", "severity", "symbol"],
                      registry=registry)  # fmt: skip
    started = time.process_time()
    for index in range(count):
        counter.labels("bench", "feed", "gap", "error", SYMBOLS[index % 50]).inc()
    inc = (time.process_time() - started) / count
    now = time.time()
    prebuilt = [error_event(index, now) for index in range(count)]
    names = Names.fresh("emit")
    with declared(url, names):
        # Producers publish mandatory and never declare: the exchange and a bound queue must exist.
        declare_aggregator_queue(url, names)
        with Emitter(
            EmitterSettings(source="bench", url=url, exchange=names.exchange, max_buffer=count * 2)
        ) as emitter:
            emit = emitter.emit
            started = time.thread_time()
            for event in prebuilt:
                emit(event)
            emit_only = (time.thread_time() - started) / count
            emitter.flush(FLUSH_TIMEOUT)
            process_started = time.process_time()
            started = time.thread_time()
            for index in range(count):
                emit(Error(ts=now, source="bench", component="feed", error_type="gap", symbol=SYMBOLS[index % 50]))
            build_and_emit = (time.thread_time() - started) / count
            emitter.flush(FLUSH_TIMEOUT)
            whole = (time.process_time() - process_started) / count
    return CpuPerEvent(inc * 1e9, emit_only * 1e9, build_and_emit * 1e9, whole * 1e9)


def emit_at(emitter: Emitter, rate: float, seconds: float) -> Trial:
    """Build and emit events at `rate` for `seconds`, in steps of what is due by now; then flush."""
    emit, dropped_before, now, emitted, waited = emitter.emit, emitter.dropped, time.time(), 0, 0.0
    started = time.perf_counter()
    total = int(rate * seconds)
    while emitted < total:
        due = min(total, int(rate * (time.perf_counter() - started)))
        if emitted >= due:
            before = time.perf_counter()
            time.sleep(0.0005)
            waited += time.perf_counter() - before
            continue
        for index in range(emitted, min(due, emitted + 5000)):
            emit(Error(ts=now, source="bench", component="feed", error_type="gap", symbol=SYMBOLS[index % 50]))
        emitted = min(due, emitted + 5000)
    # Over the time the events took, not the nominal `seconds`: a pause of the process near the end (a busy
    # machine) is caught up, while a loop that cannot keep up takes longer and reaches less.
    elapsed = time.perf_counter() - started
    reached = emitted / max(seconds, elapsed)
    confirmed = emitter.flush(FLUSH_TIMEOUT)
    return Trial(rate, reached, emitter.dropped - dropped_before, confirmed, elapsed - waited, seconds)


def highest_drop_free_rate(url: str, seconds: float, start: float = 25_000.0, steps: int = 3,
                           max_buffer: int = 100_000, up_to: float = float("inf"),
                           progress: Callable[[str], None] = print) -> DropFree:  # fmt: skip
    """Double the rate until a trial drops or cannot keep up, then bisect `steps` times between pass and failure.

    The emitter has its default settings and a `max_buffer` outbox; a queue holds what it sends (purged between
    trials), with no consumer competing for the CPU. The search stops at `up_to` if every rate up to it passes.
    """
    names = Names.fresh("emitrate")
    result = DropFree(0.0, seconds, max_buffer)
    with declared(url, names):
        declare_aggregator_queue(url, names)
        settings = EmitterSettings(source="bench", url=url, exchange=names.exchange, max_buffer=max_buffer)
        with Emitter(settings) as emitter:

            def trial(rate: float) -> bool:
                outcome = emit_at(emitter, rate, seconds)
                result.trials.append(outcome)
                purge(url, names.queue)
                progress(f"emitter at {rate:,.0f} events/s: {'passed' if outcome.passed else 'failed'} "
                         f"(reached {outcome.reached:,.0f}/s, dropped {outcome.dropped})")  # fmt: skip
                return outcome.passed

            passed, failed = 0.0, start
            while trial(failed):
                passed, failed = failed, failed * 2
                if failed > up_to:
                    result.rate = passed
                    return result
            for _ in range(steps):
                middle = (passed + failed) / 2
                if trial(middle):
                    passed = middle
                else:
                    failed = middle
            result.rate = passed
    return result
