"""The state directory under faults: a commit cut short by the file system, a torn tail from an earlier run, a
configuration that changed under a checkpoint. Counts acked must come back exact or the restore must refuse."""

import contextlib
import logging
import resource
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest

from aggregator.checkpoint import Checkpointer, CheckpointError
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.dedup import RecentIds
from aggregator.exposition import Exposition
from aggregator.ingest import Ingest
from schemas.events import Error, Metric
from tests.support.engine import make_ingest, read_view


def _checkpointer(directory: Path, custom: Sequence[CustomMetric] = ()) -> tuple[Checkpointer, Ingest]:
    ingest = make_ingest(CatalogSettings(), custom)
    return Checkpointer(directory, ingest.store, RecentIds(100_000), ingest.self_metrics), ingest


def _commit(checkpointer: Checkpointer) -> None:
    anyio.run(checkpointer.persist, checkpointer.capture())


def _errors(ingest: Ingest, count: int, tag: str = "s") -> None:
    """`count` error events over `count` distinct series (so a commit's record is large)."""
    ingest.apply(
        [Error(ts=1.0, source=f"{tag}-{index}", component="c", error_type="t") for index in range(count)], now=1.0
    )


def _error_total(ingest: Ingest) -> float:
    return float(sum(ingest.store.families["trading_errors_total"].series.values()))


