"""The checkpoint's bytes: a state as framed, chunked MessagePack, written and read in bounded pieces."""

import logging
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from aggregator.accelerated import compiled, untracked

_COMPILED = compiled()
log = logging.getLogger(__name__)

MAGIC = b"TBCK"
FORMAT_VERSION = 4
# Format 3 wrote a base's keys as lists of indexes (read still; format 4 packs them in one byte string).
TABLE_LIST_VERSION = 3
LEGACY_VERSION = 2
# Bases: magic, format version, payload length, CRC-32 of the payload.
HEADER = struct.Struct(">4sHQI")
# Journal records: payload length, CRC-32 of the payload.
RECORD = struct.Struct(">QI")
# Within a payload: one frame for the header, then one per chunk, each its length first.
FRAME = struct.Struct(">I")
# Series per chunk: one chunk is encoded (or decoded) in one call that holds the interpreter, so this
# bounds how long a writer thread can keep the event loop waiting.
CHUNK_SERIES = 20_000
# More labels than any metric declares: a base claiming wider keys is damaged.
MAX_KEY_WIDTH = 64


class CorruptCheckpoint(ValueError):
    """A checkpoint file or record is truncated, altered or not a checkpoint at all."""


@dataclass
class Chunk:
    """Series of one family: their keys and rows (see Family.row), in the same order."""

    family: str
    kind: str
    keys: list[tuple[str, ...]]
    rows: list[Any]
    # The family's label names and (histograms) bucket bounds when written: a restore under a declaration
    # that changed them must not put values under the wrong labels or bounds. None in files written before.
    labels: tuple[str, ...] | None = None
    buckets: tuple[float, ...] | None = None
    # True when read from a base's string table: equal label values are already one object in the chunk.
    shared: bool = field(default=False, compare=False)


@dataclass
class State:
    """A base (every series) or a journal record (the series one commit changed), and the message ids."""

    sequence: int
    written_at: float
    recent_ids: list[str]
    chunks: list[Chunk] = field(default_factory=list)
    # Bases only: the first journal segment to replay on top of it.
    first_segment: int = 0

    def families(self) -> dict[str, tuple[str, list[tuple[tuple[str, ...], Any]]]]:
        """The chunks as {family: (kind, [(key, row), ...])}, for tests and tools."""
        merged: dict[str, tuple[str, list[tuple[tuple[str, ...], Any]]]] = {}
        for chunk in self.chunks:
            merged.setdefault(chunk.family, (chunk.kind, []))[1].extend(zip(chunk.keys, chunk.rows, strict=True))
        return merged


class _Header(msgspec.Struct, array_like=True):
    sequence: int
    written_at: float
    recent_ids: list[str]
    first_segment: int = 0
    # Whether the chunks carry string tables (bases: they restore fast and share values) or plain keys
    # (journal records: cheaper to write, and read back only after a crash).
    tables: bool = True


class _Chunk(msgspec.Struct, array_like=True):
    """A chunk on disk: each distinct label value once, and the keys as `width` indexes into them per series.

    The indexes are packed as little-endian unsigned integers of `index_size` bytes (1, 2 or 4: the
    fewest that hold them) in one byte string, so a restore reads them without making an object per
    index and builds every key in C-level iteration.
    """

    family: str
    kind: str
    strings: list[str]
    width: int
    index_size: int
    keys: bytes
    rows: list[Any]
    labels: tuple[str, ...] | None = None
    buckets: tuple[float, ...] | None = None


class _ListChunk(msgspec.Struct, array_like=True):
    """A chunk of format 3: keys as lists of indexes into the strings."""

    family: str
    kind: str
    strings: list[str]
    keys: list[list[int]]
    rows: list[Any]
    labels: tuple[str, ...] | None = None
    buckets: tuple[float, ...] | None = None


class _PlainChunk(msgspec.Struct, array_like=True):
    family: str
    kind: str
    keys: list[tuple[str, ...]]
    rows: list[Any]
    labels: tuple[str, ...] | None = None
    buckets: tuple[float, ...] | None = None


