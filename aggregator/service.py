"""The aggregator service: builds the parts from settings and runs them until SIGTERM or Ctrl-C."""

import contextlib
import gc
import ipaddress
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from aiohttp import web
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.registry import CollectorRegistry

from aggregator.accelerated import compiled_render
from aggregator.amqp.connection import describe
from aggregator.amqp.consumer import Consumer
from aggregator.blackbox import BlackBox
from aggregator.checkpoint import Checkpointer
from aggregator.config import Settings
from aggregator.dedup import RecentIds
from aggregator.exposition import Exposition
from aggregator.http import PROBES, Readiness, make_app, start_http
from aggregator.ingest import Ingest
from aggregator.pipeline import Pipeline
from aggregator.rates import RateWindow, count_totals
from aggregator.readview import ReadView
from aggregator.reload import Reloader
from aggregator.selfmetrics import SelfMetrics
from aggregator.statestream import StreamCheckpointer, stream_name
from aggregator.status import StatusView
from aggregator.store import Store
from aggregator.version import build_info
from aggregator.webconfig import WebGuard

log = logging.getLogger(__name__)


def _exposure(web_guard: WebGuard | None) -> str:
    """What a listener beyond loopback gives away with this web config ("" when TLS and basic auth are on)."""
    if web_guard is None:
        return "without a web config: anyone who reaches this port reads /metrics (set http.web_config_file)"
    if web_guard.config.tls is None:
        return "without TLS: credentials and metrics cross the network in clear text"
    tls = web_guard.config.tls
    if not web_guard.config.users and tls.client_auth_type != "RequireAndVerifyClientCert":
        return "without basic auth or client certificates: anyone who reaches this port reads /metrics"
    return ""


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


MAINTENANCE_INTERVAL = 1.0
# Allocations between young collections, and young (then middle) collections between older ones.
GC_THRESHOLDS = (50_000, 20, 100)
QUEUE_DEPTH_INTERVAL = 5.0


