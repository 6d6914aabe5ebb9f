"""Custom metrics: the ones a user declares in the config, fed by `metric` events, their labels enforced."""

from collections.abc import Callable, Sequence

from aggregator.catalog import MetricSpec, MetricType
from aggregator.compiler import full_name, make_family
from aggregator.config import CustomMetric
from aggregator.exemplars import Exemplar, exemplar_of, keep
from aggregator.store import AnyFamily, CounterFamily, Family, GaugeFamily, HistogramFamily, Store
from schemas.events import Metric
from schemas.wire import Reason

Problem = tuple[Reason, str]


def spec_of(metric: CustomMetric) -> MetricSpec:
    """The catalog spec of a declared metric: its own labels after `source`."""
    return MetricSpec(
        metric.name,
        MetricType(metric.type),
        metric.help,
        {"source": "source", **{label: label for label in metric.labels}},
        unit=metric.unit,
        buckets=tuple(metric.buckets),
        ttl_seconds=metric.ttl_seconds,
    )


class Declarations:
    """The declared custom metrics by name: whether a `metric` event fits one, without any store."""

    def __init__(self, declared: Sequence[CustomMetric]) -> None:
        self.by_name = {metric.name: metric for metric in declared}
        self._label_sets = {metric.name: frozenset(metric.labels) for metric in declared}

    def problem(self, event: Metric) -> Problem | None:
        """Why the event cannot be applied (reason, detail), or None if it can."""
        declared = self.by_name.get(event.name)
        if declared is None:
            return Reason.UNDECLARED_METRIC, f"metric {event.name!r} is not declared in the aggregator's config"
        label_set = self._label_sets[event.name]
        if event.labels.keys() != label_set:
            return (
                Reason.LABEL_MISMATCH,
                f"metric {event.name!r} takes labels {sorted(label_set)}, got {sorted(event.labels)}",
            )
        if declared.type == "counter" and event.value < 0:
            return Reason.NEGATIVE_INCREMENT, f"counter {event.name!r} cannot decrease (value {event.value})"
        if declared.type == "histogram" and event.value < 0:
            return (
                Reason.NEGATIVE_OBSERVATION,
                f"histogram {event.name!r} observes sizes >= 0 (value {event.value}); put the sign in a label",
            )
        return None


class CustomMetrics:
    """The declarations bound to store families: checks and applies `metric` events."""

    def __init__(
        self,
        declared: Sequence[CustomMetric],
        store: Store,
        namespace: str,
        max_series: int,
        on_overflow: Callable[[Family], None],
        reserved: set[str],
    ) -> None:
        self._store = store
        self._namespace = namespace
        self.max_series = max_series
        self._on_overflow = on_overflow
        self._reserved = reserved
        self.declarations = Declarations(declared)
        self.families: dict[str, AnyFamily] = {}
        self._label_names: dict[str, tuple[str, ...]] = {}
        for metric in declared:
            self._add(metric)

    def _add(self, metric: CustomMetric) -> None:
        name = full_name(self._namespace, metric.name)
        if name in self._reserved:
            raise ValueError(f"custom metric {metric.name!r} has the name of the built-in metric {name}")
        family = make_family(spec_of(metric), name, self.max_series, self._on_overflow)
        self.families[metric.name] = self._store.add(family)
        self._label_names[metric.name] = tuple(metric.labels)

    def _remove(self, name: str) -> int:
        family = self.families.pop(name)
        del self._label_names[name]
        self._store.remove(family.name)
        return len(family.series)

    def update(self, declared: Sequence[CustomMetric]) -> list[str]:
        """Bring the families in line with new declarations (a reload); returns what changed, for the log.

        A metric whose declaration changed keeps the series that fit the new one (same type, the same
        label names in any order, the same buckets), as a restart would restore them from a checkpoint;
        otherwise it starts again without series.
        """
        for metric in declared:
            name = full_name(self._namespace, metric.name)
            if name in self._reserved:
                raise ValueError(f"custom metric {metric.name!r} has the name of the built-in metric {name}")
        old = self.declarations.by_name
        new = {metric.name: metric for metric in declared}
        changes = []
        for name in [name for name in old if name not in new]:
            changes.append(f"custom metric {name} removed ({self._remove(name)} series dropped)")
        for name, metric in new.items():
            if name not in old:
                self._add(metric)
                changes.append(f"custom metric {name} added")
            elif old[name] != metric:
                previous = self.families[name]
                had = self._remove(name)
                self._add(metric)
                kept = self._store.carry_over(previous, self.families[name])
                changes.append(f"custom metric {name} changed ({kept} series kept, {had - kept} dropped)")
        self.declarations = Declarations(declared)
        return changes

    def problem(self, event: Metric) -> Problem | None:
        return self.declarations.problem(event)

    def apply(self, event: Metric, now: float) -> AnyFamily:
        """Apply a checked event; returns the family it changed."""
        family = self.families[event.name]
        key = (event.source, *(event.labels[name] for name in self._label_names[event.name]))
        if isinstance(family, CounterFamily):
            family.inc(key, event.value)
        elif isinstance(family, GaugeFamily):
            family.set(key, event.value, event.ts, now)
        else:
            assert isinstance(family, HistogramFamily)
            family.observe(key, event.value)
        found = exemplar_of(event)
        if found is not None and not isinstance(family, GaugeFamily):
            keep(family, key if key in family.series else family.overflow_key, Exemplar(*found, event.value, event.ts))
        return family
