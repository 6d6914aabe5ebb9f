"""Checkpoint files: round trip, every kind of damage detected, fallback to the previous one, atomic writes."""

import logging
import zlib
from pathlib import Path

import anyio
import msgspec
import pytest

from aggregator import stateformat
from aggregator.checkpoint import Checkpointer, CheckpointError
from aggregator.config import CatalogSettings
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.stateformat import (
    FRAME,
    HEADER,
    MAGIC,
    TABLE_LIST_VERSION,
    Chunk,
    CorruptCheckpoint,
    State,
    decode_checkpoint,
    encode_checkpoint,
    encode_record,
    read_first_segment,
    read_records,
)
from aggregator.store import CounterFamily, GaugeFamily
from schemas.events import Error, Position
from tests.support.engine import make_ingest


def _checkpointer(directory: Path) -> tuple[Checkpointer, Ingest, RecentIds]:
    ingest = make_ingest(CatalogSettings())
    recent = RecentIds(10)
    return Checkpointer(directory, ingest.store, recent, ingest.self_metrics), ingest, recent


def _write(checkpointer: Checkpointer) -> None:
    anyio.run(checkpointer.persist, checkpointer.capture())


def _errors(ingest: Ingest, count: int) -> None:
    ingest.apply([Error(ts=1.0, source="s", component="c", error_type="t")] * count, now=1.0)


def _error_total(ingest: Ingest) -> float:
    return float(sum(ingest.store.families["trading_errors_total"].series.values()))


