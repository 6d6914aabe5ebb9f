"""The series store: metric families as tables of label tuples to values, with a cardinality guard."""

import bisect
import logging
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import repeat
from typing import Any

from aggregator.accelerated import compiled, counter_totals, untracked
from aggregator.catalog import MetricType
from aggregator.stateformat import CHUNK_SERIES, Chunk, chunked

log = logging.getLogger(__name__)

_COMPILED = compiled()

LabelKey = tuple[str, ...]
OVERFLOW_VALUE = "__overflow__"
# Producer instances whose running totals are remembered per series: restarts beyond this are long gone.
MAX_INSTANCES_PER_SERIES = 16
# A label whose values repeat (source, strategy, side) keeps one copy of each value for all its series; one
# with more distinct values than this (an order book's symbols) stops: its values are unique anyway, and a
# table of them would cost more than it saves.
SHARED_VALUES_PER_LABEL = 4096


def share_key(tables: list[dict[str, str] | None], key: LabelKey, limit: int) -> LabelKey:
    """Each value of `key` replaced by its copy in the table of its label; a table stops at `limit` values.

    The reference for the compiled form (aggregator/_fastapply.pyx), which a test holds to it.
    """
    shared = []
    for position, value in enumerate(key):
        table = tables[position] if position < len(tables) else None
        kept = value
        if table is not None:
            found = table.get(value)
            if found is not None:
                kept = found
            elif len(table) >= limit:
                tables[position] = None
            else:
                table[value] = value
        shared.append(kept)
    return tuple(shared)


