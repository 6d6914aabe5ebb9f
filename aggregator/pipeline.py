"""One message in, its events applied: decode, skip redeliveries, apply, and say what to dead-letter."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.decode import MessageDecoder
from aggregator.ingest import Ingest
from schemas.events import EventBase

log = logging.getLogger(__name__)
LOG_WINDOW_SECONDS = 10


@dataclass(frozen=True)
class DeadLetter:
    """What to send to the dead-letter exchange: the offending body and why."""

    body: bytes
    content_type: str
    reason: str
    detail: str
    index: int | None = None
    kind: str = ""
    source: str = ""


@dataclass
class Outcome:
    applied: int = 0
    duplicate: bool = False
    dead_letters: list[DeadLetter] = field(default_factory=list)


class RecentIds:
    """A bounded, insertion-ordered window of message ids already applied."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        ids = self._ids
        ids[message_id] = None
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]

    def snapshot(self) -> list[str]:
        return list(self._ids)

    def restore(self, message_ids: list[str]) -> None:
        self._ids = dict.fromkeys(message_ids[-self.capacity :] if self.capacity else [])


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
        self._clock = clock
        metrics = ingest.self_metrics
        self._messages = metrics.messages_received
        self._duplicates = metrics.duplicate_messages
        self._rejected = metrics.events_rejected
        self._batch_events = metrics.batch_events
        self._apply_seconds = metrics.apply_seconds
        # reason -> (start of its logging window, dead letters not logged in it)
        self._log_windows: dict[str, tuple[float, int]] = {}

    def _log_dead_letter(self, dead_letter: DeadLetter, message_id: str | None) -> None:
        """Each dead letter is logged with its reason, but a flood of one reason is summarised every 10 s."""
        now = time.monotonic()
        window_start, suppressed = self._log_windows.get(dead_letter.reason, (0.0, 0))
        if now - window_start < LOG_WINDOW_SECONDS and window_start:
            self._log_windows[dead_letter.reason] = (window_start, suppressed + 1)
            return
        self._summarise(dead_letter.reason, suppressed)
        self._log_windows[dead_letter.reason] = (now, 0)
        log.warning(
            "dead-lettering %s (message %s%s): %s",
            dead_letter.reason,
            message_id or "without id",
            "" if dead_letter.index is None else f", event {dead_letter.index}",
            dead_letter.detail,
        )

    @staticmethod
    def _summarise(reason: str, suppressed: int) -> None:
        if suppressed:
            log.warning("%d more dead-lettered for %s in the last %ds", suppressed, reason, LOG_WINDOW_SECONDS)

    def summarise_logs(self) -> None:
        """Log the counts held back in windows that have ended (called every second by the service)."""
        now = time.monotonic()
        for reason, (window_start, suppressed) in list(self._log_windows.items()):
            if suppressed and now - window_start >= LOG_WINDOW_SECONDS:
                self._summarise(reason, suppressed)
                self._log_windows[reason] = (window_start, 0)

    def process(self, body: bytes, content_type: str | None, message_id: str | None) -> Outcome:
        started = time.perf_counter()
        self._messages.inc(())
        if message_id and message_id in self.recent_ids:
            self._duplicates.inc(())
            return Outcome(duplicate=True)
        decoded = self.decoder.decode(body, content_type)
        events = decoded.events
        outcome = Outcome(applied=len(events))
        if decoded.rejected:
            codec_type = decoded.codec.content_type if decoded.codec else (content_type or "")
            for rejected in decoded.rejected:
                letter_body = rejected.body or body
                kind, source = self.decoder.envelope(letter_body, content_type)
                outcome.dead_letters.append(
                    DeadLetter(letter_body, codec_type, rejected.reason, rejected.detail, rejected.index, kind, source)
                )
        if events:
            refused = self.ingest.apply(events, self._clock())
            if refused:
                outcome.applied -= len(refused)
                single = len(events) == 1 and not decoded.rejected
                assert decoded.codec is not None
                for refusal in refused:
                    event: EventBase = events[refusal.index]
                    outcome.dead_letters.append(
                        DeadLetter(
                            body if single else decoded.codec.encode([event]),
                            decoded.codec.content_type,
                            refusal.reason,
                            refusal.detail,
                            None if single else decoded.position(refusal.index),
                            "metric",
                            event.source,
                        )
                    )
            self._batch_events.observe((), len(events))
        for dead_letter in outcome.dead_letters:
            self._rejected.inc((dead_letter.reason, dead_letter.kind, dead_letter.source))
            self._log_dead_letter(dead_letter, message_id)
        # A message none of whose events applied is not remembered: replaying it after a fix must count.
        if message_id and outcome.applied:
            self.recent_ids.add(message_id)
        self._apply_seconds.observe((), time.perf_counter() - started)
        return outcome