def test_round_trip() -> None:
    """What is encoded decodes to the same snapshot."""
    state = State(7, 1.5, ["id-1"], [Chunk("m", "counter", [("a",), ("b",)], [1.0, [2.0, {"i": 2.0}]])], 3)
    assert decode_checkpoint(encode_checkpoint(state)) == state


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("distinct", [3, 300, 70_000])
def test_keys_round_trip_at_every_index_width(distinct: int, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come back equal, in order, whether their indexes pack in 1, 2 or 4 bytes; equal values are one object."""
    if not compiled:
        monkeypatch.setattr(stateformat, "_COMPILED", None)
    keys: list[tuple[str, ...]] = [("desk", f"v{index % distinct}", "buy") for index in range(distinct + 5)]
    rows = [float(index) for index in range(len(keys))]
    state = State(1, 1.0, [], [Chunk("m", "counter", keys, rows, ("a", "b", "c")), Chunk("n", "counter", [()], [2.0])])
    decoded = decode_checkpoint(encode_checkpoint(state))
    assert decoded == state
    chunk = decoded.chunks[0]
    assert chunk.shared
    assert len({id(key[0]) for key in chunk.keys}) == 1
    assert len({id(key[1]) for key in chunk.keys}) == distinct


def test_keys_of_another_width_than_the_labels_are_left_out_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """Packing keys of two widths would misplace every later value: those that do not fit the labels are not
    written (a restore would drop them), the others are, and the log says so."""
    chunk = Chunk("m", "counter", [("a",), ("a", "b"), ("c",)], [1.0, 2.0, 3.0], ("x",))
    decoded = decode_checkpoint(encode_checkpoint(State(1, 1.0, [], [chunk])))
    assert decoded.chunks[0].keys == [("a",), ("c",)]
    assert decoded.chunks[0].rows == [1.0, 3.0]
    assert "1 series of m have keys of other lengths than 1 (its labels); not written" in caplog.text


def _frames_of(data: bytes) -> list[bytes]:
    payload, frames, offset = data[HEADER.size :], [], 0
    while offset < len(payload):
        (length,) = FRAME.unpack_from(payload, offset)
        frames.append(payload[offset + FRAME.size : offset + FRAME.size + length])
        offset += FRAME.size + length
    return frames


def _with_chunk(data: bytes, fields: list[object]) -> bytes:
    """`data` (a base of one chunk) with that chunk's fields replaced, re-framed with a valid checksum."""
    header, _ = _frames_of(data)
    chunk = msgspec.msgpack.encode(fields)
    payload = b"".join(FRAME.pack(len(frame)) + frame for frame in (header, chunk))
    return HEADER.pack(MAGIC, 4, len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (["m", "counter", ["a"], 1, 1, b"\x00\x05", [1.0, 2.0]], "past|out of range"),
        (["m", "counter", ["a"], 1, 1, b"\x00", [1.0, 2.0]], "1 key indexes for 2 series"),
        (["m", "counter", ["a"], 1, 2, b"\x00\x00\x00", [1.0]], "not whole indexes"),
        (["m", "counter", ["a"], 1, 3, b"\x00\x00\x00", [1.0]], "indexes of 3 bytes"),
        (["m", "counter", ["a"], 2**63, 1, b"", []], "keys of 9223372036854775808 labels"),
        (["m", "counter", ["a"], 2**40, 1, b"", []], "keys of 1099511627776 labels"),
        (["m", "counter", ["a"], -1, 1, b"", []], "keys of -1 labels"),
        (["m", "counter", ["a"], 2, 1, b"\x00\x00", [1.0], ["x"]], "keys of 2 values under 1 labels"),
    ],
)
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_damaged_packed_keys_are_refused(
    fields: list[object], message: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed keys that do not fit their strings or series count are a corrupt checkpoint, not wrong series."""
    if not compiled:
        monkeypatch.setattr(stateformat, "_COMPILED", None)
    data = encode_checkpoint(State(1, 1.0, [], [Chunk("m", "counter", [("a",)], [1.0])]))
    with pytest.raises(CorruptCheckpoint, match=message):
        decode_checkpoint(_with_chunk(data, fields))


@pytest.mark.parametrize(
    ("keys", "rows", "message"),
    [([[-1]], [1.0], "a negative key index"), ([[0], [0]], [1.0], "2 keys for 1 rows")],
)
def test_a_damaged_format_3_base_is_refused(keys: list[list[int]], rows: list[float], message: str) -> None:
    """A negative index would pick another label value; more keys than rows would fail the restore itself."""
    header = msgspec.msgpack.encode([5, 1.0, [], 0, True])
    chunk = msgspec.msgpack.encode(["m", "counter", ["a", "b"], keys, rows, None, None])
    payload = b"".join(FRAME.pack(len(frame)) + frame for frame in (header, chunk))
    data = HEADER.pack(MAGIC, TABLE_LIST_VERSION, len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(CorruptCheckpoint, match=message):
        decode_checkpoint(data)


def test_compaction_never_drops_a_segment_the_new_base_replays(tmp_path: Path) -> None:
    """The previous base's first segment is read from its header alone, without its checksum: a damaged header
    naming a later segment must not make compaction delete the segments the new base replays."""
    checkpointer, _, _ = _checkpointer(tmp_path)
    (tmp_path / "base").write_bytes(encode_checkpoint(State(5, 1.0, [], [], first_segment=9)))  # damaged: was 2
    (tmp_path / "base.tmp").write_bytes(encode_checkpoint(State(8, 2.0, [], [], first_segment=4)))
    for number in range(7):
        (tmp_path / f"journal.{number:08d}").write_bytes(b"")
    checkpointer._install_base(4)
    assert sorted(path.name for path in tmp_path.glob("journal.*")) == [f"journal.{n:08d}" for n in (4, 5, 6)]


def test_a_format_3_base_is_read(tmp_path: Path) -> None:
    """A base of the previous release (keys as lists of indexes) restores to the same series."""
    header = msgspec.msgpack.encode([5, 1.0, ["old-1"], 2, True])
    chunk = msgspec.msgpack.encode(
        ["trading_errors_total", "counter", ["s", "c", "t", "error", ""], [[0, 1, 2, 3, 4]], [4.0], None, None]
    )
    payload = b"".join(FRAME.pack(len(frame)) + frame for frame in (header, chunk))
    data = HEADER.pack(MAGIC, TABLE_LIST_VERSION, len(payload), zlib.crc32(payload)) + payload
    (tmp_path / "base").write_bytes(data)
    checkpointer, ingest, recent = _checkpointer(tmp_path)
    assert checkpointer.restore() is not None
    assert ingest.store.families["trading_errors_total"].series == {("s", "c", "t", "error", ""): 4.0}
    assert "old-1" in recent
    assert read_first_segment(tmp_path / "base") == 2


def test_the_first_segment_is_read_from_the_header_alone(tmp_path: Path) -> None:
    """Compaction learns which segments the previous base needs without decoding its series."""
    path = tmp_path / "base"
    path.write_bytes(encode_checkpoint(State(1, 1.0, [], [Chunk("m", "counter", [("a",)], [1.0])], 17)))
    assert read_first_segment(path) == 17
    path.write_bytes(b"TBCK")
    with pytest.raises(CorruptCheckpoint):
        read_first_segment(path)


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
    data = encode_checkpoint(State(1, 1.0, []))
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


def _compacting_checkpointer(directory: Path) -> tuple[Checkpointer, Ingest, RecentIds]:
    ingest = make_ingest(CatalogSettings())
    recent = RecentIds(10)
    checkpointer = Checkpointer(directory, ingest.store, recent, ingest.self_metrics, compact_after_bytes=0)
    return checkpointer, ingest, recent


def test_damaged_base_falls_back_to_the_previous_one_and_its_journal(tmp_path: Path) -> None:
    """The previous base and the journal after it are used when the newest base is damaged, and it is reported."""
    checkpointer, ingest, _ = _compacting_checkpointer(tmp_path)
    checkpointer.restore()
    family = _family(ingest)
    for commit in range(8):
        for index in range(300):  # new series each commit: the journal outgrows the base again and again
            family.inc(("s", f"c{commit}-{index}", "t", "error", ""))
        _write(checkpointer)
    assert (tmp_path / "base").exists()
    assert (tmp_path / "base.prev").exists()
    (tmp_path / "base").write_bytes(b"garbage")
    restored, restored_ingest, _ = _checkpointer(tmp_path)
    result = restored.restore()
    assert result is not None
    assert result.fell_back
    assert _error_total(restored_ingest) == 2400, "the previous base plus every journal record after it"


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


def _family(ingest: Ingest) -> CounterFamily:
    family = ingest.store.families["trading_errors_total"]
    assert isinstance(family, CounterFamily)
    return family


def test_a_commit_writes_only_the_series_it_changed(tmp_path: Path) -> None:
    """With 50,000 series in the store, a commit after changing three of them journals three rows."""
    checkpointer, ingest, _ = _checkpointer(tmp_path)
    checkpointer.restore()
    family = _family(ingest)
    for index in range(50_000):
        family.inc(("s", f"c{index}", "t", "error", ""))
    _write(checkpointer)
    for index in (7, 8, 9):
        family.inc(("s", f"c{index}", "t", "error", ""))
    commit = checkpointer.capture()
    changed = {family.name: len(keys) for family, keys in commit.families if keys}
    assert {name: count for name, count in changed.items() if name.startswith("trading_")} == {
        "trading_errors_total": 3
    }
    anyio.run(checkpointer.persist, commit)
    records, stopped = read_records((tmp_path / "journal.00000000").read_bytes())
    assert stopped == ""
    assert len(records[-1].families()["trading_errors_total"][1]) == 3


def test_the_journal_holds_values_as_at_the_commit_point(tmp_path: Path) -> None:
    """A change made while a commit is written goes to the next commit, never into this one (copy on write)."""
    checkpointer, ingest, _ = _checkpointer(tmp_path)
    checkpointer.restore()
    family = _family(ingest)
    key = ("s", "c", "t", "error", "")
    family.inc(key, 5.0)
    commit = checkpointer.capture()
    family.inc(key, 100.0)  # applied after the commit point, while the commit is being written
    assert commit.state().families()["trading_errors_total"][1] == [(key, 5.0)]
    anyio.run(checkpointer.persist, commit)
    assert key in family.dirty, "the later change waits for the next commit"
    restored, restored_ingest, _ = _checkpointer(tmp_path)
    restored.restore()
    assert _family(restored_ingest).series[key] == 5.0
    _write(checkpointer)
    again, again_ingest, _ = _checkpointer(tmp_path)
    again.restore()
    assert _family(again_ingest).series[key] == 105.0


def test_a_failed_commit_leaves_its_series_dirty_for_the_next(tmp_path: Path) -> None:
    """Nothing written, nothing lost: the series and ids of a failed commit go into the next one."""
    checkpointer, ingest, recent = _checkpointer(tmp_path / "state")
    checkpointer.restore()
    _errors(ingest, 4)
    recent.add("m-1")
    (tmp_path / "state").rename(tmp_path / "away")
    with pytest.raises(OSError, match="state"):
        _write(checkpointer)
    (tmp_path / "away").rename(tmp_path / "state")
    _write(checkpointer)
    restored, restored_ingest, restored_recent = _checkpointer(tmp_path / "state")
    restored.restore()
    assert _error_total(restored_ingest) == 4
    assert "m-1" in restored_recent


def test_a_torn_last_record_is_ignored_and_a_damaged_one_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash while appending leaves a torn tail (never acked: ignored); damage before the end is an error."""
    checkpointer, ingest, _ = _checkpointer(tmp_path)
    checkpointer.restore()
    for count in (1, 2, 3):
        _errors(ingest, count)
        _write(checkpointer)
    segment = tmp_path / "journal.00000000"
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])
    restored, restored_ingest, _ = _checkpointer(tmp_path)
    restored.restore()
    assert _error_total(restored_ingest) == 3
    records, _ = read_records(data)
    first_length = len(data) - sum(len(encode_record(record)) for record in records[1:])
    damaged = bytearray(data)
    damaged[first_length + 20] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    with caplog.at_level(logging.ERROR, logger="aggregator.checkpoint"):
        restored, restored_ingest, _ = _checkpointer(tmp_path)
        restored.restore()
    assert _error_total(restored_ingest) == 1
    assert "is damaged (a record with a bad checksum" in caplog.text


