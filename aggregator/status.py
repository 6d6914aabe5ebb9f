"""The status page (/) and its data (/status.json): sources, rates, recent refusals, checkpoints, queue; read only."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aggregator.compiler import full_name
from aggregator.rates import RateWindow, Totals, count_totals
from aggregator.refusal import RefusalLog
from aggregator.selfmetrics import SelfMetrics
from aggregator.sources import Sources
from aggregator.store import GaugeFamily, Store
from aggregator.version import BuildInfo

DEFAULT_SOURCES_SHOWN = 100
MAX_SOURCES_SHOWN = 1000
DETAIL_MAX_CHARS = 300


@dataclass(frozen=True)
class StatusQuery:
    """What the page asks for: at most `limit` sources, those whose name contains `filter`."""

    limit: int = DEFAULT_SOURCES_SHOWN
    filter: str = ""

    @classmethod
    def parse(cls, query: dict[str, str]) -> "StatusQuery":
        """From the URL's query string; a bad limit falls back to the default (the page is read by people)."""
        try:
            limit = int(query.get("limit", DEFAULT_SOURCES_SHOWN))
        except ValueError:
            limit = DEFAULT_SOURCES_SHOWN
        return cls(max(0, min(limit, MAX_SOURCES_SHOWN)), query.get("filter", "")[:200])


def _gauge_value(family: GaugeFamily, key: tuple[str, ...] = ()) -> float | None:
    value = family.series.get(key)
    return None if value is None else float(value[0])


class StatusView:
    """The status page's data from the store, self-metrics, sources, rate window and refusal log.

    It writes nothing to any of them.
    """

    def __init__(
        self,
        store: Store,
        metrics: SelfMetrics,
        sources: Sources,
        rates: RateWindow,
        refusals: RefusalLog,
        readiness: Callable[[], tuple[bool, str]],
        build: BuildInfo,
        namespace: str,
        checkpoints: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._sources = sources
        self._rates = rates
        self._refusals = refusals
        self._readiness = readiness
        self._build = build
        self._namespace = namespace
        self._checkpoints = checkpoints
        self._clock = clock
        self.page = resources.files("aggregator").joinpath("static/status.html").read_bytes()

    def _catalog_gauge(self, name: str) -> GaugeFamily | None:
        family = self._store.families.get(full_name(self._namespace, name))
        return family if isinstance(family, GaugeFamily) else None

    def snapshot(self, query: StatusQuery) -> dict[str, Any]:
        """Everything the page shows, as plain data (encoded as JSON by the HTTP layer)."""
        now = self._clock()
        current = count_totals(self._metrics, now)
        baseline = self._rates.baseline() or Totals(now)
        elapsed = max(now - baseline.at, 1e-9)
        ready, why = self._readiness()
        metrics = self._metrics
        started = _gauge_value(metrics.start_time)
        return {
            "now": now,
            "build": {"version": self._build.version, "revision": self._build.revision, "python": self._build.python},
            "started_at": started,
            "ready": ready,
            "readiness": why,
            "consumer_connected": _gauge_value(metrics.consumer_connected) == 1.0,
            "window_seconds": now - baseline.at,
            "events": self._events(current, baseline, elapsed),
            "sources": self._source_rows(current, baseline, elapsed, now, query),
            "rejections": self._rejections(current, baseline),
            "checkpoint": self._checkpoint(now),
            "queue": {
                "messages": _gauge_value(metrics.queue_messages),
                "dead_letters": _gauge_value(metrics.dead_letter_queue_messages),
            },
        }

    @staticmethod
    def _events(current: Totals, baseline: Totals, elapsed: float) -> dict[str, Any]:
        kinds = [
            (kind, (total - baseline.by_kind.get(kind, 0.0)) / elapsed, total)
            for kind, total in current.by_kind.items()
        ]
        kinds.sort(key=lambda row: (-row[1], -row[2], row[0]))
        return {
            "rate": (current.events - baseline.events) / elapsed,
            "total": current.events,
            "by_kind": [{"kind": kind, "rate": rate, "total": total} for kind, rate, total in kinds],
        }

    def _source_rows(
        self, current: Totals, baseline: Totals, elapsed: float, now: float, query: StatusQuery
    ) -> dict[str, Any]:
        sources = self._sources
        up = dict(sources.up(now))
        heartbeats = {key[0]: arrived for key, arrived in sources.last_seen.updated.items()}
        healthy_family = self._catalog_gauge("source_healthy")
        healthy = {key[0]: value[0] == 1.0 for key, value in (healthy_family.series if healthy_family else {}).items()}
        info_family = self._catalog_gauge("source_info")
        versions = {key[0]: key[1] for key in (info_family.series if info_family else {})}
        names = set(sources.activity) | set(heartbeats) | set(current.by_source)
        matching = [name for name in names if query.filter in name] if query.filter else list(names)
        rates = {
            name: (current.by_source.get(name, 0.0) - baseline.by_source.get(name, 0.0)) / elapsed for name in matching
        }
        # Trouble first (down, then unhealthy), then the busiest now, then the busiest ever.
        totals = current.by_source
        matching.sort(
            key=lambda name: (
                up.get(name) != 0.0,
                healthy.get(name) is not False,
                -rates[name],
                -totals.get(name, 0.0),
                name,
            )
        )
        rows = []
        for name in matching[: query.limit]:
            seen = [when for when in (heartbeats.get(name), sources.activity.get(name)) if when is not None]
            rows.append(
                {
                    "source": name,
                    "up": None if name not in up else up[name] == 1.0,
                    "healthy": healthy.get(name),
                    "version": versions.get(name),
                    "last_seen": max(seen) if seen else None,
                    "rate": rates[name],
                    "total": current.by_source.get(name, 0.0),
                }
            )
        return {
            "count": len(names),
            "matching": len(matching),
            "up": sum(1 for value in up.values() if value == 1.0),
            "down": sum(1 for value in up.values() if value != 1.0),
            "rows": rows,
        }

    def _rejections(self, current: Totals, baseline: Totals) -> dict[str, Any]:
        examples = self._refusals.examples
        reasons = [
            (reason, total - baseline.rejected_by_reason.get(reason, 0.0), total)
            for reason, total in current.rejected_by_reason.items()
        ]
        reasons.sort(key=lambda row: (-row[1], -row[2], row[0]))
        rows = []
        for reason, recent, total in reasons:
            example = examples.get(reason)  # type: ignore[call-overload]  # a StrEnum key equals its value
            rows.append(
                {
                    "reason": reason,
                    "recent": recent,
                    "total": total,
                    "example": None
                    if example is None
                    else {
                        "at": example.at,
                        "detail": example.detail[:DETAIL_MAX_CHARS],
                        "kind": example.kind,
                        "source": example.source,
                        "message_id": example.message_id,
                    },
                }
            )
        return {"recent": current.rejected - baseline.rejected, "total": current.rejected, "by_reason": rows}

    def _checkpoint(self, now: float) -> dict[str, Any]:
        metrics = self._metrics
        last = _gauge_value(metrics.last_checkpoint)
        return {
            "enabled": self._checkpoints,
            "last": last,
            "age_seconds": None if last is None else now - last,
            "failures": metrics.checkpoint_failures.series.get((), 0.0),
            "failing": _gauge_value(metrics.checkpoint_failing) == 1.0,
        }
