"""A prometheus_client Collector over the store's read view: the reference the fast renderer is tested against."""

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from aggregator.exposition import bucket_label
from aggregator.readview import ReadView
from aggregator.store import AnyFamily, CounterFamily, GaugeFamily


def _unit(family: AnyFamily) -> str:
    # prometheus_client insists the name ends in the unit; counters carry `_total` after it.
    return family.unit if family.unit and family.name.endswith("_" + family.unit) else ""


def _exemplar(exemplar: Any) -> Exemplar:
    return Exemplar({exemplar.label: exemplar.id}, exemplar.value, exemplar.ts)


def family_metric(family: AnyFamily) -> Metric:
    """The prometheus_client view of one store family."""
    labels = list(family.label_names)
    if isinstance(family, CounterFamily):
        counter = CounterMetricFamily(family.name, family.help, labels=labels)
        for key, value in family.series.items():
            counter.add_metric(key, value)
            exemplar = family.exemplars.get(key)
            if exemplar is not None:
                sample = counter.samples[-1]
                counter.samples[-1] = sample._replace(exemplar=_exemplar(exemplar))
        return counter
    if isinstance(family, GaugeFamily):
        gauge = GaugeMetricFamily(family.name, family.help, labels=labels, unit=_unit(family))
        for key, (value, _) in family.series.items():
            gauge.add_metric(key, value)
        return gauge
    histogram = HistogramMetricFamily(family.name, family.help, labels=labels, unit=_unit(family))
    bounds = [bucket_label(bound) for bound in family.bounds] + ["+Inf"]
    for key, counts in family.series.items():
        cumulative = 0
        buckets: list[Any] = []
        marks = family.exemplars.get(key, {})
        for index, (bound, count) in enumerate(zip(bounds, counts, strict=False)):
            cumulative += int(count)
            mark = marks.get(index)
            buckets.append((bound, cumulative) if mark is None else (bound, cumulative, _exemplar(mark)))
        histogram.add_metric(list(key), buckets, counts[-1])
    return histogram


class StoreCollector(Collector):
    """Exposes every store family and the series derived at scrape time, through prometheus_client.

    For a prometheus_client registry of your own (embedding the store in another process). The
    aggregator's /metrics is rendered by aggregator.exposition, which is tested sample for sample
    against this Collector and is 30 to 50 times faster for large stores.
    """

    def __init__(self, view: ReadView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        for family in self._view.families():
            yield family_metric(family)
        for derived in self._view.derived():
            gauge = GaugeMetricFamily(derived.name, derived.help, labels=list(derived.label_names))
            for key, value in derived.samples:
                gauge.add_metric(key, value)
            yield gauge
