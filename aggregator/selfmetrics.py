"""The aggregator's own metrics: what it received, rejected, folded, checkpointed and how fresh it is."""

import logging

from aggregator.catalog import LATENCY_BUCKETS
from aggregator.store import OVERFLOW_VALUE, CounterFamily, Family, GaugeFamily, HistogramFamily, Store

log = logging.getLogger(__name__)

PREFIX = "tickbus"
BATCH_SIZE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
AGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class SelfMetrics:
    """Families under the `tickbus_` prefix, registered in the same store as the catalog's.

    Built once by the service and passed to whatever counts: the pipeline, the ingest, the checkpointer.
    """

    def __init__(self, store: Store) -> None:
        self._overflow_logged: set[str] = set()

        def add_counter(name: str, help_text: str, *labels: str) -> CounterFamily:
            family = CounterFamily(f"{PREFIX}_{name}", help_text, labels, on_overflow=self.count_overflow)
            family.volatile = True
            store.add(family)
            return family

        def add_gauge(name: str, help_text: str, *labels: str, unit: str = "") -> GaugeFamily:
            family = GaugeFamily(f"{PREFIX}_{name}", help_text, labels, unit=unit, ttl=0)
            family.volatile = True
            store.add(family)
            return family

        def add_histogram(name: str, help_text: str, buckets: tuple[float, ...], unit: str = "") -> HistogramFamily:
            family = HistogramFamily(f"{PREFIX}_{name}", help_text, (), unit=unit, buckets=buckets)
            family.volatile = True
            store.add(family)
            return family

        self.events_received = add_counter(
            "events_received_total", "Events received and applied, by kind and source.", "kind", "source"
        )
        self.events_rejected = add_counter(
            "events_rejected_total",
            "Events or messages rejected and dead-lettered, by reason (kind and source when known).",
            "reason",
            "kind",
            "source",
        )
        self.messages_received = add_counter("messages_received_total", "AMQP messages received.")
        self.duplicate_messages = add_counter(
            "duplicate_messages_total", "Messages skipped because their id was already applied (redeliveries)."
        )
        self.series_overflow = add_counter(
            "series_overflow_total",
            "Updates folded into the overflow series (one per event whose new label set did not fit the "
            "metric's series limit).",
            "metric",
        )
        self.dead_letters_dropped = add_counter(
            "dead_letters_dropped_total",
            "Dead letters RabbitMQ refused (nacked) because the dead-letter queue was full (its max-length or "
            "max-length-bytes with overflow reject-publish): counted in events_rejected_total, but not kept.",
            "reason",
        )
        self.checkpoint_failures = add_counter("checkpoint_failures_total", "Checkpoints that failed to write.")
        self.expired_series = add_counter(
            "expired_series_total", "Gauge series dropped because their source stopped updating them."
        )
        self.batch_events = add_histogram("batch_events", "Events per received message.", BATCH_SIZE_BUCKETS)
        self.event_age = add_histogram(
            "event_age_seconds",
            "Time from an event's producer timestamp to its arrival at the aggregator.",
            AGE_BUCKETS,
            unit="seconds",
        )
        self.apply_seconds = add_histogram(
            "apply_seconds", "Time to decode and apply one message.", LATENCY_BUCKETS, unit="seconds"
        )
        self.checkpoint_seconds = add_histogram(
            "checkpoint_seconds",
            "Time to commit: from the commit point to its journal record written and fsynced.",
            LATENCY_BUCKETS,
            unit="seconds",
        )
        self.checkpoint_rows = add_counter(
            "checkpoint_rows_total", "Series rows written to the checkpoint journal (the series each commit changed)."
        )
        self.compaction_seconds = add_histogram(
            "checkpoint_compaction_seconds",
            "Time to copy the state into a new checkpoint base, in the background.",
            LATENCY_BUCKETS,
            unit="seconds",
        )
        self.last_checkpoint = add_gauge(
            "last_checkpoint_timestamp_seconds", "Time of the last successful checkpoint.", unit="seconds"
        )
        self.queue_messages = add_gauge("queue_messages", "Messages waiting in the aggregator's queue.")
        self.dead_letter_queue_messages = add_gauge(
            "dead_letter_queue_messages",
            "Messages in the aggregator's dead-letter queue: refused by it, or dead-lettered by the broker.",
        )
        self.checkpoint_failing = add_gauge(
            "checkpoint_failing",
            "1 while checkpoints fail: nothing is acked (the broker keeps the messages) until one succeeds.",
        )
        self.consumer_connected = add_gauge(
            "consumer_connected", "1 while the aggregator is connected to RabbitMQ and consuming."
        )
        self.start_time = add_gauge(
            "start_time_seconds", "Start time of the aggregator, seconds since the epoch.", unit="seconds"
        )
        self.build_info = add_gauge(
            "build_info", "Version, source revision and Python of the aggregator, as labels; always 1.",
            "version", "revision", "python",
        )  # fmt: skip

    def set_gauge(self, family: GaugeFamily, value: float, now: float) -> None:
        family.set((), value, now, now)

    def set_build_info(self, version: str, revision: str, python: str, now: float) -> None:
        """Set the one `build_info` series to this run's build (a restored checkpoint may hold an older build's)."""
        family = self.build_info
        for key in list(family.series):
            family.discard(key)
        family.set((version, revision, python), 1.0, now, now)

    def count_overflow(self, family: Family) -> None:
        """A family folded a new label set into its overflow series: count it, and say so once per family."""
        if family is self.series_overflow:
            return
        self.series_overflow.inc((family.name,))
        if family.name not in self._overflow_logged:
            self._overflow_logged.add(family.name)
            log.warning(
                "metric %s reached its limit of %d series; new label sets fold into the %s series",
                family.name,
                family.max_series,
                OVERFLOW_VALUE,
            )