class Family:
    """One metric family: identity, label names, the series limit, and what changed since the last commit.

    Every change to a series marks its key dirty, and a commit writes the dirty series only (see
    aggregator.checkpoint). While a commit is being written the values it writes must stay as they were
    at its commit point: the first change to such a series keeps its old row in `frozen` (copy on
    write), so the writer never needs the event loop to stop.
    """

    type: MetricType

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        *,
        unit: str = "",
        max_series: int = 10_000,
        on_overflow: Callable[["Family"], None] | None = None,
    ) -> None:
        self.name = name
        self.help = help_text
        self.unit = unit
        self.label_names = tuple(label_names)
        self.max_series = max_series
        self.overflow_key: LabelKey = (OVERFLOW_VALUE,) * len(self.label_names)
        self._on_overflow = on_overflow
        self.series: MutableMapping[LabelKey, Any] = {}
        # Bumped by whoever changes the series (once per message, not per update), so the exposition
        # can reuse a family's rendered text while it is unchanged. Volatile families are always rendered.
        self.version = 0
        self.volatile = False
        # Per label: one copy of each value, or None once the label has too many values to share.
        self._shared: list[dict[str, str] | None] = [{} for _ in self.label_names]
        # Keys changed since the last commit point.
        self.dirty: set[LabelKey] = untracked(set())
        # While a commit is written: the keys it writes, and the rows they had at its commit point.
        self.writing: set[LabelKey] | None = None
        self.frozen: dict[LabelKey, Any] = {}

    def touch(self, key: LabelKey) -> None:
        """`key` is about to change: mark it dirty, and keep its committed row if a commit is writing it."""
        writing = self.writing
        if writing is not None and key in writing and key not in self.frozen:
            self.frozen[key] = self.row(key)
        self.dirty.add(key)

    def row(self, key: LabelKey) -> Any:
        """The checkpoint row of one series (None if it does not exist); never shared with the live value."""
        return self.series.get(key)

    def chunks(self, keys: list[LabelKey], rows: list[Any]) -> Iterator[Chunk]:
        """Series as checkpoint chunks, carrying the label names (and bucket bounds) they were written under."""
        return chunked(self.name, str(self.type), keys, rows, self.label_names, self.bucket_bounds())

    def bucket_bounds(self) -> tuple[float, ...] | None:
        """A histogram's bucket bounds; None for other types."""
        return None

    def load(self, key: LabelKey, row: Any) -> None:
        """Set one series from a checkpoint row (None deletes it)."""
        if row is None:
            self.series.pop(key, None)
        else:
            self.series[key] = row

    def freeze(self) -> set[LabelKey]:
        """The commit point: the dirty keys become the ones being written, and new changes start a new set."""
        keys, self.dirty = self.dirty, untracked(set())
        self.writing, self.frozen = keys, {}
        return keys

    def committed_row(self, key: LabelKey) -> Any:
        """The row of `key` as at the commit point; safe to call from the writer's thread."""
        row = self.row(key)  # the live row first: a change after it leaves the old one in `frozen`
        return self.frozen.get(key, row)

    def committed_rows(self, keys: list[LabelKey]) -> list[Any]:
        """committed_row of each key, in order; safe to call from the writer's thread."""
        row = self.committed_row
        return untracked([row(key) for key in keys])

    def thaw(self, written: bool) -> None:
        """The commit is written (or failed: then its keys are dirty again, to go in the next one)."""
        if not written and self.writing:
            self.dirty |= self.writing
        self.writing, self.frozen = None, {}

    def _admit(self, key: LabelKey) -> LabelKey:
        """The key to store a new series under: itself, or the overflow series once the limit is hit."""
        if len(self.series) < self.max_series or key == self.overflow_key:
            return self.shared_key(key)
        if self._on_overflow is not None:
            self._on_overflow(self)
        return self.overflow_key

    def shared_key(self, key: Iterable[str]) -> LabelKey:
        """`key` with each repeating label value replaced by the one copy the family keeps of it."""
        key = key if type(key) is tuple else tuple(key)
        if _COMPILED is not None:
            return _COMPILED.share_key(self._shared, key, SHARED_VALUES_PER_LABEL)  # type: ignore[no-any-return]
        return share_key(self._shared, key, SHARED_VALUES_PER_LABEL)

    def shared_keys(self, keys: Iterable[LabelKey]) -> list[LabelKey]:
        """shared_key of each key (tuples), in C-level iteration where the compiled helpers were built."""
        if _COMPILED is not None:
            return list(map(_COMPILED.share_key, repeat(self._shared), keys, repeat(SHARED_VALUES_PER_LABEL)))
        return list(map(self.shared_key, keys))

    def rows(self) -> tuple[list[LabelKey], list[Any]]:
        """Every series' key and row, for a full checkpoint (read while ingestion may go on)."""
        keys = untracked(list(self.series))
        row = self.row
        return keys, untracked([row(key) for key in keys])

    def clear(self) -> None:
        """Forget every series (before a restore)."""
        self.series.clear()
        self.dirty.clear()
        self.version += 1

    def load_rows(self, keys: list[LabelKey], rows: list[Any]) -> None:
        """Set many series from checkpoint rows (a restore, or a journal record's); a None row deletes its series."""
        load = self.load
        for key, row in zip(keys, rows, strict=True):
            load(key, row)
        self.version += 1

    def restore(self, rows: Iterable[Any]) -> None:
        """Replace every series with checkpoint rows ([key, row] pairs); nothing restored is dirty."""
        self.clear()
        pairs = [(tuple(key), row) for key, row in rows]
        self.load_rows([key for key, _ in pairs], [row for _, row in pairs])
        self.dirty.clear()

    def discard(self, key: LabelKey) -> None:
        """Forget one series."""
        self.touch(key)
        del self.series[key]
        self.version += 1


