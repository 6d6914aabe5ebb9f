"""Checkpoint files: round trip, every kind of damage detected, fallback to the previous one, atomic writes."""

from pathlib import Path

import anyio
import pytest

from aggregator.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpoint,
    Snapshot,
    decode_checkpoint,
    encode_checkpoint,
)
from aggregator.config import CatalogSettings
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from schemas.events import Error
from tests.support.engine import make_ingest


def _checkpointer(directory: Path) -> tuple[Checkpointer, Ingest, RecentIds]:
    ingest = make_ingest(CatalogSettings())
    recent = RecentIds(10)
    return Checkpointer(directory, ingest.store, recent, ingest.self_metrics), ingest, recent


def _write(checkpointer: Checkpointer) -> None:
    anyio.run(checkpointer.persist, checkpointer.snapshot())


def _errors(ingest: Ingest, count: int) -> None:
    ingest.apply([Error(ts=1.0, source="s", component="c", error_type="t")] * count, now=1.0)


def _error_total(ingest: Ingest) -> float:
    return float(sum(ingest.store.families["trading_errors_total"].series.values()))


def test_round_trip() -> None:
    """What is encoded decodes to the same snapshot."""
    snapshot = Snapshot(1.5, 7, {"m": [[["a"], 1.0]]}, ["id-1"])
    assert decode_checkpoint(encode_checkpoint(snapshot)) == snapshot


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-3], "truncated"),
        (lambda data: data[:5], "shorter than the header"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum mismatch"),
        (lambda data: b"XXXX" + data[4:], "bad magic"),
    ],
)
def test_damage_is_detected(damage: object, message: str) -> None:
    """Truncation, flipped bits and foreign files are all refused with a reason."""
    data = encode_checkpoint(Snapshot(1.0, 1, {}, []))
    with pytest.raises(CorruptCheckpoint, match=message):
        decode_checkpoint(damage(data))  # type: ignore[operator]


def test_write_then_restore_brings_back_counts_and_ids(tmp_path: Path) -> None:
    """A restored aggregator has the counts and the recent message ids of the last checkpoint."""
    checkpointer, ingest, recent = _checkpointer(tmp_path)
    _errors(ingest, 5)
    recent.add("m-1")
    _write(checkpointer)
    restored, restored_ingest, restored_recent = _checkpointer(tmp_path)
    result = restored.restore()
    assert result is not None
    assert not result.fell_back
    assert _error_total(restored_ingest) == 5
    assert "m-1" in restored_recent


def test_damaged_current_falls_back_to_previous(tmp_path: Path) -> None:
    """The previous checkpoint is used when the current one is damaged, and the fallback is reported."""
    checkpointer, ingest, _ = _checkpointer(tmp_path)
    _errors(ingest, 2)
    _write(checkpointer)
    _errors(ingest, 3)
    _write(checkpointer)
    (tmp_path / "checkpoint").write_bytes(b"garbage")
    restored, restored_ingest, _ = _checkpointer(tmp_path)
    result = restored.restore()
    assert result is not None
    assert result.fell_back
    assert _error_total(restored_ingest) == 2


def test_no_readable_checkpoint_is_an_error_not_an_empty_start(tmp_path: Path) -> None:
    """With only damaged checkpoints, restore refuses rather than starting at zero."""
    (tmp_path / "checkpoint").write_bytes(b"garbage")
    checkpointer, _, _ = _checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        checkpointer.restore()


def test_empty_state_directory_starts_fresh(tmp_path: Path) -> None:
    """A new state directory is created and simply has nothing to restore."""
    checkpointer, _, _ = _checkpointer(tmp_path / "new")
    assert checkpointer.restore() is None
    assert (tmp_path / "new").is_dir()


def test_failed_write_is_counted_and_raised(tmp_path: Path) -> None:
    """A write that fails (directory gone) raises OSError and increments the failure counter."""
    checkpointer, ingest, _ = _checkpointer(tmp_path / "gone")
    with pytest.raises(OSError, match="gone"):
        _write(checkpointer)
    assert ingest.self_metrics.checkpoint_failures.series[()] == 1


def test_an_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A state directory that is a file is refused with a message, not a traceback."""
    blocker = tmp_path / "state"
    blocker.write_text("a file")
    checkpointer, _, _ = _checkpointer(blocker)
    with pytest.raises(CheckpointError, match=r"state directory .* is unusable"):
        checkpointer.restore()
