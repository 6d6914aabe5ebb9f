"""One message in, its events applied or refused: skip redeliveries, decode, apply, count and log refusals."""

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.decode import Decoded, MessageDecoder
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.refusal import Refusal, RefusalLog
from schemas.wire import Reason

_ts = operator.attrgetter("ts")


@dataclass
class Outcome:
    """What became of one message: how many events applied, whether it was a redelivery, what was refused."""

    applied: int = 0
    duplicate: bool = False
    refusals: list[Refusal] = field(default_factory=list)


class Pipeline:
    """Decodes and applies messages; knows nothing of AMQP beyond body, content type and id."""

    def __init__(
        self,
        ingest: Ingest,
        recent_ids: RecentIds,
        decoder: MessageDecoder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ingest = ingest
        self.recent_ids = recent_ids
        self.decoder = decoder or MessageDecoder()
        self.refusal_log = RefusalLog()
        self._clock = clock
        metrics = ingest.self_metrics
        self._messages = metrics.messages_received
        self._duplicates = metrics.duplicate_messages
        self._rejected = metrics.events_rejected
        self._batch_events = metrics.batch_events
        self._apply_seconds = metrics.apply_seconds

    def process(self, body: bytes, content_type: str | None, message_id: str | None) -> Outcome:
        started = time.perf_counter()
        self._messages.inc(())
        if message_id and message_id in self.recent_ids:
            self._duplicates.inc(())
            return Outcome(duplicate=True)
        decoded = self.decoder.decode(body, content_type)
        if decoded.events:
            received = len(decoded.events)
            now = self._clock()
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
        if max(map(_ts, decoded.events)) <= limit:
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
