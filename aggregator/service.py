"""The aggregator service: builds the parts from settings and runs them until SIGTERM or Ctrl-C."""

import logging
import signal
import time
from pathlib import Path

import anyio
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.registry import CollectorRegistry

from aggregator.amqp.consumer import Consumer
from aggregator.checkpoint import Checkpointer
from aggregator.config import Settings
from aggregator.dedup import RecentIds
from aggregator.exposition import Exposition
from aggregator.http import make_app, start_http
from aggregator.ingest import Ingest
from aggregator.pipeline import Pipeline
from aggregator.readview import ReadView
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import Store

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 1.0
QUEUE_DEPTH_INTERVAL = 5.0


class Aggregator:
    """All parts of one aggregator, wired from settings: nothing global, everything passed in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store()
        self.self_metrics = SelfMetrics(self.store)
        self.ingest = Ingest(settings.catalog, settings.metrics, self.store, self.self_metrics)
        self.recent_ids = RecentIds(settings.state.dedup_window)
        self.pipeline = Pipeline(self.ingest, self.recent_ids)
        self.exposition = Exposition(ReadView(self.store, self.ingest.sources))
        # The aggregator's own process metrics (CPU, memory, file descriptors, GC) come from prometheus_client.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.checkpointer: Checkpointer | None = None
        if settings.state.dir:
            self.checkpointer = Checkpointer(Path(settings.state.dir), self.store, self.recent_ids, self.self_metrics)
            self.checkpointer.restore()
        self.consumer = Consumer(
            settings.amqp,
            self.pipeline,
            durability=self.checkpointer,
            commit_interval=settings.state.checkpoint_interval_seconds,
        )
        metrics, now = self.self_metrics, time.time()
        metrics.set_gauge(metrics.start_time, now, now)
        metrics.set_gauge(metrics.consumer_connected, 0.0, now)  # exists, at 0, before the first connection

    async def run(self) -> None:
        """Serve HTTP, consume until SIGTERM/SIGINT (or `request_stop`), then shut down cleanly."""
        self._stop_requested = anyio.Event()
        self._consuming = anyio.Event()
        self._drained = anyio.Event()
        http = self.settings.http
        runner = await start_http(
            make_app(self.exposition, self.registry, lambda: self.consumer.ready), http.host, http.port
        )
        log.info("serving /metrics on http://%s:%d", http.host, http.port)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._stop_on_signal)
                group.start_soon(self._serve)
                await self._stop_requested.wait()
                if self._consuming.is_set():
                    await self.consumer.stop_consuming()
                    await self._drained.wait()
                    await self.consumer.close()
                    log.info("stopped: applied state committed and acked")
                group.cancel_scope.cancel()
        finally:
            await runner.cleanup()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def _serve(self) -> None:
        await self.consumer.start()
        self._consuming.set()
        async with anyio.create_task_group() as group:
            group.start_soon(self._maintain)
            await self.consumer.run()
            group.cancel_scope.cancel()
        self._drained.set()

    async def _stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                log.info("received %s; shutting down", signal.Signals(received).name)
                self.request_stop()
                return

    async def _maintain(self) -> None:
        metrics = self.self_metrics
        last_depth = 0.0
        while True:
            now = time.time()
            self.pipeline.refusal_log.summarise()
            expired = self.ingest.sources.expire(self.store, now)
            if expired:
                metrics.expired_series.inc((), expired)
            metrics.set_gauge(metrics.consumer_connected, 1.0 if self.consumer.ready else 0.0, now)
            if now - last_depth >= QUEUE_DEPTH_INTERVAL:
                last_depth = now
                try:
                    depth = await self.consumer.queue_depth()
                except Exception as error:  # a probe; the consumer reports real trouble itself
                    log.debug("queue depth probe failed: %s", error)
                    depth = None
                if depth is not None:
                    metrics.set_gauge(metrics.queue_messages, float(depth), now)
            await anyio.sleep(MAINTENANCE_INTERVAL)
