"""Profiles of the ingest hot path: cProfile of the pipeline and its commits in-process, or perf on a real drain.

`python -m benchmarks.profile cprofile --label-sets 1000000 --events 2000000` runs the service's pipeline on
1,000-event MessagePack bodies in this process, with a commit (capture, journal record, fsync) every 0.2 s of
ingest as the service makes them, and prints the functions that take the most time.
`python -m benchmarks.profile perf ...` drains the same bodies into the real aggregator (a subprocess, checkpoints
on) under `perf record` and prints the shared objects and symbols the process spends its CPU in.
"""

import argparse
import cProfile
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aggregator.checkpoint import Checkpointer
from aggregator.config import CatalogSettings
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.pipeline import Pipeline
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import Store
from benchmarks.ingest import wait_for_events
from benchmarks.live import Names, aggregator_process, declared, free_port, publish
from benchmarks.scale import bodies_over, config_for
from schemas.wire import DEFAULT_AMQP_URL

COMMIT_INTERVAL = 0.2


def profile_pipeline(label_sets: int, events: int, state_dir: Path) -> tuple[pstats.Stats, float]:
    """Apply the bodies through the service's pipeline, committing every COMMIT_INTERVAL of wall time.

    The commit's journal record is written in this thread (the service writes it in a worker thread that holds
    the GIL while it builds the rows and encodes them), so cProfile sees it. Returns the stats and events/s.
    """
    bodies = list(bodies_over(label_sets, events))
    store = Store()
    self_metrics = SelfMetrics(store)
    ingest = Ingest(CatalogSettings(max_series_per_metric=label_sets + 1000), [], store, self_metrics)
    recent_ids = RecentIds(50_000)
    pipeline = Pipeline(ingest, recent_ids)
    checkpointer = Checkpointer(state_dir, store, recent_ids, self_metrics)
    checkpointer.restore()

    def commit() -> None:
        captured = checkpointer.capture()
        checkpointer._write_record(captured)
        checkpointer._thaw(captured, written=True)

    profiler = cProfile.Profile()
    started = time.perf_counter()
    last_commit = started
    profiler.enable()
    for body in bodies:
        pipeline.process(body, "application/msgpack", uuid.uuid4().hex)
        if time.perf_counter() - last_commit >= COMMIT_INTERVAL:
            commit()
            last_commit = time.perf_counter()
    commit()
    profiler.disable()
    rate = events / (time.perf_counter() - started)
    return pstats.Stats(profiler), rate


def perf_drain(url: str, label_sets: int, events: int, workdir: Path, output: Path) -> str:
    """Drain the bodies into the aggregator under `perf record -g`; the report by shared object and symbol."""
    names, port = Names.fresh("profile"), free_port()
    with declared(url, names), aggregator_process(names, port, workdir / names.queue,
                                                  config_for(label_sets, workdir)) as process:  # fmt: skip
        process.send_signal(signal.SIGSTOP)
        try:
            publish(url, names.exchange, bodies_over(label_sets, events), "batch")
        finally:
            process.send_signal(signal.SIGCONT)
        recorder = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", str(output), "-p", str(process.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            drain = wait_for_events(port, process.pid, events)
        finally:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
    command = ["perf", "report", "-i", str(output), "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none",
               "--percent-limit", "0.7"]  # fmt: skip
    report = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = [line for line in report.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return f"{drain.rate:,.0f} events/s, {drain.cpu_per_million:.2f} CPU-s per million events\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["cprofile", "perf"])
    parser.add_argument("--label-sets", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--top", type=int, default=25, help="cprofile: how many functions to print")
    parser.add_argument("--url", default=DEFAULT_AMQP_URL)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickbus-profile-") as directory:
        workdir = Path(directory)
        if arguments.tool == "cprofile":
            stats, rate = profile_pipeline(arguments.label_sets, arguments.events, workdir / "state")
            print(f"{rate:,.0f} events/s in-process under cProfile (its overhead included)")
            stats.sort_stats("tottime").print_stats(arguments.top)
        else:
            print(perf_drain(arguments.url, arguments.label_sets, arguments.events, workdir, workdir / "perf.data"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