class _Legacy(msgspec.Struct):
    """The first release's checkpoint (format 2)."""

    written_at: float
    sequence: int
    families: dict[str, Any]
    recent_ids: list[str]


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_chunk_decoder = msgspec.msgpack.Decoder(_Chunk)
_list_chunk_decoder = msgspec.msgpack.Decoder(_ListChunk)
_plain_chunk_decoder = msgspec.msgpack.Decoder(_PlainChunk)
_legacy_decoder = msgspec.msgpack.Decoder(_Legacy)


def chunked(
    family: str,
    kind: str,
    keys: list[tuple[str, ...]],
    rows: list[Any],
    labels: tuple[str, ...] | None = None,
    buckets: tuple[float, ...] | None = None,
) -> Iterator[Chunk]:
    """One family's series in chunks of at most CHUNK_SERIES."""
    for start in range(0, len(keys), CHUNK_SERIES):
        end = start + CHUNK_SERIES
        yield Chunk(family, kind, untracked(keys[start:end]), untracked(rows[start:end]), labels, buckets)


def _encode_chunk(chunk: Chunk) -> bytes:
    keys, rows = chunk.keys, chunk.rows
    widths = set(map(len, keys))
    if len(widths) == 1:
        width = widths.pop()
    else:
        width = len(chunk.labels) if chunk.labels is not None else max(widths, default=0)
    if widths:
        # Keys of another width than the family's labels could not be restored under them anyway (a restore
        # drops them); packed with the others, they would misplace every later value.
        fitting = [index for index, key in enumerate(keys) if len(key) == width]
        log.error(
            "checkpoint: %d series of %s have keys of other lengths than %d (%s); not written",
            len(keys) - len(fitting),
            chunk.family,
            width,
            "its labels" if chunk.labels is not None else "the longest",
        )
        keys, rows = [keys[index] for index in fitting], [rows[index] for index in fitting]
    strings = list(dict.fromkeys(chain.from_iterable(keys)))
    position = {value: index for index, value in enumerate(strings)}.__getitem__
    code = next(code for code, limit in _INDEX_CODES if len(strings) <= limit)
    packed = array(code, map(position, chain.from_iterable(keys)))
    if sys.byteorder == "big":
        packed.byteswap()
    return _encoder.encode(
        _Chunk(
            chunk.family,
            chunk.kind,
            strings,
            width,
            packed.itemsize,
            packed.tobytes(),
            rows,
            chunk.labels,
            chunk.buckets,
        )
    )


# array type codes of unsigned integers by the most strings their indexes can address.
_INDEX_CODES = (("B", 1 << 8), ("H", 1 << 16), ("I", 1 << 32))
_CODE_OF_SIZE = {array(code).itemsize: code for code, _ in _INDEX_CODES}


def _unpack_keys(strings: list[str], width: int, size: int, packed: bytes, count: int) -> list[tuple[str, ...]]:
    """The keys of a chunk from its strings and packed indexes (CorruptCheckpoint if they do not fit)."""
    if not 0 <= width <= MAX_KEY_WIDTH:
        raise CorruptCheckpoint(f"keys of {width} labels")
    code = _CODE_OF_SIZE.get(size)
    if code is None:
        raise CorruptCheckpoint(f"key indexes of {size} bytes")
    if len(packed) % size:
        raise CorruptCheckpoint(f"packed keys of {len(packed)} bytes are not whole indexes")
    if len(packed) // size != width * count:
        raise CorruptCheckpoint(f"{len(packed) // size} key indexes for {count} series of {width} labels")
    if _COMPILED is not None:
        return _COMPILED.unpack_keys(strings, width, size, packed, count)  # type: ignore[no-any-return]
    indexes = array(code)
    indexes.frombytes(packed)
    if sys.byteorder == "big":
        indexes.byteswap()
    if width == 0:
        return [()] * count
    # zip over one iterator `width` times: consecutive indexes grouped into each key's tuple, in C. An index
    # past the strings raises IndexError, which the caller reports as a corrupt checkpoint.
    values = iter(map(strings.__getitem__, indexes))
    return list(zip(*[values] * width, strict=True))


