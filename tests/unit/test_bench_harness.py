"""The bench's own parts that need no broker: its events, its parsing of a scrape, its table and its JSON."""

import json
import subprocess
import sys
from pathlib import Path

from aggregator.decode import MessageDecoder
from benchmarks import collectd, emitting, scale
from benchmarks.harness import SECTIONS, Figure, Report, counter_bodies, table
from benchmarks.picture import bars
from benchmarks.profile import profile_pipeline
from schemas.events import Error, Signal


def test_the_scale_events_pass_over_the_label_sets_signals_then_errors() -> None:
    """Event k is of label set k mod N, a signal on even passes and an error on odd ones, 1,000 to a message: twice
    N events make every label set two series."""
    batches = list(scale.events_over(3, 1500))
    assert [len(batch) for batch in batches] == [1000, 500]
    events = [event for batch in batches for event in batch]
    assert [event.symbol for event in events[:7]] == ["S0", "S1", "S2", "S0", "S1", "S2", "S0"]  # type: ignore[attr-defined]
    assert [type(event) for event in events[:7]] == [Signal, Signal, Signal, Error, Error, Error, Signal]
    series = {(type(event), event.symbol) for event in events}  # type: ignore[attr-defined]
    assert len(series) == 6


def test_the_collectd_bodies_and_ours_carry_the_same_events_messages_and_series() -> None:
    """Message m feeds series m mod S on both sides; collectd's reports carry each counter's running total, so the
    last report of every series adds up to the events sent."""
    theirs = collectd.bodies(5000, 1000, 3)
    ours = counter_bodies(5000, 1000, 3)
    assert len(theirs) == len(ours) == 5
    first = theirs[0].decode().split()
    assert first[:2] == ["PUTVAL", "bench/tickbus-feed/derive-gap0"]
    assert first[2:4] == ["N:1", "N:2"]
    assert len(first) == 2 + 1000
    assert theirs[3].decode().split()[2] == "N:1001"  # series 0 again, carrying on from 1,000
    finals = {body.decode().split()[1]: int(body.decode().split()[-1][2:]) for body in theirs}
    assert sum(finals.values()) == 5000
    decoded = MessageDecoder().decode(ours[4], "application/msgpack").events
    assert len(decoded) == 1000
    assert {event.error_type for event in decoded} == {"gap1"}


def test_a_scrape_gives_the_commit_count_mean_and_the_bound_of_its_slowest_bucket() -> None:
    """From tickbus_checkpoint_seconds: count, sum, and the `le` of the first bucket that holds every commit."""
    body = b"""# TYPE tickbus_checkpoint_seconds histogram
tickbus_checkpoint_seconds_bucket{le="0.01"} 2.0
tickbus_checkpoint_seconds_bucket{le="0.1"} 3.0
tickbus_checkpoint_seconds_bucket{le="1.0"} 4.0
tickbus_checkpoint_seconds_bucket{le="+Inf"} 4.0
tickbus_checkpoint_seconds_count 4.0
tickbus_checkpoint_seconds_sum 0.75
tickbus_series{metric="trading_errors_total"} 12.0
trading_errors_total{source="a"} 1.0
"""
    samples = scale.self_samples(body)
    assert "trading_errors_total" not in samples
    assert scale.histogram_stats(samples, "tickbus_checkpoint_seconds") == (4.0, 0.75, 1.0)
    assert scale.histogram_stats(samples, "tickbus_missing_seconds") == (0.0, 0.0, 0.0)


def test_the_table_shows_every_figure_with_its_target_and_the_series_scale_rows() -> None:
    """Each figure's line says met or NO; the series-scale rows and the load average follow."""
    report = Report({"load_average_before": [0.5, 0.4, 0.3], "load_average_after": [1.0, 0.9, 0.8]}, "aggregator bench")
    report.figures = [
        Figure("a", 2.0, 1.0, "events/s", ">= 3").judge(at_least=3.0),
        Figure("b", 50.0, 100.0, "ms", "<= 100 ms").judge(at_most=1.0),
    ]
    row = scale.ScaleRow(1_000_000, 2_000_000, 2e6, 50_000.0, 16.0, 27, 500.0, 2500.0, 1, 5.0, 300, 30.0, 970.0,
                         1100.0, 2400.0, 13.0, 220.0, 160.0, 13.0)  # fmt: skip
    report.extra["series_scale"] = [scale.as_dict(row)]
    text = table(report).splitlines()
    assert text[1].endswith("NO")
    assert "2.000" in text[1]
    assert text[2].endswith("yes")
    assert any(line.split()[:3] == ["1,000,000", "2,000,000", "2,000,000"] and "30/970/1100" in line for line in text)
    assert text[-1] == "load average (1, 5, 15 min) before [0.5, 0.4, 0.3], after [1.0, 0.9, 0.8]"


def test_bench_only_one_quick_section_writes_the_json_the_picture_reads(tmp_path: Path) -> None:
    """`aggregator bench --only memory --quick` runs that section alone and writes figures the picture can draw;
    an unknown section is refused before anything runs."""
    output = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "aggregator", "bench", "--only", "memory", "--quick", "-o",
                          str(output)], capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads(output.read_text())
    assert results["extra"]["sections"] == ["memory"]
    assert set(results["machine"]) >= {"cpu", "cores", "python", "load_average_before", "load_average_after"}
    assert [figure["name"] for figure in results["figures"]] == [
        "memory per counter series vs prometheus_client",
        "memory per histogram series vs prometheus_client",
    ]
    for figure in results["figures"]:
        assert set(figure) == {"name", "ours", "baseline", "unit", "target", "ratio", "met", "note"}
        assert figure["ours"] > 0
        assert figure["ratio"] == figure["ours"] / figure["baseline"]
        assert figure["name"] in run.stdout
    assert len(bars(results)) == 2
    refused = subprocess.run([sys.executable, "-m", "aggregator", "bench", "--only", "nonesuch", "-o", str(output)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert f"choose from {', '.join(SECTIONS)}" in refused.stderr


def test_the_in_process_profile_covers_the_pipeline_and_the_commits(tmp_path: Path) -> None:
    """benchmarks.profile runs the service's pipeline with commits in the profiled thread: both show in its stats,
    and the commits leave a journal in the state directory."""
    stats, rate = profile_pipeline(100, 2000, tmp_path / "state")
    functions = {name for _, _, name in stats.stats}  # type: ignore[attr-defined]
    assert {"process", "_write_record", "capture"} <= functions
    assert rate > 0
    assert any(path.name.startswith("journal.") for path in (tmp_path / "state").iterdir())


def test_an_emitter_trial_passes_when_its_loop_kept_up_even_if_the_process_was_paused() -> None:
    """A trial that emitted late because the process was descheduled while it waited still passes (its loop was
    busy for less than the trial); one whose loop was busy longer than the trial, or that dropped, does not."""
    paused = emitting.Trial(rate=4000, reached=3000, dropped=0, confirmed=True, busy=0.01, seconds=0.1)
    too_slow = emitting.Trial(rate=4000, reached=3000, dropped=0, confirmed=True, busy=0.13, seconds=0.1)
    reached = emitting.Trial(rate=4000, reached=3990, dropped=0, confirmed=True, busy=0.13, seconds=0.1)
    dropped = emitting.Trial(rate=4000, reached=4000, dropped=1, confirmed=True, busy=0.01, seconds=0.1)
    assert paused.passed
    assert not too_slow.passed
    assert reached.passed
    assert not dropped.passed
