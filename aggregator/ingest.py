"""Applying decoded events to the store: the catalog compiled into one update function per metric."""

import logging
import operator
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.catalog import BUILTIN_CATALOG, SOURCE_UP, Getter, MetricSpec, MetricType
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import AnyFamily, CounterFamily, Family, GaugeFamily, HistogramFamily, Store
from schemas.events import EventBase, Metric, kind_of

log = logging.getLogger(__name__)

Updater = Callable[[Any, float], None]
_source = operator.attrgetter("source")
_ts = operator.attrgetter("ts")


@dataclass(frozen=True)
class EventRejection:
    """An event the catalog refused: its position in the message and why."""

    index: int
    reason: str
    detail: str


def full_name(namespace: str, name: str) -> str:
    return f"{namespace}_{name}" if namespace else name


def make_family(spec: MetricSpec, name: str, max_series: int, on_overflow: Callable[[Family], None]) -> AnyFamily:
    common: dict[str, Any] = {"unit": spec.unit, "max_series": max_series, "on_overflow": on_overflow}
    labels = tuple(spec.labels)
    if spec.type is MetricType.COUNTER:
        return CounterFamily(name, spec.help, labels, **common)
    if spec.type is MetricType.GAUGE:
        return GaugeFamily(
            name, spec.help, labels, exclusive_prefix=spec.exclusive_prefix, ttl=spec.ttl_seconds, **common
        )
    return HistogramFamily(name, spec.help, labels, buckets=spec.buckets, **common)


def _getter(source: Getter) -> Callable[[Any], Any]:
    return operator.attrgetter(source) if isinstance(source, str) else source


def _labels_getter(labels: Mapping[str, Getter]) -> Callable[[Any], tuple[str, ...]]:
    """One call giving the label values: attrgetter for event fields, derived labels (last) appended."""
    sources = list(labels.values())
    names = [source for source in sources if isinstance(source, str)]
    derived = [source for source in sources if not isinstance(source, str)]
    if sources[: len(names)] != names:
        raise ValueError("derived labels must come after the labels taken from event fields")
    fields_of: Callable[[Any], tuple[Any, ...]]
    if len(names) == 1:
        single = operator.attrgetter(names[0])

        def fields_of(event: Any) -> tuple[Any, ...]:
            return (single(event),)
    else:
        fields_of = operator.attrgetter(*names)  # a tuple for 2+ names
    if not derived:
        return fields_of
    if len(derived) == 1:
        (last,) = derived
        return lambda event: (*fields_of(event), last(event))
    return lambda event: (*fields_of(event), *(label(event) for label in derived))


def spec_getters(spec: MetricSpec) -> tuple[Callable[[Any], tuple[str, ...]], Callable[[Any], float | None]]:
    """The label values and the sample value (None: skip this event) that `spec` takes from an event."""
    labels_of = _labels_getter(spec.labels)
    value_of = _getter(spec.value) if spec.value is not None else None
    condition = spec.when
    if condition is None and value_of is not None:
        return labels_of, value_of
    check = operator.attrgetter(condition.field) if condition else None

    def value(event: Any) -> float | None:
        if condition is not None and check is not None and (check(event) in condition.values) is condition.negate:
            return None
        return 1.0 if value_of is None else value_of(event)

    return labels_of, value


def make_updater(spec: MetricSpec, family: AnyFamily) -> Updater:
    """One function that applies an event to `family` as `spec` says.

    This is the hot path, one call per event and metric: the condition is checked and an existing
    series updated inline, and only a new series (admission, the cardinality guard) goes to the family.
    """
    labels_of = _labels_getter(spec.labels)
    value_of = _getter(spec.value) if spec.value is not None else None
    condition = spec.when
    check = operator.attrgetter(condition.field) if condition else None
    allowed = condition.values if condition else frozenset()
    negate = condition.negate if condition else False
    series = family.series

    if isinstance(family, CounterFamily) and spec.cumulative_key is not None:
        instance_of = _getter(spec.cumulative_key)
        assert value_of is not None, "a running total needs a value"

        def add_running_total(event: Any, now: float) -> None:
            total = value_of(event)
            if total is not None:
                family.add_running_total(labels_of(event), instance_of(event), total)

        return add_running_total
    if isinstance(family, CounterFamily):
        inc = family.inc

        def increment(event: Any, now: float) -> None:
            if check is not None and (check(event) in allowed) is negate:
                return
            amount = 1.0 if value_of is None else value_of(event)
            if amount is None:
                return
            key = labels_of(event)
            current = series.get(key)
            if current is None:
                inc(key, amount)
            else:
                series[key] = current + amount

        return increment
    assert value_of is not None, "gauges and histograms need a value"
    if isinstance(family, GaugeFamily):
        gauge_set = family.set

        def set_gauge(event: Any, now: float) -> None:
            if check is not None and (check(event) in allowed) is negate:
                return
            sample = value_of(event)
            if sample is not None:
                gauge_set(labels_of(event), sample, event.ts, now)

        return set_gauge
    observe = family.observe
    bounds = family.bounds

    def observe_histogram(event: Any, now: float) -> None:
        if check is not None and (check(event) in allowed) is negate:
            return
        sample = value_of(event)
        if sample is None:
            return
        key = labels_of(event)
        counts = series.get(key)
        if counts is None:
            observe(key, sample)
        else:
            counts[bisect_left(bounds, sample)] += 1
            counts[-1] += sample

    return observe_histogram