def _encode_plain_chunk(chunk: Chunk) -> bytes:
    return _encoder.encode(_PlainChunk(chunk.family, chunk.kind, chunk.keys, chunk.rows, chunk.labels, chunk.buckets))


def _frames(state: State, tables: bool) -> Iterator[bytes]:
    """A state's frames, each encoded when it is asked for: its header, then its chunks."""
    header = _Header(state.sequence, state.written_at, state.recent_ids, state.first_segment, tables)
    yield _encoder.encode(header)
    yield from map(_encode_chunk if tables else _encode_plain_chunk, state.chunks)


def encode_payload(state: State, tables: bool = True) -> bytes:
    """The framed payload of a state: its header, then its chunks, each encoded on its own."""
    return b"".join(FRAME.pack(len(frame)) + frame for frame in _frames(state, tables))


def write_checkpoint(file: BinaryIO, state: State) -> int:
    """Write a base file frame by frame (never the whole payload in one piece); the bytes written."""
    file.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0))
    length, crc = 0, 0
    for frame in _frames(state, tables=True):
        prefix = FRAME.pack(len(frame))
        file.write(prefix)
        file.write(frame)
        crc = zlib.crc32(frame, zlib.crc32(prefix, crc))
        length += len(prefix) + len(frame)
    file.seek(0)
    file.write(HEADER.pack(MAGIC, FORMAT_VERSION, length, crc))
    return HEADER.size + length


def decode_payload(payload: bytes, version: int = FORMAT_VERSION) -> State:
    frames = []
    offset = 0
    while offset < len(payload):
        if len(payload) - offset < FRAME.size:
            raise CorruptCheckpoint(f"a frame header cut short at byte {offset}")
        (length,) = FRAME.unpack_from(payload, offset)
        offset += FRAME.size
        if len(payload) - offset < length:
            raise CorruptCheckpoint(f"a frame cut short at byte {offset}")
        frames.append(payload[offset : offset + length])
        offset += length
    if not frames:
        raise CorruptCheckpoint("no header")
    try:
        header = _header_decoder.decode(frames[0])
        state = State(header.sequence, header.written_at, header.recent_ids, first_segment=header.first_segment)
        for frame in frames[1:]:
            state.chunks.append(_decode_chunk(frame, version, header.tables))
    except (ValueError, IndexError, OverflowError) as error:  # msgspec's DecodeError is a ValueError
        raise CorruptCheckpoint(f"undecodable payload: {error}") from None
    return state


def _decode_chunk(frame: bytes, version: int, tables: bool) -> Chunk:
    if not tables:
        plain = _plain_chunk_decoder.decode(frame)
        chunk = Chunk(plain.family, plain.kind, plain.keys, plain.rows, plain.labels, plain.buckets)
    elif version == TABLE_LIST_VERSION:
        listed = _list_chunk_decoder.decode(frame)
        if min(chain.from_iterable(listed.keys), default=0) < 0:
            raise CorruptCheckpoint("a negative key index")
        get = listed.strings.__getitem__
        keys = [tuple(map(get, key)) for key in listed.keys]
        chunk = Chunk(listed.family, listed.kind, keys, listed.rows, listed.labels, listed.buckets, shared=True)
    else:
        packed = _chunk_decoder.decode(frame)
        if packed.labels is not None and packed.rows and packed.width != len(packed.labels):
            raise CorruptCheckpoint(f"keys of {packed.width} values under {len(packed.labels)} labels")
        keys = _unpack_keys(packed.strings, packed.width, packed.index_size, packed.keys, len(packed.rows))
        chunk = Chunk(packed.family, packed.kind, keys, packed.rows, packed.labels, packed.buckets, shared=True)
    if len(chunk.keys) != len(chunk.rows):
        raise CorruptCheckpoint(f"{len(chunk.keys)} keys for {len(chunk.rows)} rows")
    return chunk