class CounterFamily(Family):
    """Monotonic totals; a running total reported by a producer is turned into increases."""

    type = MetricType.COUNTER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.series = counter_totals()
        # series key -> {producer instance: last running total it reported}, newest instances last
        self.running_totals: dict[LabelKey, dict[str, float]] = {}
        # series key -> the last exemplar (aggregator.exemplars) of an event that added to it
        self.exemplars: dict[LabelKey, Any] = {}
        if not self.label_names:
            self.series[()] = 0.0  # a total with no labels exists, at zero, from the start

    def inc(self, key: LabelKey, amount: float = 1.0) -> None:
        series = self.series
        current = series.get(key)
        if current is None:
            key = self._admit(key)
            current = series.get(key, 0.0)
        self.touch(key)
        series[key] = current + amount

    def add_running_total(self, key: LabelKey, instance: str, total: float) -> None:
        """Add the increase of a producer's running total since its last report.

        Totals are kept per producer instance, so two live instances of one source (or reports of an
        old and a new instance arriving interleaved) each add only their own increase.
        """
        self.touch(key)
        instances = self.running_totals.setdefault(key, {})
        previous = instances.pop(instance, None)
        increase = total - previous if previous is not None and total >= previous else total
        instances[instance] = total
        if len(instances) > MAX_INSTANCES_PER_SERIES:
            del instances[next(iter(instances))]
        if increase or key not in self.series:
            self.inc(key, increase)

    def row(self, key: LabelKey) -> Any:
        value = self.series.get(key)
        if value is None:
            return None
        totals = self.running_totals.get(key)
        return [value, dict(totals)] if totals else value

    def committed_rows(self, keys: list[LabelKey]) -> list[Any]:
        if self.running_totals:
            return super().committed_rows(keys)
        return self._plain_rows(keys, self.frozen)

    def rows(self) -> tuple[list[LabelKey], list[Any]]:
        if self.running_totals:
            return super().rows()
        keys = untracked(list(self.series))
        return keys, self._plain_rows(keys, None)

    def _plain_rows(self, keys: list[LabelKey], frozen: dict[LabelKey, Any] | None) -> list[Any]:
        """Plain totals read a slice at a time, each pass one C-level call the event loop cannot interleave with.

        For a commit, the rows changed since its commit point are then taken from `frozen` instead.
        """
        get = self.series.get
        rows: list[Any] = untracked([])
        for start in range(0, len(keys), CHUNK_SERIES):
            part = keys[start : start + CHUNK_SERIES]
            rows += map(get, part) if frozen is None else map(frozen.get, part, list(map(get, part)))
        return rows

    def load(self, key: LabelKey, row: Any) -> None:
        if isinstance(row, list):
            value, totals = row
            self.running_totals[key] = dict(totals)
        else:
            value = row
            self.running_totals.pop(key, None)
        super().load(key, value)

    def clear(self) -> None:
        super().clear()
        self.running_totals.clear()
        self.exemplars.clear()
        if not self.label_names:
            self.series[()] = 0.0

    def load_rows(self, keys: list[LabelKey], rows: list[Any]) -> None:
        if self.running_totals or not set(map(type, rows)) <= {float, int}:
            super().load_rows(keys, rows)  # running totals to keep or drop, or deletions: row by row
        else:  # plain totals, the usual case: one C-level update
            self.series.update(zip(keys, rows, strict=True))
            self.version += 1

    def discard(self, key: LabelKey) -> None:
        super().discard(key)
        self.running_totals.pop(key, None)
        self.exemplars.pop(key, None)