class CustomMetrics:
    """User-declared metrics fed by `metric` events, with their declared label sets enforced."""

    def __init__(self, declared: Sequence[CustomMetric], namespace: str, make: Callable[[MetricSpec, str], AnyFamily]):
        self._by_name: dict[str, tuple[AnyFamily, tuple[str, ...], frozenset[str]]] = {}
        for metric in declared:
            spec = MetricSpec(
                metric.name,
                MetricType(metric.type),
                metric.help,
                {"source": "source", **{label: label for label in metric.labels}},
                unit=metric.unit,
                buckets=tuple(metric.buckets),
                ttl_seconds=metric.ttl_seconds,
            )
            family = make(spec, full_name(namespace, metric.name))
            self._by_name[metric.name] = (family, tuple(metric.labels), frozenset(metric.labels))

    def check(self, event: Metric) -> tuple[str, str] | None:
        """Why the event cannot be applied (reason, detail), or None if it can."""
        declared = self._by_name.get(event.name)
        if declared is None:
            return "undeclared_metric", f"metric {event.name!r} is not declared in the aggregator's config"
        family, _, label_set = declared
        if event.labels.keys() != label_set:
            return (
                "label_mismatch",
                f"metric {event.name!r} takes labels {sorted(label_set)}, got {sorted(event.labels)}",
            )
        if isinstance(family, CounterFamily) and event.value < 0:
            return "negative_increment", f"counter {event.name!r} cannot decrease (value {event.value})"
        if isinstance(family, HistogramFamily) and event.value < 0:
            return (
                "negative_observation",
                f"histogram {event.name!r} observes sizes >= 0 (value {event.value}); put the sign in a label",
            )
        return None

    def apply(self, event: Metric, now: float) -> None:
        family, label_names, _ = self._by_name[event.name]
        family.version += 1
        key = (event.source, *(event.labels[name] for name in label_names))
        if isinstance(family, CounterFamily):
            family.inc(key, event.value)
        elif isinstance(family, GaugeFamily):
            family.set(key, event.value, event.ts, now)
        else:
            family.observe(key, event.value)


