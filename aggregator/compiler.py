"""The catalog compiler: metric specs turned into store families and one update function per spec."""

import operator
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aggregator.accelerated import compiled
from aggregator.catalog import BUILTIN_CATALOG, SOURCE_UP, Getter, MetricSpec, MetricType
from aggregator.store import AnyFamily, CounterFamily, Family, GaugeFamily, HistogramFamily, Store
from schemas.events import EventBase

Updater = Callable[[Any, float], None]
LAST_SEEN = "source_last_seen_timestamp_seconds"


def full_name(namespace: str, name: str) -> str:
    """A catalog metric's exposed name: `<namespace>_<name>`."""
    return f"{namespace}_{name}" if namespace else name


def make_family(spec: MetricSpec, name: str, max_series: int, on_overflow: Callable[[Family], None]) -> AnyFamily:
    """An empty store family for `spec`, exposed as `name`."""
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


@dataclass(frozen=True)
class Feed:
    """How a spec reads an event: its label values, its sample, and the condition the event must meet.

    The parts are kept apart so that the update functions can check the condition inline (the hot
    path) while `value` composes them for whoever needs one function (the benchmark's mirror).
    """

    labels_of: Callable[[Any], tuple[str, ...]]
    sample_of: Callable[[Any], Any] | None
    condition_of: Callable[[Any], Any] | None
    allowed: frozenset[Any]
    negate: bool

    @classmethod
    def of(cls, spec: MetricSpec) -> "Feed":
        condition = spec.when
        return cls(
            _labels_getter(spec.labels),
            _getter(spec.value) if spec.value is not None else None,
            operator.attrgetter(condition.field) if condition else None,
            condition.values if condition else frozenset(),
            condition.negate if condition else False,
        )

    def value(self, event: Any) -> float | None:
        """The sample this spec takes from `event`: None when the event does not meet the condition or lacks it."""
        if self.condition_of is not None and (self.condition_of(event) in self.allowed) is self.negate:
            return None
        return 1.0 if self.sample_of is None else self.sample_of(event)


def make_updater(spec: MetricSpec, family: AnyFamily) -> Updater:
    """One function that applies an event to `family` as `spec` says.

    This is the hot path, one call per event and metric: the condition is checked and an existing
    series updated inline (marked dirty for the next commit), and only a new series (admission, the
    cardinality guard) goes to the family.
    """
    feed = Feed.of(spec)
    if isinstance(family, CounterFamily):
        if spec.cumulative_key is not None:
            return _running_total_updater(feed, family, _getter(spec.cumulative_key))
        return _counter_updater(feed, family)
    assert feed.sample_of is not None, "gauges and histograms need a value"
    if isinstance(family, GaugeFamily):
        return _gauge_updater(feed, family)
    return _histogram_updater(feed, family)


def _running_total_updater(feed: Feed, family: CounterFamily, instance_of: Callable[[Any], Any]) -> Updater:
    labels_of, value_of = feed.labels_of, feed.sample_of
    assert value_of is not None, "a running total needs a value"

    def add_running_total(event: Any, now: float) -> None:
        total = value_of(event)
        if total is not None:
            family.add_running_total(labels_of(event), instance_of(event), total)

    return add_running_total


def _counter_updater(feed: Feed, family: CounterFamily) -> Updater:
    labels_of, value_of, check, allowed, negate = (
        feed.labels_of, feed.sample_of, feed.condition_of, feed.allowed, feed.negate
    )  # fmt: skip
    series, inc = family.series, family.inc

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
            return
        family.touch(key)
        series[key] = current + amount

    return increment


def _gauge_updater(feed: Feed, family: GaugeFamily) -> Updater:
    labels_of, value_of, check, allowed, negate = (
        feed.labels_of, feed.sample_of, feed.condition_of, feed.allowed, feed.negate
    )  # fmt: skip
    assert value_of is not None
    gauge_set = family.set

    def set_gauge(event: Any, now: float) -> None:
        if check is not None and (check(event) in allowed) is negate:
            return
        sample = value_of(event)
        if sample is not None:
            gauge_set(labels_of(event), sample, event.ts, now)

    return set_gauge