def encode_checkpoint(state: State) -> bytes:
    """A base file's bytes."""
    payload = encode_payload(state)
    return HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def decode_checkpoint(data: bytes) -> State:
    """A base file (or the first release's checkpoint) read back; CorruptCheckpoint says what is wrong."""
    if len(data) < HEADER.size:
        raise CorruptCheckpoint(f"{len(data)} bytes is shorter than the header")
    magic, version, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint("not a tickbus checkpoint (bad magic)")
    if version not in (FORMAT_VERSION, TABLE_LIST_VERSION, LEGACY_VERSION):
        raise CorruptCheckpoint(f"format version {version}, this aggregator reads {FORMAT_VERSION}")
    payload = data[HEADER.size :]
    if len(payload) != length:
        raise CorruptCheckpoint(f"truncated: {len(payload)} of {length} payload bytes")
    if zlib.crc32(payload) != crc:
        raise CorruptCheckpoint("checksum mismatch")
    if version != LEGACY_VERSION:
        return decode_payload(payload, version)
    try:
        legacy = _legacy_decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise CorruptCheckpoint(f"undecodable payload: {error}") from None
    return State(legacy.sequence, legacy.written_at, legacy.recent_ids, list(_from_legacy(legacy.families)))


def read_first_segment(path: Path) -> int:
    """The first journal segment a base replays, from its header alone (not decoding its series)."""
    with path.open("rb") as file:
        head = file.read(HEADER.size + FRAME.size)
        if len(head) < HEADER.size + FRAME.size:
            raise CorruptCheckpoint(f"{len(head)} bytes is shorter than the header")
        magic, version, _, _ = HEADER.unpack_from(head)
        if magic != MAGIC or version not in (FORMAT_VERSION, TABLE_LIST_VERSION):
            raise CorruptCheckpoint("not a base of this format")
        (length,) = FRAME.unpack_from(head, HEADER.size)
        try:
            return _header_decoder.decode(file.read(length)).first_segment
        except msgspec.DecodeError as error:
            raise CorruptCheckpoint(f"undecodable header: {error}") from None


def _from_legacy(families: dict[str, Any]) -> Iterable[Chunk]:
    """Format 2 rows (the first release) as today's rows: running totals and gauge times inline."""
    for name, (kind, rows) in families.items():
        if kind == "counter":
            series_rows, running_rows = rows
            totals = {tuple(key): value for key, value in running_rows}
            pairs = [(tuple(key), [value, totals[tuple(key)]] if tuple(key) in totals else value)
                     for key, value in series_rows]  # fmt: skip
        elif kind == "gauge":
            pairs = [(tuple(key), [value[0], value[1], updated]) for key, value, updated in rows]
        else:
            pairs = [(tuple(key), row) for key, row in rows]
        yield Chunk(name, kind, [key for key, _ in pairs], [row for _, row in pairs])


def encode_record(state: State) -> bytes:
    """A journal record's bytes (plain keys: a commit is written far more often than it is read)."""
    payload = encode_payload(state, tables=False)
    return RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(data: bytes) -> tuple[list[State], str]:
    """The records of a journal segment, and why reading stopped early ('' if it read to the end)."""
    records: list[State] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < RECORD.size:
            return records, f"a torn record header at byte {offset}"
        length, crc = RECORD.unpack_from(data, offset)
        payload = data[offset + RECORD.size : offset + RECORD.size + length]
        if len(payload) != length:
            return records, f"a torn record at byte {offset} ({len(payload)} of {length} bytes)"
        if zlib.crc32(payload) != crc:
            return records, f"a record with a bad checksum at byte {offset}"
        try:
            records.append(decode_payload(payload))
        except CorruptCheckpoint as error:
            return records, f"an undecodable record at byte {offset}: {error}"
        offset += RECORD.size + length
    return records, ""
