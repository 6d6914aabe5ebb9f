"""Checkpoints: the store and recent message ids written atomically to disk, and restored at start."""

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

from aggregator.blackbox import BlackBox
from aggregator.dedup import RecentIds
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import Store

log = logging.getLogger(__name__)

MAGIC = b"TBCK"
FORMAT_VERSION = 2
# magic, format version, payload length, CRC-32 of the payload
HEADER = struct.Struct(">4sHQI")
CURRENT = "checkpoint"
PREVIOUS = "checkpoint.prev"


class CheckpointError(RuntimeError):
    """No checkpoint in the state directory could be read; starting empty would lose counts."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file is truncated, altered or not a checkpoint at all."""


class Snapshot(msgspec.Struct):
    written_at: float
    sequence: int
    families: dict[str, Any]
    recent_ids: list[str]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_checkpoint(snapshot: Snapshot) -> bytes:
    payload = _encoder.encode(snapshot)
    return HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def decode_checkpoint(data: bytes) -> Snapshot:
    if len(data) < HEADER.size:
        raise CorruptCheckpoint(f"{len(data)} bytes is shorter than the header")
    magic, version, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint("not a tickbus checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptCheckpoint(f"format version {version}, this aggregator reads {FORMAT_VERSION}")
    payload = data[HEADER.size :]
    if len(payload) != length:
        raise CorruptCheckpoint(f"truncated: {len(payload)} of {length} payload bytes")
    if zlib.crc32(payload) != crc:
        raise CorruptCheckpoint("checksum mismatch")
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise CorruptCheckpoint(f"undecodable payload: {error}") from None


def _write_durably(directory: Path, data: bytes) -> None:
    """Write, fsync, keep the last good checkpoint as the previous one, rename into place, fsync the directory."""
    temporary = directory / f"{CURRENT}.tmp"
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    current = directory / CURRENT
    if current.exists():
        os.replace(current, directory / PREVIOUS)
    os.replace(temporary, current)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


@dataclass
class Restored:
    path: Path
    sequence: int
    written_at: float
    fell_back: bool


class Checkpointer:
    """Owns the state directory: restores the newest good checkpoint and writes new ones atomically."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        recent_ids: RecentIds,
        metrics: SelfMetrics,
        blackbox: BlackBox | None = None,
    ) -> None:
        self.directory = directory
        self.store = store
        self.recent_ids = recent_ids
        self.metrics = metrics
        # Failures after the last good checkpoint are kept here, so the counter never goes backwards.
        self.blackbox = blackbox
        self.sequence = 0

    def _reconcile_failures(self) -> None:
        if self.blackbox is None:
            return
        failures = self.metrics.checkpoint_failures
        restored = failures.series.get((), 0.0)
        kept = float(self.blackbox.checkpoint_failures)
        if kept > restored:
            failures.series[()] = kept
        self.blackbox.count_checkpoint_failure(int(max(kept, restored)))

    def restore(self) -> Restored | None:
        """Load the current checkpoint, or the previous one if the current is damaged; None if there is none."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f"state directory {self.directory} is unusable: {error}") from None
        candidates = [self.directory / CURRENT, self.directory / PREVIOUS]
        problems = []
        for index, path in enumerate(candidates):
            if not path.exists():
                continue
            try:
                snapshot = decode_checkpoint(path.read_bytes())
            except (CorruptCheckpoint, OSError) as error:
                log.error("checkpoint %s is unreadable: %s", path, error)
                problems.append(f"{path}: {error}")
                continue
            self.store.restore(snapshot.families)
            self.recent_ids.restore(snapshot.recent_ids)
            self.sequence = snapshot.sequence
            fell_back = index > 0 and bool(problems)
            if fell_back:
                log.error(
                    "fell back to the previous checkpoint %s (sequence %d, written %s): counts applied after it "
                    "and already acknowledged are missing",
                    path,
                    snapshot.sequence,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.written_at)),
                )
            else:
                log.info("restored checkpoint %s (sequence %d)", path, snapshot.sequence)
            self._reconcile_failures()
            return Restored(path, snapshot.sequence, snapshot.written_at, fell_back)
        if problems:
            raise CheckpointError(
                "no readable checkpoint in "
                f"{self.directory} ({'; '.join(problems)}). Starting empty would lose every count: move the "
                "files aside to start from zero on purpose."
            )
        self._reconcile_failures()
        return None

    def snapshot(self) -> bytes:
        """The state now, encoded: take it on the event loop, so nothing changes underneath."""
        self.sequence += 1
        return encode_checkpoint(
            Snapshot(time.time(), self.sequence, self.store.snapshot(), self.recent_ids.snapshot())
        )

    async def persist(self, data: bytes) -> None:
        """Write a snapshot durably, in a thread so the event loop goes on ingesting."""
        started = time.perf_counter()
        try:
            await anyio.to_thread.run_sync(_write_durably, self.directory, data)
        except OSError:
            failures = self.metrics.checkpoint_failures
            failures.inc(())
            if self.blackbox is not None:
                self.blackbox.count_checkpoint_failure(int(failures.series[()]))
            raise
        now = time.time()
        self.metrics.checkpoint_seconds.observe((), time.perf_counter() - started)
        self.metrics.set_gauge(self.metrics.last_checkpoint, now, now)