def _histogram_updater(feed: Feed, family: HistogramFamily) -> Updater:
    labels_of, value_of, check, allowed, negate = (
        feed.labels_of, feed.sample_of, feed.condition_of, feed.allowed, feed.negate
    )  # fmt: skip
    assert value_of is not None
    series, observe, bounds = family.series, family.observe, family.bounds

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
            return
        family.touch(key)
        counts[bisect_left(bounds, sample)] += 1
        counts[-1] += sample

    return observe_histogram


@dataclass
class CompiledCatalog:
    """The catalog bound to a store: per event type, its families and their update functions."""

    namespace: str
    specs: list[tuple[MetricSpec, AnyFamily]]
    updaters: dict[type[Any], tuple[Updater, ...]]
    families: dict[type[Any], tuple[AnyFamily, ...]]
    # Per event type: each spec with its family, in the order of `updaters`.
    by_type: dict[type[Any], tuple[tuple[MetricSpec, AnyFamily], ...]]
    # The heartbeat gauge whose arrival times make `source_up`.
    last_seen: GaugeFamily

    @property
    def source_up_name(self) -> str:
        return full_name(self.namespace, SOURCE_UP.name)

    def reserved_names(self) -> set[str]:
        """Every name the built-in catalog serves, including the scrape-time `source_up`."""
        return {family.name for _, family in self.specs} | {self.source_up_name}


def compile_catalog(
    store: Store,
    namespace: str,
    max_series: int,
    on_overflow: Callable[[Family], None],
    catalog: Mapping[type[EventBase], Iterable[MetricSpec]] = BUILTIN_CATALOG,
) -> CompiledCatalog:
    """Add a family per spec to `store` and compile its update function."""
    specs: list[tuple[MetricSpec, AnyFamily]] = []
    updaters: dict[type[Any], tuple[Updater, ...]] = {}
    families: dict[type[Any], tuple[AnyFamily, ...]] = {}
    by_type: dict[type[Any], tuple[tuple[MetricSpec, AnyFamily], ...]] = {}
    for event_type, event_specs in catalog.items():
        made = tuple(
            (spec, store.add(make_family(spec, full_name(namespace, spec.name), max_series, on_overflow)))
            for spec in event_specs
        )
        specs += made
        by_type[event_type] = made
        updaters[event_type] = tuple(make_updater(spec, family) for spec, family in made)
        families[event_type] = tuple(family for _, family in made)
    last_seen = store.families[full_name(namespace, LAST_SEEN)]
    assert isinstance(last_seen, GaugeFamily)
    return CompiledCatalog(namespace, specs, updaters, families, by_type, last_seen)


Plan = dict[type[Any], tuple[Any, ...]]


class CompiledLoop:
    """The apply loop compiled from aggregator/_fastapply.pyx: the update functions' work, in C.

    The pure-Python update functions stay the reference, and a test holds the two to the same series.
    """

    def __init__(self, module: Any) -> None:
        self._module = module
        self.apply: Callable[[list[Any], Plan, float], None] = module.apply
        self.count_by_type_and_source: Callable[[list[Any]], dict[tuple[type[Any], str], int]] = (
            module.count_by_type_and_source
        )
        self.latest_ts: Callable[[list[Any]], float] = module.latest_ts
        self.carries_ids: Callable[[list[Any], type[Any]], bool] = module.carries_ids

    def plan(self, compiled: CompiledCatalog) -> Plan:
        """Each event type's updates in compiled form (falling back to its update function where needed)."""
        make = self._module.make_update
        return {
            event_type: tuple(
                make(spec, family, event_type, updater)
                for (spec, family), updater in zip(pairs, compiled.updaters[event_type], strict=True)
            )
            for event_type, pairs in compiled.by_type.items()
        }


def compiled_loop(wanted: bool | None = None) -> CompiledLoop | None:
    """The compiled loop if it was built (or `wanted`); None for the pure-Python one."""
    if wanted is False:
        return None
    module = compiled()
    if module is None:
        if wanted:
            raise RuntimeError(
                "the compiled apply loop (aggregator._fastapply) is not built: install tickbus where a C "
                "compiler is available"
            )
        return None
    return CompiledLoop(module)
