"""Custom metrics: the ones a user declares in the config, fed by `metric` events, their labels enforced."""

from collections.abc import Callable, Sequence

from aggregator.catalog import MetricSpec, MetricType
from aggregator.compiler import full_name, make_family
from aggregator.config import CustomMetric
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
        self.declarations = Declarations(declared)
        self.families: dict[str, AnyFamily] = {}
        self._label_names: dict[str, tuple[str, ...]] = {}
        for metric in declared:
            name = full_name(namespace, metric.name)
            if name in reserved:
                raise ValueError(f"custom metric {metric.name!r} has the name of the built-in metric {name}")
            self.families[metric.name] = store.add(make_family(spec_of(metric), name, max_series, on_overflow))
            self._label_names[metric.name] = tuple(metric.labels)

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
        return family
