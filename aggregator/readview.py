"""What the renderers read: the store's families, and the series derived at scrape time in one place."""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aggregator.catalog import SOURCE_UP
from aggregator.selfmetrics import PREFIX
from aggregator.sources import Sources
from aggregator.store import AnyFamily, LabelKey, Store

SERIES_NAME = f"{PREFIX}_series"
SERIES_HELP = "Series currently held, per metric."


@dataclass(frozen=True)
class DerivedGauge:
    """A gauge family computed at scrape time rather than kept in the store."""

    name: str
    help: str
    label_names: tuple[str, ...]
    samples: list[tuple[LabelKey, float]]


class ReadView:
    """The read side of the store for /metrics and the prometheus_client Collector; nothing here writes."""

    def __init__(self, store: Store, sources: Sources, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._sources = sources
        self._clock = clock

    def families(self) -> Iterable[AnyFamily]:
        """Every stored family, in the order they were defined."""
        return list(self._store.families.values())

    def derived(self) -> list[DerivedGauge]:
        """`source_up` from heartbeat arrival times, and `tickbus_series` per stored metric."""
        sources = self._sources
        up: list[tuple[LabelKey, float]] = [((source,), value) for source, value in sources.up(self._clock())]
        series: list[tuple[LabelKey, float]] = [
            ((family.name,), float(len(family.series))) for family in self._store.families.values()
        ]
        return [
            DerivedGauge(sources.source_up_name, SOURCE_UP.help, ("source",), up),
            DerivedGauge(SERIES_NAME, SERIES_HELP, ("metric",), series),
        ]