class Aggregator:
    """All parts of one aggregator, wired from settings: nothing global, everything passed in."""

    def __init__(
        self,
        settings: Settings,
        load_settings: Callable[[], Settings] | None = None,
        crash_marker: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store()
        self.self_metrics = SelfMetrics(self.store)
        self.ingest = Ingest(settings.catalog, settings.metrics, self.store, self.self_metrics)
        self.recent_ids = RecentIds(settings.state.dedup_window)
        self.pipeline = Pipeline(self.ingest, self.recent_ids, source_auth=settings.source_auth)
        if self.ingest.loop is None:
            log.warning(
                "the compiled apply loop is not built (tickbus was installed without a C compiler): applying "
                "events with the pure-Python loop, about a third as fast"
            )
        self.exposition = Exposition(ReadView(self.store, self.ingest.sources))
        if compiled_render() is None:
            log.warning(
                "the compiled exposition is not built (tickbus was installed without a C compiler): renders "
                "/metrics in Python, about a sixth as fast for a store's first scrape"
            )
        web_config = settings.http.web_config_file
        # Raises WebConfigError (a ValueError naming the file and the key) before anything is served.
        self.web = WebGuard.open(Path(web_config)) if web_config else None
        self.reloader = Reloader(load_settings or (lambda: settings), settings, self.ingest, self.web)
        # The aggregator's own process metrics (CPU, memory, file descriptors, GC) come from prometheus_client.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.checkpointer: Checkpointer | None = None
        state_dir = Path(settings.state.dir) if settings.state.dir else None
        if state_dir is not None:
            with contextlib.suppress(OSError):  # the checkpointer says what is wrong with it
                state_dir.mkdir(parents=True, exist_ok=True)
        self.blackbox = BlackBox.open(state_dir if state_dir is not None and state_dir.is_dir() else None)
        self.stream: StreamCheckpointer | None = None
        if settings.state.stream:
            self.stream = StreamCheckpointer(
                stream_name(settings.amqp.queue),
                self.store,
                self.recent_ids,
                self.self_metrics,
                self.blackbox,
                max_bytes=settings.state.stream_max_bytes,
            )
        elif state_dir is not None:
            self.checkpointer = Checkpointer(state_dir, self.store, self.recent_ids, self.self_metrics, self.blackbox)
            self.checkpointer.restore()
        if self.blackbox.died_processing is not None:
            log.warning(
                "the last run died while processing message %s (%d time(s) now); at %d it is set aside as poison",
                self.blackbox.died_processing.hex(),
                self.blackbox.crashes(self.blackbox.died_processing),
                settings.state.poison_after,
            )
        self.consumer = Consumer(
            settings.amqp,
            self.pipeline,
            durability=self.stream or self.checkpointer,
            commit_interval=settings.state.checkpoint_interval_seconds,
            blackbox=self.blackbox,
            poison_after=settings.state.poison_after,
            crash_marker=crash_marker,
            take_over=None if self.stream is None else self._take_over,
            released=None if self.stream is None else self._released,
            declare_state=None if self.stream is None else self.stream.declare,
            shard=settings.shard,
        )
        if self.stream is not None:
            self.stream.bind(self.consumer.open_channel)
        # The store holds millions of long-lived objects the cyclic collector would walk again and again
        # (over half the process's time at a million series): what exists now (the restored state) is
        # moved out of its reach, and it runs far less often. Series hold no reference cycles; refcounting
        # frees them.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        metrics, now = self.self_metrics, time.time()
        metrics.set_gauge(metrics.start_time, now, now)
        metrics.set_gauge(metrics.consumer_connected, 0.0, now)  # exists, at 0, before the first connection
        metrics.set_gauge(metrics.checkpoint_failing, 0.0, now)
        build = build_info()
        metrics.set_build_info(build.version, build.revision, build.python, now)
        # Rates on the status page are measured from the totals restored from the checkpoint, not from zero.
        self.rates = RateWindow()
        self.rates.add(count_totals(metrics, now))
        self.status = StatusView(
            self.store,
            metrics,
            self.ingest.sources,
            self.rates,
            self.pipeline.refusal_log,
            self.readiness,
            build,
            settings.catalog.namespace,
            checkpoints=self.checkpointer is not None,
        )

    async def _take_over(self) -> None:
        assert self.stream is not None
        channel = await self.consumer.open_channel()
        try:
            await self.stream.declare(channel)
        finally:
            await channel.close()
        await self.stream.take_over()
        for family in self.store.families.values():
            family.version += 1

    def _released(self) -> None:
        """A replica that was the active one lost its connection: it serves no series until it takes over.

        Another replica may count them meanwhile; showing them here too would count them twice.
        """
        for family in self.store.families.values():
            family.clear()
        self.ingest.sources.activity.clear()
        log.warning("lost the active role with the connection: serving no series until this replica takes over")

    def readiness(self) -> Readiness:
        """Ready while consuming and able to commit; otherwise why not."""
        if not self.consumer.ready:
            return Readiness(False, "not connected to RabbitMQ and consuming")
        failure = self.consumer.ledger.failure
        if failure:
            return Readiness(False, f"cannot commit: checkpoints fail ({failure}); nothing is acked")
        return Readiness(True, "consuming and committing")

    async def run(self) -> bool:
        """Serve HTTP, consume until SIGTERM/SIGINT (or `request_stop`), then shut down cleanly.

        Returns whether everything applied was committed and acked (False: the broker redelivers it).
        """
        self._stop_requested = anyio.Event()
        self._consuming = anyio.Event()
        self._drained = anyio.Event()
        committed = True
        runner = await self._start_http()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._on_signals)
                if self.web is not None and self.settings.http.web_config_poll_seconds > 0:
                    group.start_soon(self.web.watch, self.settings.http.web_config_poll_seconds)
                group.start_soon(self._serve)
                await self._stop_requested.wait()
                if self._consuming.is_set():
                    await self.consumer.stop_consuming()
                    await self._drained.wait()
                    committed = await self._close()
                group.cancel_scope.cancel()
        finally:
            await runner.cleanup()
            self.blackbox.close()
        return committed

    async def _start_http(self) -> web.AppRunner:
        """Serve /metrics and the probes as the web config says, and log how (and how exposed)."""
        http, web_guard = self.settings.http, self.web
        middlewares = [web_guard.middleware(() if http.probes_need_auth else PROBES)] if web_guard else []
        app = make_app(self.exposition, self.registry, self.readiness, self.status, middlewares)
        ssl_context = web_guard.ssl_context if web_guard else None
        runner = await start_http(app, http.host, http.port, ssl_context)
        scheme = web_guard.scheme if web_guard else "http"
        how = web_guard.describe() if web_guard else "no TLS, no basic auth"
        log.info("serving /metrics on %s://%s:%d (%s)", scheme, http.host, http.port, how)
        if not _loopback(http.host):
            exposure = _exposure(web_guard)
            if exposure:
                log.warning("serving on %s %s; see docs/security.md", http.host, exposure)
        return runner

    async def _close(self) -> bool:
        """Commit, ack and disconnect; log what was actually done."""
        ledger = self.consumer.ledger
        try:
            await self.consumer.close()
        except Exception as error:  # the connection may be gone already: say so, the broker redelivers
            log.error("stopped: closing the broker connection failed (%s)", describe(error))
        if ledger.unacked:
            log.error(
                "stopped without committing: %d applied message(s) are not acked (%s); the broker redelivers "
                "them to the next run, which counts them once",
                ledger.unacked,
                f"checkpoints fail: {ledger.failure}" if ledger.failure else "their dead letters were not confirmed",
            )
            return False
        log.info("stopped: applied state committed and acked")
        return True

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def _serve(self) -> None:
        await self.consumer.start()
        self._consuming.set()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._maintain)
                await self.consumer.run()
                group.cancel_scope.cancel()
        except Exception:
            await self.consumer.abandon()  # so the log ends with the error, not "reconnecting"
            raise
        self._drained.set()

    async def _on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for received in signals:
                if received == signal.SIGHUP:
                    log.info("received SIGHUP; reloading the configuration")
                    self.reloader.reload()
                    continue
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
            metrics.set_gauge(metrics.checkpoint_failing, 1.0 if self.consumer.ledger.failure else 0.0, now)
            if self.rates.due(now):
                self.rates.add(count_totals(metrics, now))
            if now - last_depth >= QUEUE_DEPTH_INTERVAL:
                last_depth = now
                await self._probe_queues(now)
            await anyio.sleep(MAINTENANCE_INTERVAL)

    async def _probe_queues(self, now: float) -> None:
        metrics = self.self_metrics
        try:
            depths = await self.consumer.queue_depths()
        except Exception as error:  # a probe; the consumer reports real trouble itself
            log.debug("queue depth probe failed: %s", describe(error))
            return
        if depths is not None:
            metrics.set_gauge(metrics.queue_messages, float(depths[0]), now)
            metrics.set_gauge(metrics.dead_letter_queue_messages, float(depths[1]), now)
