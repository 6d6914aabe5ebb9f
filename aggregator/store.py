"""The series store: metric families as plain dicts of label tuples to values, with a cardinality guard."""

import bisect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aggregator.catalog import MetricType

log = logging.getLogger(__name__)

LabelKey = tuple[str, ...]
OVERFLOW_VALUE = "__overflow__"
# Producer instances whose running totals are remembered per series: restarts beyond this are long gone.
MAX_INSTANCES_PER_SERIES = 16


class Family:
    """One metric family: identity, label names and the series limit shared by every type."""

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
        self.series: dict[LabelKey, Any] = {}
        # Bumped by whoever changes the series (once per message, not per update), so the exposition
        # can reuse a family's rendered text while it is unchanged. Volatile families are always rendered.
        self.version = 0
        self.volatile = False

    def _admit(self, key: LabelKey) -> LabelKey:
        """The key to store a new series under: itself, or the overflow series once the limit is hit."""
        if len(self.series) < self.max_series or key == self.overflow_key:
            # Label values repeat across series (source, strategy...): keep one copy of each.
            return tuple(map(sys.intern, key))
        if self._on_overflow is not None:
            self._on_overflow(self)
        return self.overflow_key

    def snapshot(self) -> list[Any]:
        return [[list(key), value] for key, value in self.series.items()]

    def restore(self, rows: Iterable[Any]) -> None:
        # In place: update functions hold a reference to the series dict.
        self.series.clear()
        self.series.update((tuple(map(sys.intern, key)), value) for key, value in rows)
        self.version += 1

    def discard(self, key: LabelKey) -> None:
        """Forget one series."""
        del self.series[key]
        self.version += 1


class CounterFamily(Family):
    """Monotonic totals; a running total reported by a producer is turned into increases."""

    type = MetricType.COUNTER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # series key -> {producer instance: last running total it reported}, newest instances last
        self.running_totals: dict[LabelKey, dict[str, float]] = {}
        if not self.label_names:
            self.series[()] = 0.0  # a total with no labels exists, at zero, from the start

    def inc(self, key: LabelKey, amount: float = 1.0) -> None:
        series = self.series
        current = series.get(key)
        if current is None:
            key = self._admit(key)
            current = series.get(key, 0.0)
        series[key] = current + amount

    def add_running_total(self, key: LabelKey, instance: str, total: float) -> None:
        """Add the increase of a producer's running total since its last report.

        Totals are kept per producer instance, so two live instances of one source (or reports of an
        old and a new instance arriving interleaved) each add only their own increase.
        """
        instances = self.running_totals.setdefault(key, {})
        previous = instances.pop(instance, None)
        increase = total - previous if previous is not None and total >= previous else total
        instances[instance] = total
        if len(instances) > MAX_INSTANCES_PER_SERIES:
            del instances[next(iter(instances))]
        if increase or key not in self.series:
            self.inc(key, increase)

    def snapshot(self) -> list[Any]:
        return [super().snapshot(), [[list(k), v] for k, v in self.running_totals.items()]]

    def restore(self, rows: Iterable[Any]) -> None:
        series_rows, running_rows = rows
        super().restore(series_rows)
        self.running_totals = {tuple(k): dict(v) for k, v in running_rows}

    def discard(self, key: LabelKey) -> None:
        super().discard(key)
        self.running_totals.pop(key, None)


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
        series[key] = (value, event_ts)
        self.updated[key] = now

    def _replace_sibling(self, key: LabelKey, event_ts: float) -> bool:
        """Drop the series sharing this key's exclusive prefix, unless it is newer than the event."""
        prefix = key[: self.exclusive_prefix]
        for other in [k for k in self.series if k[: self.exclusive_prefix] == prefix]:
            if self.series[other][1] > event_ts:
                return False
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
            del self.series[key]
            del self.updated[key]
        if stale:
            self.version += 1
        return len(stale)

    def snapshot(self) -> list[Any]:
        return [[list(key), list(value), self.updated.get(key, 0.0)] for key, value in self.series.items()]

    def restore(self, rows: Iterable[Any]) -> None:
        self.series.clear()
        self.updated.clear()
        for key, value, updated in rows:
            interned = tuple(map(sys.intern, key))
            self.series[interned] = (value[0], value[1])
            self.updated[interned] = updated
        self.version += 1

    def discard(self, key: LabelKey) -> None:
        super().discard(key)
        self.updated.pop(key, None)


class HistogramFamily(Family):
    """Fixed buckets; each series is [count per bucket..., count above the last bound, sum]."""

    type = MetricType.HISTOGRAM

    def __init__(self, *args: Any, buckets: Sequence[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = tuple(float(bound) for bound in buckets)
        self._width = len(self.bounds) + 2
        if not self.label_names:
            self.series[()] = self._empty()

    def observe(self, key: LabelKey, value: float) -> None:
        series = self.series
        counts = series.get(key)
        if counts is None:
            key = self._admit(key)
            counts = series.get(key)
            if counts is None:
                counts = series[key] = self._empty()
        # Prometheus buckets are upper-inclusive: value == bound lands in that bound's bucket.
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def _empty(self) -> list[Any]:
        return [0] * (self._width - 1) + [0.0]

    def restore(self, rows: Iterable[Any]) -> None:
        super().restore(rows)
        mismatched = [key for key, counts in self.series.items() if len(counts) != self._width]
        for key in mismatched:
            del self.series[key]
        if mismatched:
            log.warning(
                "checkpoint has %d series of %s with other buckets than configured now; dropping them",
                len(mismatched),
                self.name,
            )


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

    def snapshot(self) -> dict[str, Any]:
        """Every family as [type, rows]: plain data for the checkpoint."""
        return {name: [str(family.type), family.snapshot()] for name, family in self.families.items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load a snapshot; what the configuration no longer defines the same way is dropped with a warning.

        A metric may be gone, have another type, or other labels (a custom metric's declaration
        changed): its old series cannot be served under the new definition.
        """
        for name, (kind, rows) in snapshot.items():
            family = self.families.get(name)
            if family is None:
                log.warning("checkpoint has metric %s, which is no longer defined; dropping it", name)
                continue
            if kind != family.type:
                log.warning(
                    "checkpoint has metric %s as a %s, configured now as a %s; dropping it", name, kind, family.type
                )
                continue
            family.restore(rows)
            width = len(family.label_names)
            mismatched = [key for key in family.series if len(key) != width]
            for key in mismatched:
                family.discard(key)
            if mismatched:
                log.warning(
                    "checkpoint has %d series of %s with other labels than configured now; dropping them",
                    len(mismatched),
                    name,
                )
