"""Applying decoded events to the store: the catalog compiled into one update function per metric."""

import logging
import operator
from bisect import bisect_left
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
    sources = list(labels.values())
    if all(isinstance(source, str) for source in sources):
        names = [source for source in sources if isinstance(source, str)]
        if len(names) == 1:
            single = operator.attrgetter(names[0])
            return lambda event: (single(event),)
        return operator.attrgetter(*names)  # a tuple for 2+ names
    getters = [_getter(source) for source in sources]
    return lambda event: tuple(getter(event) for getter in getters)


def spec_getters(spec: MetricSpec) -> tuple[Callable[[Any], tuple[str, ...]], Callable[[Any], float | None]]:
    """The label values and the sample value (None: skip this event) that `spec` takes from an event."""
    labels_of = _labels_getter(spec.labels)
    value_of = _getter(spec.value) if spec.value is not None else None
    when = spec.when
    requires = spec.requires
    if value_of is not None and when is None and not requires:
        return labels_of, value_of  # the common case: no Python frame between the event and its value

    def value(event: Any) -> float | None:
        if when is not None and not when(event):
            return None
        for field_name in requires:
            if getattr(event, field_name) is None:
                return None
        return 1.0 if value_of is None else value_of(event)

    return labels_of, value


def make_updater(spec: MetricSpec, family: AnyFamily) -> Updater:
    """One function that applies an event to `family` as `spec` says."""
    labels_of, value = spec_getters(spec)

    if isinstance(family, CounterFamily) and spec.cumulative_key is not None:
        instance_of = _getter(spec.cumulative_key)

        def add_running_total(event: Any, now: float) -> None:
            total = value(event)
            if total is not None:
                family.add_running_total(labels_of(event), instance_of(event), total)

        return add_running_total
    # The update functions below touch an existing series directly and leave a new one (admission,
    # the cardinality guard) to the family: this is the hot path, one call per event and metric.
    series = family.series
    if isinstance(family, CounterFamily):
        inc = family.inc
        if spec.value is None and spec.when is None and not spec.requires:

            def count(event: Any, now: float) -> None:
                key = labels_of(event)
                current = series.get(key)
                if current is None:
                    inc(key)
                else:
                    series[key] = current + 1.0

            return count

        def increment(event: Any, now: float) -> None:
            amount = value(event)
            if amount is not None:
                key = labels_of(event)
                current = series.get(key)
                if current is None:
                    inc(key, amount)
                else:
                    series[key] = current + amount

        return increment
    if isinstance(family, GaugeFamily):
        gauge_set = family.set

        def set_gauge(event: Any, now: float) -> None:
            sample = value(event)
            if sample is not None:
                gauge_set(labels_of(event), sample, event.ts, now)

        return set_gauge
    observe = family.observe
    bounds = family.bounds

    def observe_histogram(event: Any, now: float) -> None:
        sample = value(event)
        if sample is not None:
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
        self._overflow_logged: set[str] = set()
        self.self_metrics = SelfMetrics(store, on_overflow=self._on_overflow)

        builtin_names = {full_name(settings.namespace, spec.name) for specs in catalog.values() for spec in specs}

        def make(spec: MetricSpec, name: str) -> AnyFamily:
            if name in store.families and name in builtin_names:
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
        self.source_up_name = full_name(settings.namespace, SOURCE_UP.name)
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
        updaters = self._updaters
        tags = self._tags
        received = self.self_metrics.events_received
        received_series = received.series
        kinds_seen: set[type[Any]] = set()
        last_type: type[Any] | None = None
        for index, event in enumerate(events):
            event_type = type(event)
            if event_type is Metric:
                problem = self.custom.check(event)
                if problem is not None:
                    reason, detail = problem
                    rejections.append(EventRejection(index, reason, detail))
                    continue
                self.custom.apply(event, now)
            else:
                if event_type is not last_type:
                    kinds_seen.add(event_type)
                    last_type = event_type
                for update in updaters[event_type]:
                    update(event, now)
            key = (tags[event_type], event.source)
            current = received_series.get(key)
            if current is None:
                received.inc(key)
            else:
                received_series[key] = current + 1.0
        for event_type in kinds_seen:
            for family in self._families[event_type]:
                family.version += 1
        if events:
            # Freshness per message: the age of its first event (a batch's oldest, as producers append).
            age = now - events[0].ts
            self.self_metrics.event_age.observe((), age if age > 0 else 0.0)
        return rejections

    def kinds(self) -> list[str]:
        return [kind_of(event_type) for event_type in self._updaters]
