"""One message in, its events applied or refused: skip redeliveries, decode, check sources, apply, count refusals."""

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.config import SourceAuthSettings
from aggregator.decode import Decoded, MessageDecoder
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.refusal import Refusal, RefusalLog
from schemas.wire import Reason

_source = operator.attrgetter("source")


@dataclass
class Outcome:
    """What became of one message: how many events applied, whether it was a redelivery, what was refused."""

    applied: int = 0
    duplicate: bool = False
    refusals: list[Refusal] = field(default_factory=list)


class SourcePermissions:
    """Which sources each publishing user may speak for (source_auth.users), checked per event."""

    def __init__(self, settings: SourceAuthSettings) -> None:
        self._settings = settings
        self._allowed = settings.allowed()

    def refusals(self, decoded: Decoded, user_id: str | None) -> list[tuple[int, Reason, str]]:
        """(index, source_not_allowed, why) for each event whose source `user_id` may not publish as."""
        events = decoded.events
        if user_id is None:
            why = (
                "the message has no user_id property: with source_auth enabled, a producer sets it to its RabbitMQ "
                "user name (the broker refuses any other)"
            )
            return [(index, Reason.SOURCE_NOT_ALLOWED, why) for index in range(len(events))]
        allowed = self._allowed.get(user_id)
        if allowed is None:
            why = f"user {user_id!r} may publish as no source: source_auth.users has no entry for it"
            return [(index, Reason.SOURCE_NOT_ALLOWED, why) for index in range(len(events))]
        exact, prefixes = allowed
        # A batch comes from a few sources: check each once, then pick out the events of those refused.
        refused = {
            source for source in set(map(_source, events)) if source not in exact and not source.startswith(prefixes)
        }
        if not refused:
            return []
        return [
            (
                index,
                Reason.SOURCE_NOT_ALLOWED,
                f"user {user_id!r} may not publish as source {event.source!r} "
                f"(source_auth.users: {self._settings.users[user_id]})",
            )
            for index, event in enumerate(events)
            if event.source in refused
        ]


class Pipeline:
    """Decodes and applies messages; knows nothing of AMQP beyond body, content type, id and publishing user."""

    def __init__(
        self,
        ingest: Ingest,
        recent_ids: RecentIds,
        decoder: MessageDecoder | None = None,
        clock: Callable[[], float] = time.time,
        source_auth: SourceAuthSettings | None = None,
    ) -> None:
        self.ingest = ingest
        self.recent_ids = recent_ids
        self.decoder = decoder or MessageDecoder()
        # Authenticated sources: None when off, every source is then taken as sent.
        self._sources = SourcePermissions(source_auth) if source_auth is not None and source_auth.enabled else None
        self.refusal_log = RefusalLog()
        self._clock = clock
        metrics = ingest.self_metrics
        self._messages = metrics.messages_received
        self._duplicates = metrics.duplicate_messages
        self._rejected = metrics.events_rejected
        self._batch_events = metrics.batch_events
        self._apply_seconds = metrics.apply_seconds

    def process(
        self, body: bytes, content_type: str | None, message_id: str | None, user_id: str | None = None
    ) -> Outcome:
        """Apply one message; `user_id` is its user_id property, which the broker checked against the publisher."""
        started = time.perf_counter()
        self._messages.inc(())
        if message_id and message_id in self.recent_ids:
            self._duplicates.inc(())
            return Outcome(duplicate=True)
        decoded = self.decoder.decode(body, content_type)
        if decoded.events:
            received = len(decoded.events)
            now = self._clock()
            if self._sources is not None:
                unauthorised = self._sources.refusals(decoded, user_id)
                if unauthorised:
                    decoded.refuse(unauthorised)
            if decoded.events:
                self._refuse_future(decoded, now)
            refused = self.ingest.apply(decoded.events, now)
            if refused:
                decoded.refuse(refused)
            self._batch_events.observe((), received)
        for refusal in decoded.refusals:
            self.count_refusal(refusal, message_id)
        applied = len(decoded.events)
        # Remembered whether applied or refused: a redelivery after a crash then neither counts nor
        # dead-letters it twice. A replay from the dead-letter queue has an id of its own.
        if message_id:
            self.recent_ids.add(message_id)
        self._apply_seconds.observe((), time.perf_counter() - started)
        return Outcome(applied=applied, refusals=decoded.refusals)

    def count_refusal(self, refusal: Refusal, message_id: str | None) -> None:
        """Count a refusal in tickbus_events_rejected_total and log it (floods summarised)."""
        self._rejected.inc((refusal.reason.value, refusal.kind, refusal.source))
        self.refusal_log.log(refusal, message_id)

    def _refuse_future(self, decoded: Decoded, now: float) -> None:
        """A producer clock far ahead would pin gauges (last value by event time): such events are refused."""
        skew = self.ingest.settings.max_clock_skew_seconds
        limit = now + skew
        if self.ingest.latest_ts(decoded.events) <= limit:
            return
        decoded.refuse(
            [
                (
                    index,
                    Reason.FUTURE_TIMESTAMP,
                    f"ts {event.ts:.3f} is {event.ts - now:.0f}s ahead of the aggregator's clock "
                    f"(limit {skew:g}s): check the producer's clock",
                )
                for index, event in enumerate(decoded.events)
                if event.ts > limit
            ]
        )
