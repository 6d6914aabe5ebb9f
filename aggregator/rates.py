"""Rates over the last minute: a bounded ring of samples of the received and rejected totals, for the status page."""

import math
from collections import deque
from dataclasses import dataclass, field

from aggregator.selfmetrics import SelfMetrics

WINDOW_SECONDS = 60.0
SAMPLE_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class Totals:
    """The received and rejected totals at one moment: events per source and per kind, refusals per reason."""

    at: float
    by_source: dict[str, float] = field(default_factory=dict)
    by_kind: dict[str, float] = field(default_factory=dict)
    rejected_by_reason: dict[str, float] = field(default_factory=dict)

    @property
    def events(self) -> float:
        return math.fsum(self.by_kind.values())

    @property
    def rejected(self) -> float:
        return math.fsum(self.rejected_by_reason.values())


def count_totals(metrics: SelfMetrics, now: float) -> Totals:
    """Sum `tickbus_events_received_total` by source and by kind, `tickbus_events_rejected_total` by reason.

    Reads the counters only. One pass over their series: a few per source, so cheap with thousands of sources.
    """
    by_source: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for (kind, source), count in metrics.events_received.series.items():
        by_source[source] = by_source.get(source, 0.0) + count
        by_kind[kind] = by_kind.get(kind, 0.0) + count
    rejected: dict[str, float] = {}
    for (reason, _kind, _source), count in metrics.events_rejected.series.items():
        rejected[reason] = rejected.get(reason, 0.0) + count
    return Totals(now, by_source, by_kind, rejected)


class RateWindow:
    """Samples of the totals every `interval` seconds, the newest covering `window` seconds.

    Memory is bounded: window / interval + 1 samples of one number per source, kind and reason.
    A rate is the increase since the oldest sample, divided by the time since it.
    """

    def __init__(self, window: float = WINDOW_SECONDS, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self.window = window
        self.interval = interval
        self._samples: deque[Totals] = deque(maxlen=max(1, math.ceil(window / interval)) + 1)

    def due(self, now: float) -> bool:
        """Whether a new sample is due (the service's maintenance loop asks every second)."""
        return not self._samples or now - self._samples[-1].at >= self.interval

    def add(self, totals: Totals) -> None:
        self._samples.append(totals)

    def baseline(self) -> Totals | None:
        """The oldest sample kept: rates are measured from it (about `window` seconds ago once running)."""
        return self._samples[0] if self._samples else None

    def __len__(self) -> int:
        return len(self._samples)