def test_compaction_keeps_every_count_and_drops_old_segments(tmp_path: Path) -> None:
    """After compactions, the state is a base and a short journal, and restores exactly; old segments are gone."""
    checkpointer, ingest, recent = _compacting_checkpointer(tmp_path)
    checkpointer.restore()
    for index in range(12):
        _errors(ingest, 1)
        recent.add(f"m-{index}")
        _write(checkpointer)
    segments = sorted(path.name for path in tmp_path.glob("journal.*"))
    assert len(segments) <= 4
    restored, restored_ingest, restored_recent = _checkpointer(tmp_path)
    restored.restore()
    assert _error_total(restored_ingest) == 12
    assert "m-11" in restored_recent


def test_a_first_release_checkpoint_is_read_on_upgrade(tmp_path: Path) -> None:
    """A format 2 `checkpoint` (counters with running totals, gauges with times) restores, then is replaced."""
    payload = msgspec.msgpack.encode(
        {
            "written_at": 1.0,
            "sequence": 9,
            "families": {
                "trading_errors_total": ["counter", [[[["s", "c", "t", "error", ""], 4.0]], []]],
                "trading_producer_dropped_events_total": [
                    "counter",
                    [[[["p"], 3.0]], [[["p"], {"inst-1": 3.0}]]],
                ],
                "trading_position_quantity": ["gauge", [[["book", "", "", "X"], [2.0, 50.0], 60.0]]],
            },
            "recent_ids": ["old-1"],
        }
    )
    (tmp_path / "checkpoint").write_bytes(HEADER.pack(MAGIC, 2, len(payload), zlib.crc32(payload)) + payload)
    checkpointer, ingest, recent = _compacting_checkpointer(tmp_path)
    assert checkpointer.restore() is not None
    assert _error_total(ingest) == 4
    dropped = ingest.store.families["trading_producer_dropped_events_total"]
    assert isinstance(dropped, CounterFamily)
    assert dropped.running_totals == {("p",): {"inst-1": 3.0}}
    position = ingest.store.families["trading_position_quantity"]
    assert isinstance(position, GaugeFamily)
    assert position.series == {("book", "", "", "X"): (2.0, 50.0)}
    assert position.updated == {("book", "", "", "X"): 60.0}
    assert "old-1" in recent
    for _ in range(3):
        _errors(ingest, 1)
        _write(checkpointer)
    assert not (tmp_path / "checkpoint").exists(), "replaced by a base once one is compacted"
    restored, restored_ingest, _ = _checkpointer(tmp_path)
    restored.restore()
    assert _error_total(restored_ingest) == 7


def test_a_series_deleted_after_a_commit_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    """An expired gauge series is journalled as a None row; replaying the journal deletes it again, while the
    series kept beside it in the same record come back with their values."""

    checkpointer, ingest, _ = _checkpointer(tmp_path)
    checkpointer.restore()
    positions = [Position(ts=1.0, source=source, symbol="X", quantity=2.0) for source in ("old", "live")]
    ingest.apply(positions, now=1.0)
    _errors(ingest, 3)
    _write(checkpointer)
    ingest.apply([Position(ts=500.0, source="live", symbol="X", quantity=5.0)], now=500.0)
    assert ingest.store.expire_gauges(now=500.0, default_ttl=100.0, source_activity={"live": 500.0}) == 1
    _write(checkpointer)
    gauges = {key[0]: value for key, value in ingest.store.families["trading_position_quantity"].series.items()}
    assert set(gauges) == {"live"}

    again, restored, _ = _checkpointer(tmp_path)
    again.restore()
    family = restored.store.families["trading_position_quantity"]
    assert {key[0]: value for key, value in family.series.items()} == gauges
    assert _error_total(restored) == 3