@contextlib.contextmanager
def _files_limited_to(size: int) -> Iterator[None]:
    """Writes past `size` bytes of any file fail (EFBIG) after a short write, as a full disk cuts a write short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_commit_cut_short_by_the_file_system_loses_no_later_commit(tmp_path: Path) -> None:
    """A commit whose write the file system cuts short (full disk) fails and is not acked; once space is back the
    next commits succeed and are acked. A restart must then bring back every acked count: the half-written record
    of the failed commit must not hide the good records written after it."""
    checkpointer, ingest = _checkpointer(tmp_path)
    checkpointer.restore()
    _errors(ingest, 10, "first")
    _commit(checkpointer)
    segment = tmp_path / "journal.00000000"
    _errors(ingest, 3000, "second")  # a record of tens of kilobytes
    with _files_limited_to(segment.stat().st_size + 1000), pytest.raises(OSError, match="File too large"):
        _commit(checkpointer)
    assert segment.stat().st_size > 0
    _errors(ingest, 5, "third")
    _commit(checkpointer)  # succeeds: everything applied so far is acked now
    assert _error_total(ingest) == 3015
    restored, restored_ingest = _checkpointer(tmp_path)
    restored.restore()
    assert _error_total(restored_ingest) == 3015


def test_a_torn_tail_left_by_an_earlier_run_does_not_hide_the_next_runs_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Run 1 dies while appending a record (a torn tail in its segment, never acked). Run 2 restores, then commits
    and acks more in a segment of its own. Run 3 must restore run 2's commits too: they follow a torn record that
    is no longer the last one, but nothing acked was lost."""
    run1, ingest = _checkpointer(tmp_path)
    run1.restore()
    _errors(ingest, 3)
    _commit(run1)
    segment = tmp_path / "journal.00000000"
    good = segment.stat().st_size
    _errors(ingest, 4, "torn")
    _commit(run1)
    data = segment.read_bytes()
    segment.write_bytes(data[: good + (len(data) - good) // 2])  # killed half-way through the write
    run2, ingest = _checkpointer(tmp_path)
    run2.restore()
    assert _error_total(ingest) == 3
    _errors(ingest, 10, "run2")
    _commit(run2)
    with caplog.at_level(logging.ERROR, logger="aggregator.checkpoint"):
        run3, ingest = _checkpointer(tmp_path)
        run3.restore()
    assert _error_total(ingest) == 13
    assert "missing" not in caplog.text


def _rendered(ingest: Ingest, name: str) -> list[str]:
    text = Exposition(read_view(ingest), min_interval=0).render().decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def test_a_histogram_whose_buckets_changed_does_not_restore_old_counts_under_new_bounds(tmp_path: Path) -> None:
    """A histogram with buckets [0.1, 1] holds an observation of 0.05; the config changes its buckets to [10, 100]
    (as many bounds). The old counts must not come back under the new bounds (docs/operations.md: a histogram
    whose buckets changed loses its old series)."""
    before = [CustomMetric(name="fill_seconds", type="histogram", help="Fill time.", buckets=[0.1, 1.0])]
    checkpointer, ingest = _checkpointer(tmp_path, before)
    checkpointer.restore()
    ingest.apply([Metric(ts=1.0, source="s", name="fill_seconds", value=0.05)], 1.0)
    _commit(checkpointer)
    after = [CustomMetric(name="fill_seconds", type="histogram", help="Fill time.", buckets=[10.0, 100.0])]
    restored, restored_ingest = _checkpointer(tmp_path, after)
    restored.restore()
    assert 'trading_fill_seconds_bucket{source="s",le="10.0"} 1' not in _rendered(
        restored_ingest, "trading_fill_seconds_bucket"
    )


def test_falling_back_to_the_previous_base_with_its_whole_journal_does_not_claim_lost_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The base is damaged but the previous base and every journal segment after it are kept, so the fallback
    restores every count: the log must not say acknowledged counts are missing (logs tell the truth)."""
    checkpointer, ingest = _checkpointer(tmp_path)
    checkpointer._compact_after_bytes = 1
    checkpointer.restore()
    for _ in range(8):
        _errors(ingest, 50)
        _commit(checkpointer)
    assert (tmp_path / "base.prev").exists()
    base = tmp_path / "base"
    data = bytearray(base.read_bytes())
    data[-10] ^= 0xFF
    base.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="aggregator.checkpoint"):
        restored, restored_ingest = _checkpointer(tmp_path)
        try:
            restored.restore()
        except CheckpointError:
            pytest.fail("the previous base is readable")
    assert _error_total(restored_ingest) == 400
    assert "missing" not in caplog.text


def _one_desk_fill(tmp_path: Path, declared: list[CustomMetric]) -> tuple[Checkpointer, Ingest]:
    """A state with 5 fills of desk="fx" at venue="lse", committed under `declared`."""
    checkpointer, ingest = _checkpointer(tmp_path, declared)
    checkpointer.restore()
    ingest.apply(
        [Metric(ts=1.0, source="s", name="desk_fills_total", value=5, labels={"desk": "fx", "venue": "lse"})], 1.0
    )
    _commit(checkpointer)
    return checkpointer, ingest


def test_a_custom_metric_whose_labels_were_reordered_keeps_its_values_under_the_right_labels(tmp_path: Path) -> None:
    """The same label names in another order are the same series: the restore reorders the keys, so the count
    comes back under desk="fx", venue="lse" whatever order the declaration lists them in, never with the desk's
    value under `venue` and the venue's under `desk`."""
    before = [CustomMetric(name="desk_fills_total", type="counter", help="Fills.", labels=["desk", "venue"])]
    _one_desk_fill(tmp_path, before)
    after = [CustomMetric(name="desk_fills_total", type="counter", help="Fills.", labels=["venue", "desk"])]
    restored, restored_ingest = _checkpointer(tmp_path, after)
    restored.restore()
    wrong = 'trading_desk_fills_total{source="s",venue="fx",desk="lse"} 5.0'
    assert wrong not in _rendered(restored_ingest, "trading_desk_fills_total")
    assert _rendered(restored_ingest, "trading_desk_fills_total{") == [
        'trading_desk_fills_total{source="s",venue="lse",desk="fx"} 5.0'
    ]


def test_a_damaged_record_in_an_earlier_segment_does_not_hide_later_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Run 1's segment is damaged in the middle (bit rot), run 2 committed in a segment of its own: run 2's rows
    are values, so they are replayed and bring their series up to date; the damage is reported as a loss."""
    run1, ingest = _checkpointer(tmp_path)
    run1.restore()
    _errors(ingest, 3, "a")
    _commit(run1)
    _errors(ingest, 4, "b")
    _commit(run1)
    segment = tmp_path / "journal.00000000"
    data = bytearray(segment.read_bytes())
    data[-30] ^= 0xFF  # inside the second record
    segment.write_bytes(bytes(data))
    run2, ingest = _checkpointer(tmp_path)
    run2.restore()
    _errors(ingest, 1, "a")  # the series a-0 again: its row in run 2's segment is its total, 2
    _commit(run2)
    with caplog.at_level(logging.ERROR, logger="aggregator.checkpoint"):
        run3, ingest = _checkpointer(tmp_path)
        run3.restore()
    assert _error_total(ingest) == 4, "run 1's first record (3), plus a-0 once more in run 2"
    assert "is damaged" in caplog.text


def test_a_reload_and_a_restart_agree_on_the_series_of_a_redeclared_metric(tmp_path: Path) -> None:
    """A SIGHUP reload redeclares a custom counter with its labels reordered. The journal holds its old rows; a
    restart under the new config must serve exactly what the reloaded process served (no series coming back
    that the reload dropped, none under the wrong labels)."""
    before = [CustomMetric(name="desk_fills_total", type="counter", help="Fills.", labels=["desk", "venue"])]
    after = [CustomMetric(name="desk_fills_total", type="counter", help="Fills.", labels=["venue", "desk"])]
    checkpointer, ingest = _one_desk_fill(tmp_path, before)
    assert ingest.custom.update(after) == ["custom metric desk_fills_total changed (1 series kept, 0 dropped)"]
    ingest.apply(
        [Metric(ts=2.0, source="s", name="desk_fills_total", value=1, labels={"desk": "eq", "venue": "xet"})], 2.0
    )
    _commit(checkpointer)
    served = _rendered(ingest, "trading_desk_fills_total")
    restored, restored_ingest = _checkpointer(tmp_path, after)
    restored.restore()
    assert _rendered(restored_ingest, "trading_desk_fills_total") == served


def test_a_state_none_of_whose_metrics_is_defined_now_is_refused_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator mistypes catalog.namespace and restarts: every catalog series in the state would be dropped
    and the next compaction would erase them. The restore must refuse, naming the setting, and leave the state
    as it was; under the old namespace it restores every count."""
    checkpointer, ingest = _checkpointer(tmp_path)
    checkpointer._compact_after_bytes = 1
    checkpointer.restore()
    for tag in "abc":
        _errors(ingest, 5, tag)
        _commit(checkpointer)
    assert (tmp_path / "base").exists()
    files = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    typo = make_ingest(CatalogSettings(namespace="tradng"))
    mistyped = Checkpointer(tmp_path, typo.store, RecentIds(100), typo.self_metrics)
    with (
        caplog.at_level(logging.WARNING, logger="aggregator.store"),
        pytest.raises(CheckpointError, match=r"none of them is defined now.*catalog\.namespace"),
    ):
        mistyped.restore()
    assert "dropping" not in caplog.text, "refused before the store says it drops each metric"
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == files
    again, restored = _checkpointer(tmp_path)
    again.restore()
    assert _error_total(restored) == 15


def test_a_state_that_still_has_some_of_its_metrics_restores_them(tmp_path: Path) -> None:
    """A custom metric removed from the config is dropped with a warning, not refused: the others restore."""
    custom = [CustomMetric(name="fills_open", type="gauge", help="h", labels=["venue"])]
    checkpointer, ingest = _checkpointer(tmp_path, custom)
    checkpointer.restore()
    _errors(ingest, 3)
    ingest.apply([Metric(ts=1.0, source="s", name="fills_open", value=2.0, labels={"venue": "x"})], now=1.0)
    _commit(checkpointer)
    again, restored = _checkpointer(tmp_path)
    again.restore()
    assert _error_total(restored) == 3
    assert "trading_fills_open" not in restored.store.families
