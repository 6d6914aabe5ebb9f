"""Checkpoints: a full base plus a journal of the series each commit changed, so a commit costs what changed."""

import abc
import contextlib
import gc
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from aggregator.accelerated import untracked
from aggregator.blackbox import BlackBox
from aggregator.dedup import RecentIds
from aggregator.selfmetrics import PREFIX as SELF_PREFIX
from aggregator.selfmetrics import SelfMetrics
from aggregator.stateformat import (
    Chunk,
    CorruptCheckpoint,
    State,
    decode_checkpoint,
    encode_record,
    read_first_segment,
    read_records,
    write_checkpoint,
)
from aggregator.store import AnyFamily, LabelKey, Store

log = logging.getLogger(__name__)

BASE = "base"
BASE_PREVIOUS = "base.prev"
# What the first release wrote: a whole snapshot per commit. Read as a base when upgrading.
LEGACY = ("checkpoint", "checkpoint.prev")
SEGMENT = re.compile(r"^journal\.(\d{8})$")
# A base is rewritten once the journal behind it grows past the larger of this and half the base: restart
# then reads the base and at most half as much again.
COMPACT_AFTER_BYTES = 32 * 1024 * 1024


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off while a restore builds the store, and what it built out of its reach after.

    A restore makes millions of objects (keys, values) that hold no reference cycles: with the collector
    on, it walked them again and again and took half of a restart's time at a million series.
    """
    enabled = gc.isenabled()
    gc.collect()  # before: what is garbage now is not frozen with the state (cheap: the store is still empty)
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class CheckpointError(RuntimeError):
    """No checkpoint in the state directory could be read; starting empty would lose counts."""


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _append_durably(path: Path, data: bytes) -> None:
    """Append to a journal segment and fsync it (and the directory, when the segment is new).

    A write the file system cuts short (a full disk) is cut back off, so the records appended once
    space is back do not follow a torn one.
    """
    new = not path.exists()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, start)
            raise
    finally:
        os.close(descriptor)
    if new:
        _fsync_directory(path.parent)


@dataclass
class Restored:
    path: Path
    sequence: int
    written_at: float
    fell_back: bool
    replayed: int = 0


@dataclass
class Commit:
    """What one commit writes, fixed at its commit point: the keys each family changed, and the new ids."""

    sequence: int
    families: list[tuple[AnyFamily, set[LabelKey]]]
    recent_ids: list[str]
    started: float = field(default_factory=time.perf_counter)
    # Every series and every remembered id, not only what changed: the record stands in for a base.
    full: bool = False
    all_ids: list[str] | None = None

    def chunks(self) -> list[Chunk]:
        """The committed rows, read in the writer's thread while ingestion goes on (see Family.committed_row)."""
        chunks: list[Chunk] = []
        for family, keys in self.families:
            if keys:
                ordered = untracked(list(keys))
                chunks += family.chunks(ordered, family.committed_rows(ordered))
        return chunks

    def state(self) -> State:
        """The commit's journal record."""
        return State(
            self.sequence, time.time(), self.recent_ids if self.all_ids is None else self.all_ids, self.chunks()
        )

    @property
    def size(self) -> int:
        return sum(len(keys) for _, keys in self.families)


