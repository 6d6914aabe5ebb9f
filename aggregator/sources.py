"""Source liveness: when each source last sent anything, `source_up` from heartbeats, and forgetting silent sources."""

from collections.abc import Iterator

from aggregator.config import CatalogSettings
from aggregator.store import GaugeFamily, Store


class Sources:
    """What the aggregator knows of each source's life, read by the store's expiry and by both renderers."""

    def __init__(self, settings: CatalogSettings, last_seen: GaugeFamily, source_up_name: str) -> None:
        self.settings = settings
        # The heartbeat gauge: the wall-clock time each source's last heartbeat arrived is its `updated`.
        self.last_seen = last_seen
        self.source_up_name = source_up_name
        # source -> wall-clock time of its last applied event: gauges of a source that is still
        # talking do not expire.
        self.activity: dict[str, float] = {}

    def up(self, now: float) -> Iterator[tuple[str, float]]:
        """(source, 1.0 or 0.0) for every source that ever sent a heartbeat: 1 while its heartbeats are fresh."""
        stale_before = now - self.settings.heartbeat_staleness_seconds
        for key, arrived in list(self.last_seen.updated.items()):
            yield key[0], 1.0 if arrived >= stale_before else 0.0

    def expire(self, store: Store, now: float) -> int:
        """Drop the gauges of sources silent for longer than their time to live; returns how many series went.

        Sources silent for longer than both the gauge expiry and the heartbeat staleness are forgotten.
        """
        settings = self.settings
        expired = store.expire_gauges(now, settings.gauge_ttl_seconds, self.activity)
        older_than = now - max(settings.gauge_ttl_seconds, settings.heartbeat_staleness_seconds)
        for source in [source for source, when in self.activity.items() if when < older_than]:
            del self.activity[source]
        return expired
