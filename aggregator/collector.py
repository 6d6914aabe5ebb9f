"""A prometheus_client Collector over the series store, plus the series derived at scrape time."""

import time
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aggregator.catalog import SOURCE_UP
from aggregator.exposition import bucket_label
from aggregator.ingest import Ingest
from aggregator.store import AnyFamily, CounterFamily, GaugeFamily


def _unit(family: AnyFamily) -> str:
    # prometheus_client insists the name ends in the unit; counters carry `_total` after it.
    return family.unit if family.unit and family.name.endswith("_" + family.unit) else ""


def family_metric(family: AnyFamily) -> Metric:
    """The prometheus_client view of one store family."""
    labels = list(family.label_names)
    if isinstance(family, CounterFamily):
        counter = CounterMetricFamily(family.name, family.help, labels=labels)
        for key, value in family.series.items():
            counter.add_metric(key, value)
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
        buckets = []
        for bound, count in zip(bounds, counts, strict=False):
            cumulative += count
            buckets.append((bound, cumulative))
        histogram.add_metric(list(key), buckets, counts[-1])
    return histogram


class StoreCollector(Collector):
    """Exposes every store family, source liveness from heartbeats and the series count per metric.

    For a prometheus_client registry of your own (embedding the store in another process). The
    aggregator's /metrics is rendered by aggregator.exposition, which is tested sample for sample
    against this Collector and is 30 to 50 times faster for large stores.
    """

    def __init__(self, ingest: Ingest, clock: Callable[[], float] = time.time) -> None:
        self._ingest = ingest
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        store = self._ingest.store
        for family in list(store.families.values()):
            yield family_metric(family)
        yield self._source_up()
        series = GaugeMetricFamily("tickbus_series", "Series currently held, per metric.", labels=["metric"])
        for family in list(store.families.values()):
            series.add_metric([family.name], len(family.series))
        yield series

    def _source_up(self) -> Metric:
        up = GaugeMetricFamily(self._ingest.source_up_name, SOURCE_UP.help, labels=["source"])
        stale_before = self._clock() - self._ingest.settings.heartbeat_staleness_seconds
        for key, updated in list(self._ingest.source_last_seen.updated.items()):
            up.add_metric(key, 1.0 if updated >= stale_before else 0.0)
        return up