class GaugeFamily(Family):
    """Last value by event time, so a late, older event never overwrites a newer one."""

    type = MetricType.GAUGE

    def __init__(self, *args: Any, exclusive_prefix: int = 0, ttl: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exclusive_prefix = exclusive_prefix
        # Seconds a series lives without updates: None for the store-wide default, 0 for forever.
        self.ttl = ttl
        # series key -> wall-clock time it was last set, for expiry and liveness
        self.updated: dict[LabelKey, float] = {}

    def set(self, key: LabelKey, value: float, event_ts: float, now: float) -> None:
        series = self.series
        current = series.get(key)
        if current is None:
            if self.exclusive_prefix and not self._replace_sibling(key, event_ts):
                return
            key = self._admit(key)
            current = series.get(key)
        if current is not None and event_ts < current[1]:
            return
        self.touch(key)
        series[key] = (value, event_ts)
        self.updated[key] = now

    def _replace_sibling(self, key: LabelKey, event_ts: float) -> bool:
        """Drop the series sharing this key's exclusive prefix, unless it is newer than the event."""
        prefix = key[: self.exclusive_prefix]
        for other in [k for k in self.series if k[: self.exclusive_prefix] == prefix]:
            if self.series[other][1] > event_ts:
                return False
            self.touch(other)
            del self.series[other]
            self.updated.pop(other, None)
        return True

    def expire(self, older_than: float, source_activity: Mapping[str, float]) -> int:
        """Drop series last set before `older_than` whose source (the first label) is silent since too.

        Returns how many. A source still sending events keeps gauges it sets only on change.
        """
        stale = [
            key
            for key, when in self.updated.items()
            if when < older_than and source_activity.get(key[0] if key else "", 0.0) < older_than
        ]
        for key in stale:
            self.touch(key)
            del self.series[key]
            del self.updated[key]
        if stale:
            self.version += 1
        return len(stale)

    def row(self, key: LabelKey) -> Any:
        value = self.series.get(key)
        return None if value is None else [value[0], value[1], self.updated.get(key, 0.0)]

    def load(self, key: LabelKey, row: Any) -> None:
        if row is None:
            self.series.pop(key, None)
            self.updated.pop(key, None)
        else:
            value, event_ts, updated = row
            self.series[key] = (value, event_ts)
            self.updated[key] = updated

    def clear(self) -> None:
        super().clear()
        self.updated.clear()

    def discard(self, key: LabelKey) -> None:
        super().discard(key)
        self.updated.pop(key, None)


class HistogramFamily(Family):
    """Fixed buckets; each series is an array of doubles: [count per bucket..., count above the last bound, sum]."""

    type = MetricType.HISTOGRAM

    def __init__(self, *args: Any, buckets: Sequence[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = tuple(float(bound) for bound in buckets)
        self._width = len(self.bounds) + 2
        # series key -> {bucket index: the last exemplar (aggregator.exemplars) observed into that bucket}
        self.exemplars: dict[LabelKey, dict[int, Any]] = {}
        if not self.label_names:
            self.series[()] = self.empty()

    def empty(self) -> "array[float]":
        return array("d", bytes(8 * self._width))

    def observe(self, key: LabelKey, value: float) -> None:
        series = self.series
        counts = series.get(key)
        if counts is None:
            key = self._admit(key)
            counts = series.get(key)
            if counts is None:
                counts = series[key] = self.empty()
        self.touch(key)
        # Prometheus buckets are upper-inclusive: value == bound lands in that bound's bucket.
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def row(self, key: LabelKey) -> Any:
        counts = self.series.get(key)
        return None if counts is None else counts.tolist()

    def bucket_bounds(self) -> tuple[float, ...] | None:
        return self.bounds

    def discard(self, key: LabelKey) -> None:
        super().discard(key)
        self.exemplars.pop(key, None)

    def load(self, key: LabelKey, row: Any) -> None:
        if row is None:
            self.series.pop(key, None)
        elif len(row) == self._width:
            self.series[key] = array("d", row)

    def clear(self) -> None:
        super().clear()
        self.exemplars.clear()
        if not self.label_names:
            self.series[()] = self.empty()

    def load_rows(self, keys: list[LabelKey], rows: list[Any]) -> None:
        width = self._width
        fits = [(key, row) for key, row in zip(keys, rows, strict=True) if row is not None and len(row) == width]
        self.series.update((key, array("d", row)) for key, row in fits)
        if len(fits) != len(keys):
            log.warning(
                "checkpoint has %d series of %s with other buckets than configured now; dropping them",
                len(keys) - len(fits),
                self.name,
            )
        self.version += 1


AnyFamily = CounterFamily | GaugeFamily | HistogramFamily


class Store:
    """All families the aggregator serves, by full metric name."""

    def __init__(self) -> None:
        self.families: dict[str, AnyFamily] = {}

    def add(self, family: AnyFamily) -> AnyFamily:
        if family.name in self.families:
            raise ValueError(f"metric {family.name!r} is defined twice")
        self.families[family.name] = family
        return family

    def remove(self, name: str) -> None:
        """Stop serving a family (a custom metric removed or redeclared by a reload)."""
        del self.families[name]

    def expire_gauges(self, now: float, default_ttl: float, source_activity: Mapping[str, float]) -> int:
        """Drop the gauge series of sources silent for longer than their family's time to live; returns how many."""
        expired = 0
        for family in self.families.values():
            if isinstance(family, GaugeFamily):
                ttl = default_ttl if family.ttl is None else family.ttl
                if ttl > 0:
                    expired += family.expire(now - ttl, source_activity)
        return expired

    def chunks(self) -> list[Chunk]:
        """Every family's series in chunks, for a full checkpoint (read while ingestion may go on)."""
        chunks: list[Chunk] = []
        for family in list(self.families.values()):
            keys, rows = family.rows()
            chunks += family.chunks(keys, rows)
        return chunks

    def snapshot(self) -> dict[str, Any]:
        """Every family as {name: [type, [[key, row], ...]]}: plain data, for tests and tools."""
        return {
            name: [str(family.type), [[list(key), row] for key, row in zip(*family.rows(), strict=True)]]
            for name, family in list(self.families.items())
        }

    def restore(self, chunks: Iterable[Chunk]) -> None:
        """Load a full checkpoint; what the configuration no longer defines the same way is dropped with a warning.

        A metric may be gone, have another type, or other labels (a custom metric's declaration
        changed): its old series cannot be served under the new definition. Families the checkpoint
        does not have keep what they have.
        """
        cleared: set[str] = set()
        for chunk in chunks:
            family = self._compatible(chunk.family, chunk.kind, quiet=chunk.family in cleared)
            if family is None:
                continue
            if chunk.family not in cleared:
                family.clear()
                cleared.add(chunk.family)
            family.load_rows(*self._fitting(family, chunk))
            family.dirty.clear()

    def apply_changes(self, chunks: Iterable[Chunk]) -> None:
        """Apply a journal record: each changed series' row (None: deleted), the last one winning."""
        for chunk in chunks:
            family = self._compatible(chunk.family, chunk.kind, quiet=True)
            if family is None:
                continue
            family.load_rows(*self._fitting(family, chunk))

    def carry_over(self, old: AnyFamily, new: AnyFamily) -> int:
        """Give a redeclared family (a reload) the old one's series where they fit its labels and buckets.

        What fits is exactly what a restart would restore from a checkpoint under the new declaration, so
        a reload and a restart agree. Returns how many series were kept; they are dirty, so the next commit
        writes them under the new declaration.
        """
        if old.type != new.type:
            return 0
        for chunk in old.chunks(*old.rows()):
            keys, rows = self._fitting(new, chunk, warn=False)
            new.load_rows(keys, rows)
        new.dirty.update(new.series)
        return len(new.series)

    @staticmethod
    def _fitting(family: AnyFamily, chunk: Chunk, warn: bool = True) -> tuple[list[LabelKey], list[Any]]:
        """The chunk's series whose keys have the family's labels, with their values shared.

        Keys written under the same label names in another order are reordered; under other names, or
        (histograms) other bucket bounds, the series are dropped: their values belong to another declaration.
        """
        names = family.label_names
        written = chunk.labels
        dropped = ""
        keys: Iterable[LabelKey] = chunk.keys
        if chunk.buckets is not None and tuple(chunk.buckets) != family.bucket_bounds():
            dropped = f"buckets {list(chunk.buckets)}, configured now with {list(family.bucket_bounds() or ())}"
        elif written is not None and tuple(written) != names:
            if sorted(written) != sorted(names):
                dropped = f"labels {list(written)}, configured now with {list(names)}"
            else:
                order = [list(written).index(name) for name in names]
                keys = [tuple(key[position] for position in order) for key in chunk.keys]
        if dropped:
            if warn:
                log.warning("checkpoint has %s with %s; dropping its %d series", family.name, dropped, len(chunk.keys))
            return [], []
        width = len(names)
        if set(map(len, chunk.keys)) <= {width}:  # the usual case: every key fits
            return (list(keys) if chunk.shared else family.shared_keys(keys)), chunk.rows
        shared_key = family.shared_key
        pairs = [(shared_key(key), row) for key, row in zip(keys, chunk.rows, strict=True) if len(key) == width]
        if len(pairs) != len(chunk.keys) and warn:
            log.warning(
                "checkpoint has %d series of %s with other labels than configured now; dropping them",
                len(chunk.keys) - len(pairs),
                family.name,
            )
        return [key for key, _ in pairs], [row for _, row in pairs]

    def _compatible(self, name: str, kind: str, quiet: bool = False) -> AnyFamily | None:
        family = self.families.get(name)
        if family is None:
            if not quiet:
                log.warning("checkpoint has metric %s, which is no longer defined; dropping it", name)
            return None
        if kind != family.type:
            if not quiet:
                log.warning(
                    "checkpoint has metric %s as a %s, configured now as a %s; dropping it", name, kind, family.type
                )
            return None
        return family