class Ingest:
    """The catalog bound to a store: applies events and counts them in the self-metrics."""

    def __init__(
        self,
        settings: CatalogSettings,
        custom_metrics: Sequence[CustomMetric],
        store: Store,
        catalog: Mapping[type[EventBase], tuple[MetricSpec, ...]] = BUILTIN_CATALOG,
    ) -> None:
        self.store = store
        self.settings = settings
        # source -> wall-clock time of its last applied event: gauges of a source that is still
        # talking do not expire.
        self.source_activity: dict[str, float] = {}
        self._overflow_logged: set[str] = set()
        self.self_metrics = SelfMetrics(store, on_overflow=self._on_overflow)

        self.source_up_name = full_name(settings.namespace, SOURCE_UP.name)
        builtin_names = {
            full_name(settings.namespace, spec.name) for specs in [*catalog.values(), (SOURCE_UP,)] for spec in specs
        }

        def make(spec: MetricSpec, name: str) -> AnyFamily:
            if name in builtin_names and (name in store.families or name == self.source_up_name):
                raise ValueError(f"custom metric {spec.name!r} has the name of the built-in metric {name}")
            family = make_family(spec, name, settings.max_series_per_metric, self._on_overflow)
            store.add(family)
            return family

        self.specs: list[tuple[MetricSpec, AnyFamily]] = []
        self._updaters: dict[type[Any], tuple[Updater, ...]] = {}
        self._families: dict[type[Any], tuple[AnyFamily, ...]] = {}
        kinds: list[type[EventBase]] = [*catalog, Metric]
        self._tags: dict[type[Any], str] = {event_type: kind_of(event_type) for event_type in kinds}
        for event_type, specs in catalog.items():
            families = [make(spec, full_name(settings.namespace, spec.name)) for spec in specs]
            self.specs += zip(specs, families, strict=True)
            self._updaters[event_type] = tuple(map(make_updater, specs, families))
            self._families[event_type] = tuple(families)
        last_seen = store.families[full_name(settings.namespace, "source_last_seen_timestamp_seconds")]
        assert isinstance(last_seen, GaugeFamily)
        self.source_last_seen = last_seen
        self.custom = CustomMetrics(custom_metrics, settings.namespace, make)

    def _on_overflow(self, family: Family) -> None:
        if family.name.startswith("tickbus_series_overflow"):
            return
        self.self_metrics.series_overflow.inc((family.name,))
        if family.name not in self._overflow_logged:
            self._overflow_logged.add(family.name)
            log.warning(
                "metric %s reached its limit of %d series; new label sets fold into the %s series",
                family.name,
                family.max_series,
                "__overflow__",
            )

    def apply(self, events: Sequence[Any], now: float) -> list[EventRejection]:
        """Apply every acceptable event; return the ones the catalog refused."""
        rejections: list[EventRejection] = []
        positions: list[int] | None = None
        if events and max(map(_ts, events)) > now + self.settings.max_clock_skew_seconds:
            rejections, positions = self._future_events(events, now)
            events = [events[position] for position in positions]
        kinds = set(map(type, events))
        applied = events
        if Metric in kinds:
            refused = self._apply_with_custom(events, now)
            if refused:
                indexes = {rejection.index for rejection in refused}
                applied = [event for index, event in enumerate(events) if index not in indexes]
                rejections += [
                    EventRejection(index if positions is None else positions[index], reason, detail)
                    for index, reason, detail in ((r.index, r.reason, r.detail) for r in refused)
                ]
        else:
            updaters = self._updaters
            for event in events:
                for update in updaters[type(event)]:
                    update(event, now)
        # Counted per message with C-level iteration: a message repeats a few (kind, source) pairs.
        tags = self._tags
        received = self.self_metrics.events_received
        activity = self.source_activity
        for (event_type, source), count in Counter(zip(map(type, applied), map(_source, applied), strict=True)).items():
            received.inc((tags[event_type], source), count)
            activity[source] = now
        for event_type in kinds:
            for family in self._families.get(event_type, ()):
                family.version += 1
        if applied:
            # Freshness per message: the age of its first event (a batch's oldest, as producers append).
            age = now - applied[0].ts
            self.self_metrics.event_age.observe((), age if age > 0 else 0.0)
        return rejections

    def forget_silent_sources(self, older_than: float) -> None:
        """Stop remembering sources silent since `older_than` (their gauges are gone by then)."""
        for source in [source for source, when in self.source_activity.items() if when < older_than]:
            del self.source_activity[source]

    def _future_events(self, events: Sequence[Any], now: float) -> tuple[list[EventRejection], list[int]]:
        """Refusals for the events stamped too far ahead, and the positions of the others."""
        limit = now + self.settings.max_clock_skew_seconds
        rejections = [
            EventRejection(
                index,
                "future_timestamp",
                f"ts {event.ts:.3f} is {event.ts - now:.0f}s ahead of the aggregator's clock "
                f"(limit {self.settings.max_clock_skew_seconds:g}s): check the producer's clock",
            )
            for index, event in enumerate(events)
            if event.ts > limit
        ]
        return rejections, [index for index, event in enumerate(events) if event.ts <= limit]

    def _apply_with_custom(self, events: Sequence[Any], now: float) -> list[EventRejection]:
        """The slower loop for messages holding `metric` events, which the declared metrics may refuse."""
        updaters = self._updaters
        rejections = []
        for index, event in enumerate(events):
            if type(event) is not Metric:
                for update in updaters[type(event)]:
                    update(event, now)
                continue
            problem = self.custom.check(event)
            if problem is None:
                self.custom.apply(event, now)
            else:
                rejections.append(EventRejection(index, *problem))
        return rejections