class CommitLog(abc.ABC):
    """What every checkpoint store shares: the commit point (copy on write), the commit, failures counted.

    A store (a state directory, a RabbitMQ stream) appends a commit's record durably in `_append` and
    may compact afterwards in `_after_commit`.
    """

    def __init__(self, store: Store, recent_ids: RecentIds, metrics: SelfMetrics, blackbox: BlackBox | None) -> None:
        self.store = store
        self.recent_ids = recent_ids
        self.metrics = metrics
        # Failures after the last good checkpoint are kept here, so the counter never goes backwards.
        self.blackbox = blackbox
        self.sequence = 0
        # The catalog's metrics (not tickbus' own) the state being restored holds series of.
        self._held: set[str] = set()

    def capture(self, full: bool = False) -> Commit:
        """The commit point, on the event loop: O(families), whatever the store's size (O(series) if `full`)."""
        self.sequence += 1
        if full:
            for family in self.store.families.values():
                family.dirty.update(family.series)
        families = [(family, family.freeze()) for family in self.store.families.values()]
        new_ids = self.recent_ids.take_new()
        return Commit(self.sequence, families, new_ids, full=full, all_ids=self.recent_ids.snapshot() if full else None)

    async def persist(self, commit: Commit) -> None:
        """Append the commit durably while ingestion goes on; raise OSError if it fails."""
        try:
            size = await self._append(commit)
        except OSError:
            self._thaw(commit, written=False)
            if self.sequence == commit.sequence:
                # The next commit takes this number again, so committed sequences have no gaps.
                self.sequence -= 1
            failures = self.metrics.checkpoint_failures
            failures.inc(())
            if self.blackbox is not None:
                self.blackbox.count_checkpoint_failure(int(failures.series[()]))
            raise
        self._thaw(commit, written=True)
        now = time.time()
        metrics = self.metrics
        metrics.checkpoint_seconds.observe((), time.perf_counter() - commit.started)
        metrics.checkpoint_rows.inc((), commit.size)
        metrics.set_gauge(metrics.last_checkpoint, now, now)
        await self._after_commit(commit, size)

    @abc.abstractmethod
    async def _append(self, commit: Commit) -> int:
        """Write the commit's record durably; its size in bytes. Raise OSError if it could not."""

    @abc.abstractmethod
    async def _after_commit(self, commit: Commit, size: int) -> None:
        """Compact, when the store wants to (after a commit succeeded)."""

    def _thaw(self, commit: Commit, written: bool) -> None:
        for family, _ in commit.families:
            family.thaw(written)
        if not written:
            self.recent_ids.give_back(commit.recent_ids)

    def _reconcile_failures(self) -> None:
        if self.blackbox is None:
            return
        failures = self.metrics.checkpoint_failures
        restored = failures.series.get((), 0.0)
        kept = float(self.blackbox.checkpoint_failures)
        if kept > restored:
            failures.series[()] = kept
        self.blackbox.count_checkpoint_failure(int(max(kept, restored)))

    def _restore_base(self, snapshot: State, where: str) -> None:
        self._hold(snapshot.chunks)
        self._refuse_if_none_defined(where)  # before the store warns of dropping each one
        self.store.restore(snapshot.chunks)
        self.recent_ids.restore(snapshot.recent_ids)
        self.sequence = snapshot.sequence

    def _hold(self, chunks: list[Chunk]) -> None:
        own = f"{SELF_PREFIX}_"
        self._held.update(chunk.family for chunk in chunks if chunk.keys and not chunk.family.startswith(own))

    def _restored(self, where: str) -> None:
        """After a restore: refuse a state none of whose metrics is defined now, then reconcile failures.

        That is a changed namespace (or every custom metric renamed): serving on would drop every series,
        and the next compaction would erase them from the state for good.
        """
        self._refuse_if_none_defined(where)
        self._held = set()
        self._reconcile_failures()

    def _refuse_if_none_defined(self, where: str) -> None:
        held = self._held
        if held and not held & self.store.families.keys():
            examples = ", ".join(sorted(held)[:3])
            raise CheckpointError(
                f"the state in {where} holds series of {len(held)} metric(s) ({examples}, ...) and none of them "
                "is defined now: starting would drop them all, and the next compaction would erase them. If "
                "catalog.namespace or the custom metrics changed by mistake, put them back; to start these "
                "metrics from zero on purpose, move the state aside."
            )

    def _apply_record(self, record: State) -> None:
        self._hold(record.chunks)
        self.store.apply_changes(record.chunks)
        for message_id in record.recent_ids:
            self.recent_ids.add(message_id)
        self.sequence = max(self.sequence, record.sequence)


