"""Refusals: a message or event the aggregator will not apply, why, and a log that summarises floods of them."""

import logging
import time
from dataclasses import dataclass

from schemas.wire import Reason

log = logging.getLogger(__name__)
LOG_WINDOW_SECONDS = 10


@dataclass(frozen=True)
class Refusal:
    """What goes to the dead-letter exchange: why, and which body.

    `position` is the event's place in its batch (None for a whole message or a single event);
    `body` is that event alone, encoded with the message's codec, or empty for the whole message.
    `kind` and `source` are filled in when the refused event still tells them (well formed), for
    counting refusals by producer.
    """

    reason: Reason
    detail: str
    position: int | None = None
    body: bytes = b""
    content_type: str = ""
    kind: str = ""
    source: str = ""


@dataclass(frozen=True)
class RefusalExample:
    """The latest refusal of one reason, for the status page: when (wall clock), why, and from whom."""

    at: float
    detail: str
    kind: str
    source: str
    message_id: str


class RefusalLog:
    """Each refusal is logged with its reason, but a flood of one reason is summarised once per window.

    It also keeps the latest refusal of each reason (`examples`): bounded by the reasons there are.
    """

    def __init__(self, window: float = LOG_WINDOW_SECONDS) -> None:
        self._window = window
        # reason -> (start of its logging window, refusals not logged in it)
        self._windows: dict[Reason, tuple[float, int]] = {}
        self.examples: dict[Reason, RefusalExample] = {}

    def log(self, refusal: Refusal, message_id: str | None) -> None:
        self.examples[refusal.reason] = RefusalExample(
            time.time(), refusal.detail, refusal.kind, refusal.source, message_id or ""
        )
        now = time.monotonic()
        window_start, suppressed = self._windows.get(refusal.reason, (0.0, 0))
        if window_start and now - window_start < self._window:
            self._windows[refusal.reason] = (window_start, suppressed + 1)
            return
        self._summarise(refusal.reason, suppressed)
        self._windows[refusal.reason] = (now, 0)
        log.warning(
            "dead-lettering %s (message %s%s): %s",
            refusal.reason,
            message_id or "without id",
            "" if refusal.position is None else f", event {refusal.position}",
            refusal.detail,
        )

    def _summarise(self, reason: Reason, suppressed: int) -> None:
        if suppressed:
            log.warning("%d more dead-lettered for %s in the last %ds", suppressed, reason, self._window)

    def summarise(self) -> None:
        """Log the counts held back in windows that have ended (the service calls this every second)."""
        now = time.monotonic()
        for reason, (window_start, suppressed) in list(self._windows.items()):
            if suppressed and now - window_start >= self._window:
                self._summarise(reason, suppressed)
                self._windows[reason] = (window_start, 0)
