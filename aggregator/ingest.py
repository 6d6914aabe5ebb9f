"""Applying a message's decoded events to the store: catalog updates, custom metrics, and what changed."""

import math
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aggregator.catalog import BUILTIN_CATALOG, MetricSpec
from aggregator.compiler import compile_catalog, compiled_loop
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.custom import CustomMetrics
from aggregator.exemplars import ExemplarRecorder
from aggregator.selfmetrics import SelfMetrics
from aggregator.sources import Sources
from aggregator.store import AnyFamily, Store
from schemas.events import EventBase, Metric, kind_of
from schemas.wire import Reason

_source = operator.attrgetter("source")
_ts = operator.attrgetter("ts")


def count_by_type_and_source(events: list[Any]) -> dict[tuple[type[Any], str], int]:
    """{(event type, source): events}: the reference for the compiled form, which a test holds to it."""
    return Counter(zip(map(type, events), map(_source, events), strict=True))


def latest_ts(events: list[Any]) -> float:
    """The largest `ts` of the events (-inf for none): the reference for the compiled form."""
    return max(map(_ts, events), default=-math.inf)


class Ingest:
    """The catalog and the custom metrics bound to a store: applies events, counts them, marks what changed.

    The one place where render-cache versions move for applied events: once per message, for each
    family the message may have touched.
    """

    def __init__(
        self,
        settings: CatalogSettings,
        custom_metrics: Sequence[CustomMetric],
        store: Store,
        self_metrics: SelfMetrics,
        catalog: Mapping[type[EventBase], tuple[MetricSpec, ...]] = BUILTIN_CATALOG,
        compiled: bool | None = None,
    ) -> None:
        """Bind the catalog and the custom metrics to `store`.

        `compiled`: apply with the compiled loop (True), the pure-Python one (False), or the compiled
        one when it was built (None).
        """
        self.store = store
        self.settings = settings
        self.self_metrics = self_metrics
        overflow = self_metrics.count_overflow
        self.compiled = compile_catalog(store, settings.namespace, settings.max_series_per_metric, overflow, catalog)
        self.custom = CustomMetrics(
            custom_metrics,
            store,
            settings.namespace,
            settings.max_series_per_metric,
            overflow,
            self.compiled.reserved_names(),
        )
        self.sources = Sources(settings, self.compiled.last_seen, self.compiled.source_up_name)
        self._updaters = self.compiled.updaters
        self._families = self.compiled.families
        self.loop = compiled_loop(compiled)
        self._plan = None if self.loop is None else self.loop.plan(self.compiled)
        self._plan_apply = None if self.loop is None else self.loop.apply
        self._count: Callable[[list[Any]], dict[tuple[type[Any], str], int]] = (
            count_by_type_and_source if self.loop is None else self.loop.count_by_type_and_source
        )
        self.latest_ts: Callable[[list[Any]], float] = latest_ts if self.loop is None else self.loop.latest_ts
        self.exemplars = ExemplarRecorder(self.compiled, None if self.loop is None else self.loop.carries_ids)
        kinds: list[type[EventBase]] = [*catalog, Metric]
        self._tags: dict[type[Any], str] = {event_type: kind_of(event_type) for event_type in kinds}

    def set_catalog_settings(self, settings: CatalogSettings) -> None:
        """New limits from a reload: series limits, gauge expiry, heartbeat staleness, clock skew."""
        self.settings = settings
        self.sources.settings = settings
        self.custom.max_series = settings.max_series_per_metric
        for family in [*(family for _, family in self.compiled.specs), *self.custom.families.values()]:
            family.max_series = settings.max_series_per_metric

    @property
    def specs(self) -> list[tuple[MetricSpec, AnyFamily]]:
        return self.compiled.specs

    def apply(self, events: Sequence[Any], now: float) -> list[tuple[int, Reason, str]]:
        """Apply every acceptable event; return (index, reason, detail) for the ones the custom metrics refused."""
        kinds = set(map(type, events))
        applied = events
        refused: list[tuple[int, Reason, str]] = []
        touched: set[AnyFamily] = set()
        if Metric in kinds:
            refused = self._apply_with_custom(events, now, touched)
            if refused:
                indexes = {index for index, _, _ in refused}
                applied = [event for index, event in enumerate(events) if index not in indexes]
        elif self._plan_apply is not None and self._plan is not None:
            self._plan_apply(list(events), self._plan, now)
        else:
            updaters = self._updaters
            for event in events:
                for update in updaters[type(event)]:
                    update(event, now)
        self.exemplars.record(applied)
        # Counted per message with C-level iteration: a message repeats a few (kind, source) pairs.
        tags = self._tags
        received = self.self_metrics.events_received
        activity = self.sources.activity
        for (event_type, source), count in self._count(list(applied)).items():
            received.inc((tags[event_type], source), count)
            activity[source] = now
        for event_type in kinds:
            touched.update(self._families.get(event_type, ()))
        for family in touched:
            family.version += 1
        if applied:
            # Freshness per message: the age of its first event (a batch's oldest, as producers append).
            age = now - applied[0].ts
            self.self_metrics.event_age.observe((), age if age > 0 else 0.0)
        return refused

    def _apply_with_custom(
        self, events: Sequence[Any], now: float, touched: set[AnyFamily]
    ) -> list[tuple[int, Reason, str]]:
        """The slower loop for messages holding `metric` events, which the declared metrics may refuse."""
        updaters = self._updaters
        custom = self.custom
        refused = []
        for index, event in enumerate(events):
            if type(event) is not Metric:
                for update in updaters[type(event)]:
                    update(event, now)
                continue
            problem = custom.problem(event)
            if problem is None:
                touched.add(custom.apply(event, now))
            else:
                refused.append((index, *problem))
        return refused