class Checkpointer(CommitLog):
    """Owns the state directory: restores the newest good state, journals each commit, compacts the journal.

    A commit appends the rows of the series changed since the last one to the journal (a record with a
    checksum, fsynced), so it costs in proportion to what changed, never to the store. The journal is
    folded into a new base in the background once it outgrows the base.
    """

    def __init__(
        self,
        directory: Path,
        store: Store,
        recent_ids: RecentIds,
        metrics: SelfMetrics,
        blackbox: BlackBox | None = None,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
    ) -> None:
        super().__init__(store, recent_ids, metrics, blackbox)
        self.directory = directory
        self.segment = 0
        self._base_bytes = 0
        self._journal_bytes = 0
        self._compact_after_bytes = compact_after_bytes
        self._compacting = False
        # A base copied and written, waiting for a commit that covers everything it holds:
        # (its first segment, the sequence of the last commit before its copy ended).
        self._pending_base: tuple[int, int] | None = None

    # --- restoring -------------------------------------------------------------------------------------

    def restore(self) -> Restored | None:
        """Load the newest readable base and replay the journal after it; None if there is no state yet."""
        with collector_paused():
            return self._restore()

    def _restore(self) -> Restored | None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Found now, not at the first commit: until then /readyz would say ready on a queue never acked.
            tempfile.TemporaryFile(dir=self.directory).close()
        except OSError as error:
            raise CheckpointError(f"state directory {self.directory} is unusable: {error}") from None
        segments = self._segments()
        problems: list[str] = []
        restored: Restored | None = None
        first = 0
        existing = [self.directory / name for name in (BASE, BASE_PREVIOUS, *LEGACY)]
        for path in [path for path in existing if path.exists()]:
            try:
                snapshot = decode_checkpoint(path.read_bytes())
            except (CorruptCheckpoint, OSError) as error:
                log.error("checkpoint %s is unreadable: %s", path, error)
                problems.append(f"{path}: {error}")
                continue
            self._base_bytes = path.stat().st_size
            self._restore_base(snapshot, str(self.directory))
            restored = Restored(path, snapshot.sequence, snapshot.written_at, bool(problems))
            first = snapshot.first_segment
            break
        else:
            if problems:
                raise CheckpointError(
                    "no readable checkpoint in "
                    f"{self.directory} ({'; '.join(problems)}). Starting empty would lose every count: move the "
                    "files aside to start from zero on purpose."
                )
            if segments and min(segments) > 0:
                raise CheckpointError(
                    f"the journal in {self.directory} starts at segment {min(segments)} but there is no base "
                    "for it: the base files were removed. Move the journal aside to start from zero on purpose."
                )
        replayed = self._replay([number for number in segments if number >= first])
        if restored is None and replayed:
            restored = Restored(self.directory / self._segment_name(first), self.sequence, time.time(), False)
        if restored is not None:
            restored.replayed = replayed
            if restored.fell_back and restored.path.name == BASE_PREVIOUS:
                # Compaction keeps the journal segments the previous base needs, so nothing is missing
                # unless the replay said a segment is damaged.
                log.warning(
                    "fell back to the previous checkpoint %s (sequence %d, written %s) and replayed the %d journal "
                    "record(s) kept for it (sequence %d)",
                    restored.path,
                    restored.sequence,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(restored.written_at)),
                    replayed,
                    self.sequence,
                )
            elif restored.fell_back:
                log.error(
                    "fell back to the previous checkpoint %s (sequence %d, written %s): counts applied after it "
                    "and already acknowledged are missing",
                    restored.path,
                    restored.sequence,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(restored.written_at)),
                )
            elif restored.path.name in (BASE, *LEGACY):
                log.info(
                    "restored checkpoint %s and %d journal record(s) (sequence %d)",
                    restored.path,
                    replayed,
                    self.sequence,
                )
            else:
                log.info("restored %d journal record(s), no base yet (sequence %d)", replayed, self.sequence)
        # Never append to a segment a crash may have torn: every run starts a new one.
        self.segment = max(segments, default=-1) + 1
        self._journal_bytes = sum(
            (self.directory / self._segment_name(number)).stat().st_size for number in segments if number >= first
        )
        self._restored(str(self.directory))
        return restored

    def _replay(self, segments: list[int]) -> int:
        replayed = 0
        for number in segments:
            path = self.directory / self._segment_name(number)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CheckpointError(f"journal segment {path} is unreadable: {error}") from None
            records, stopped = read_records(data)
            for record in records:
                self._apply_record(record)
            replayed += len(records)
            if not stopped:
                continue
            if "torn" in stopped:
                # A record cut off by the end of its segment: the commit of a run that died while writing it
                # (or whose write failed), never acknowledged. Later records went to later segments.
                log.info("journal segment %s ends in %s; the commit it held was not acknowledged", path, stopped)
            else:
                # Rows are values, not increments: the later segments still bring every series they hold
                # up to date, so they are replayed; what only the unreadable records held is lost.
                log.error(
                    "journal segment %s is damaged (%s): counts of the records after that point, already "
                    "acknowledged, are missing where later records do not hold them again",
                    path,
                    stopped,
                )
        self.recent_ids.take_new()  # restored ids are not new: the next commit need not journal them again
        return replayed

    # --- committing ------------------------------------------------------------------------------------

    async def _append(self, commit: Commit) -> int:
        size = await anyio.to_thread.run_sync(self._write_record, commit)
        self._journal_bytes += size
        return size

    def _write_record(self, commit: Commit) -> int:
        data = encode_record(commit.state())
        path = self.directory / self._segment_name(self.segment)
        before = path.stat().st_size if path.exists() else 0
        try:
            _append_durably(path, data)
        except OSError:
            # The failed write is cut back off; if even that failed, the next record goes to a new
            # segment rather than after a torn one.
            with contextlib.suppress(OSError):
                if path.stat().st_size != before:
                    self.segment += 1
            raise
        return len(data)

    # --- compacting ------------------------------------------------------------------------------------

    async def _after_commit(self, commit: Commit, size: int) -> None:
        pending = self._pending_base
        if pending is not None and commit.sequence > pending[1]:
            # Everything the new base holds was applied before this commit's point: it is all committed.
            self._pending_base = None
            try:
                await anyio.to_thread.run_sync(self._install_base, pending[0])
            except OSError as error:
                log.error("installing the compacted base failed (%s); the journal keeps everything", error)
        elif not self._compacting and self._journal_bytes > max(self._compact_after_bytes, self._base_bytes // 2):
            self._compacting = True
            self.segment += 1  # changes from here on go to a segment the new base replays
            first = self.segment
            self._journal_bytes = 0
            try:
                size = await anyio.to_thread.run_sync(self._write_base, first)
            except OSError as error:
                log.error("compacting the journal failed (%s); it goes on growing until a compaction succeeds", error)
            else:
                self._base_bytes = size
                self._pending_base = (first, self.sequence)
            finally:
                self._compacting = False

    def _write_base(self, first_segment: int) -> int:
        """Copy the live state and write it as the next base; its size in bytes.

        The copy is read while ingestion goes on, so it may hold changes of commits after the one it
        starts at; replaying the journal from `first_segment` (opened when the copy began) fixes that,
        rows being values, not increments.
        """
        started = time.perf_counter()
        snapshot = State(self.sequence, time.time(), self.recent_ids.snapshot(), self.store.chunks(), first_segment)
        path = self.directory / f"{BASE}.tmp"
        with path.open("wb") as file:
            size = write_checkpoint(file, snapshot)
            file.flush()
            os.fsync(file.fileno())
        _fsync_directory(self.directory)
        self.metrics.compaction_seconds.observe((), time.perf_counter() - started)
        return size

    def _install_base(self, first_segment: int) -> None:
        directory = self.directory
        base = directory / BASE
        previous = directory / BASE_PREVIOUS
        if base.exists():
            os.replace(base, previous)
        os.replace(directory / f"{BASE}.tmp", base)
        _fsync_directory(directory)
        # The previous base stays, with the segments it needs; older segments and the first release's files go.
        keep_from = first_segment
        if previous.exists():
            # Read from its header alone (no checksum): never past what the new base replays, however damaged.
            with contextlib.suppress(CorruptCheckpoint):
                keep_from = min(read_first_segment(previous), first_segment)
        for number in self._segments():
            if number < keep_from:
                (directory / self._segment_name(number)).unlink(missing_ok=True)
        for name in LEGACY:
            (directory / name).unlink(missing_ok=True)
        log.info("compacted the journal into a new base of %d bytes", base.stat().st_size)

    # --- files -----------------------------------------------------------------------------------------

    @staticmethod
    def _segment_name(number: int) -> str:
        return f"journal.{number:08d}"

    def _segments(self) -> list[int]:
        return sorted(int(match[1]) for path in self.directory.iterdir() if (match := SEGMENT.match(path.name)))
