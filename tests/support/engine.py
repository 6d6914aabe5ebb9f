"""The write engine and its read view, wired as the service wires them, for unit tests without a broker."""

import time
from collections.abc import Callable, Sequence

from aggregator.config import CatalogSettings, CustomMetric
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.pipeline import Pipeline
from aggregator.readview import ReadView
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import Store


def make_ingest(
    settings: CatalogSettings | None = None, custom: Sequence[CustomMetric] = (), compiled: bool | None = None
) -> Ingest:
    """An Ingest on a new store with its self-metrics, as the service builds it (`compiled`: which loop)."""
    store = Store()
    return Ingest(settings or CatalogSettings(), custom, store, SelfMetrics(store), compiled=compiled)


def make_pipeline(ingest: Ingest | None = None, window: int = 100) -> Pipeline:
    """A pipeline over `ingest` (a new default one if None) with a window of `window` recent ids."""
    return Pipeline(ingest or make_ingest(), RecentIds(window))


def read_view(ingest: Ingest, clock: Callable[[], float] = time.time) -> ReadView:
    """What the renderers read of `ingest`'s store, at the time `clock` says."""
    return ReadView(ingest.store, ingest.sources, clock)
