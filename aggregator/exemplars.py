"""Exemplars: an event's trace or order id, kept on the histogram bucket or counter it updated."""

import operator
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aggregator.compiler import CompiledCatalog, Feed
from aggregator.store import AnyFamily, CounterFamily, HistogramFamily
from schemas.events import Order

# OpenMetrics limits an exemplar's labels to 128 characters, names and values together.
MAX_EXEMPLAR_LABELS = 128
_trace_id = operator.attrgetter("trace_id")


class Exemplar(NamedTuple):
    """One id on one sample: the label it is shown under, the observed value and the event's time."""

    label: str
    id: str
    value: float
    ts: float


def exemplar_of(event: Any) -> tuple[str, str] | None:
    """The id an event carries for an exemplar (its trace id, or an order's id), if it fits and is printable."""
    if event.trace_id:
        label, value = "trace_id", event.trace_id
    elif type(event) is Order and event.order_id:
        label, value = "order_id", event.order_id
    else:
        return None
    # Control characters (a NUL, a newline) would make Prometheus refuse the whole scrape.
    return (label, value) if len(label) + len(value) <= MAX_EXEMPLAR_LABELS and value.isprintable() else None


class ExemplarRecorder:
    """Keeps the last exemplar of each counter series and histogram bucket that events with ids updated.

    A separate pass over only the events that carry an id, after they are applied, so the update
    functions and the compiled loop do no work for exemplars. Exemplars are not checkpointed:
    Prometheus keeps the ones it scraped.
    """

    def __init__(
        self, compiled: CompiledCatalog, carries: Callable[[list[Any], type[Any]], bool] | None = None
    ) -> None:
        """`carries`: the compiled form of carries_ids, where it was built."""
        self._carries_ids = carries or carries_ids
        self._feeds: dict[type[Any], tuple[tuple[Feed, AnyFamily], ...]] = {
            event_type: tuple(
                (Feed.of(spec), family)
                for spec, family in pairs
                if isinstance(family, CounterFamily | HistogramFamily) and spec.cumulative_key is None
            )
            for event_type, pairs in compiled.by_type.items()
        }

    def record(self, events: Sequence[Any]) -> None:
        if not self._carries_ids(list(events), Order):
            return
        feeds = self._feeds
        for event in events:
            found = exemplar_of(event)
            if found is None:
                continue
            for feed, family in feeds.get(type(event), ()):
                value = feed.value(event)
                if value is None:
                    continue
                key = feed.labels_of(event)
                if key not in family.series:
                    key = family.overflow_key
                exemplar = Exemplar(found[0], found[1], float(value), event.ts)
                keep(family, key, exemplar)


def keep(family: AnyFamily, key: tuple[str, ...], exemplar: Exemplar) -> None:
    """`exemplar` is the newest for the series `key` (a histogram: for the bucket its value falls in)."""
    if isinstance(family, HistogramFamily):
        family.exemplars.setdefault(key, {})[bisect_left(family.bounds, exemplar.value)] = exemplar
    elif isinstance(family, CounterFamily):
        family.exemplars[key] = exemplar


def carries_ids(events: list[Any], order_type: type[Any]) -> bool:
    """Whether any event has a trace id, or is an order with an order id: most messages have none."""
    return any(map(_trace_id, events)) or any(event.order_id for event in events if type(event) is order_type)
