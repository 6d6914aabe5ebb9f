"""`aggregator top`: a live terminal view of a running aggregator, from its /metrics and /status.json."""

import base64
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One reading of an aggregator: its samples by name, its status data if it serves /status.json, and when."""

    at: float
    samples: dict[str, dict[Labels, float]]
    status: dict[str, Any] | None = None

    def value(self, name: str) -> float | None:
        series = self.samples.get(name, {})
        return series.get((), None)

    def sum_by(self, name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            totals[dict(labels).get(label, "")] += value
        return dict(totals)


@dataclass
class Target:
    """Where the aggregator is: its base URL (without credentials) and the Authorization header, if any."""

    base: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> "Target":
        """`http://user:password@host:port` becomes basic auth on `http://host:port`."""
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        headers = {}
        netloc = parts.netloc
        if parts.username is not None:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            netloc = netloc.rpartition("@")[2]
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return cls(base, headers)

    def get(self, path: str, timeout: float) -> bytes:
        request = urllib.request.Request(f"{self.base}{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body


def read(target: Target, timeout: float = 5.0) -> Scrape:
    """Scrape /metrics (required) and /status.json (if the aggregator serves it)."""
    text = target.get("/metrics", timeout).decode()
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    status = None
    try:
        status = json.loads(target.get("/status.json?limit=50", timeout))
    except (urllib.error.HTTPError, ValueError):
        status = None  # an aggregator without the status page: the metrics alone still say most of it
    return Scrape(time.time(), dict(samples), status)


def _rates(current: dict[str, float], previous: dict[str, float], seconds: float) -> dict[str, float]:
    return {key: max(0.0, value - previous.get(key, 0.0)) / seconds for key, value in current.items()}


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _yes_no(value: bool | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    return Text("yes", style="green") if value else Text("no", style="bold red")


class TopView:
    """Turns successive scrapes into the screen.

    Rates come from the difference of two scrapes (for the first one, from /status.json's last minute).
    """

    def __init__(self, target: Target, sources_shown: int = 15, live: bool = True) -> None:
        self.target = target
        self.sources_shown = sources_shown
        self.live = live
        self.previous: Scrape | None = None
        self.current: Scrape | None = None
        self.error: str = ""

    def refresh(self) -> None:
        try:
            scraped = read(self.target)
        except (OSError, ValueError) as error:
            self.error = f"cannot read {self.target.base}/metrics: {error}; retrying"
            return
        self.error = ""
        self.previous, self.current = self.current, scraped

    def _rates_by(self, name: str, label: str) -> dict[str, float] | None:
        current, previous = self.current, self.previous
        if current is None or previous is None or current.at <= previous.at:
            return None
        return _rates(current.sum_by(name, label), previous.sum_by(name, label), current.at - previous.at)

    def render(self) -> RenderableType:
        header = Text(f"tickbus top  {self.target.base}", style="bold")
        scrape = self.current
        if scrape is None:
            return Group(header, Text(self.error or "connecting...", style="bold red"))
        parts: list[RenderableType] = [self._header(header, scrape)]
        if self.error:
            parts.append(Text(self.error, style="bold red"))
        parts += [self._overview(scrape), self._kinds(scrape), self._sources(scrape), self._rejections(scrape)]
        return Group(*parts)

    def _header(self, header: Text, scrape: Scrape) -> Text:
        build = next(iter(scrape.samples.get("tickbus_build_info", {})), ())
        version = dict(build).get("version")
        if version:
            header.append(f"  tickbus {version} ({dict(build).get('revision', '?')})", style="dim")
        connected = scrape.value("tickbus_consumer_connected") == 1.0
        header.append("  consuming" if connected else "  NOT CONSUMING", style="green" if connected else "bold red")
        if scrape.status is not None and not scrape.status.get("ready", True):
            header.append(f" (not ready: {scrape.status.get('readiness', '')})", style="bold red")
        quits = "  Ctrl-C quits" if self.live else ""
        header.append(f"  updated {time.strftime('%H:%M:%S', time.localtime(scrape.at))}{quits}", style="dim")
        return header

    def _overview(self, scrape: Scrape) -> Table:
        table = Table.grid(padding=(0, 3))
        received = self._rates_by("tickbus_events_received_total", "kind")
        total_rate = None if received is None else math.fsum(received.values())
        if total_rate is None and scrape.status is not None:
            total_rate = scrape.status["events"]["rate"]
        up, down = self._up_down(scrape)
        last_checkpoint = scrape.value("tickbus_last_checkpoint_timestamp_seconds")
        failing = scrape.value("tickbus_checkpoint_failing") == 1.0
        started = scrape.value("tickbus_start_time_seconds")
        rows = [
            ("events/s", _number(total_rate)),
            ("sources up/down", f"{up}/{down}"),
            ("queue", _number(scrape.value("tickbus_queue_messages"), 0)),
            ("dead letters", _number(scrape.value("tickbus_dead_letter_queue_messages"), 0)),
            ("checkpoint age", _age(None if last_checkpoint is None else scrape.at - last_checkpoint)),
            ("checkpoint failures", _number(scrape.value("tickbus_checkpoint_failures_total"), 0)),
            ("up for", _age(None if started is None else scrape.at - started)),
        ]
        for _ in rows:
            table.add_column()
        table.add_row(*(Text(label, style="dim") for label, _ in rows))
        table.add_row(
            *(
                Text(value, style="bold red" if label == "checkpoint failures" and failing else "bold")
                for label, value in rows
            )
        )
        return table

    @staticmethod
    def _up_down(scrape: Scrape) -> tuple[int, int]:
        if scrape.status is not None:
            return int(scrape.status["sources"]["up"]), int(scrape.status["sources"]["down"])
        values = [
            value for name, series in scrape.samples.items() if name.endswith("_source_up") for value in series.values()
        ]
        return sum(1 for value in values if value == 1.0), sum(1 for value in values if value != 1.0)

    def _kinds(self, scrape: Scrape) -> Panel:
        totals = scrape.sum_by("tickbus_events_received_total", "kind")
        rates = self._rates_by("tickbus_events_received_total", "kind")
        if rates is None and scrape.status is not None:
            rates = {row["kind"]: row["rate"] for row in scrape.status["events"]["by_kind"]}
        table = Table(expand=True, box=None)
        table.add_column("kind")
        table.add_column("events/s", justify="right")
        table.add_column("total", justify="right")
        for kind in sorted(totals, key=lambda kind: (-(rates or {}).get(kind, 0.0), kind)):
            table.add_row(kind, _number(None if rates is None else rates.get(kind, 0.0)), _number(totals[kind], 0))
        return Panel(table, title="events by kind", title_align="left")

    def _sources(self, scrape: Scrape) -> Panel:
        totals = scrape.sum_by("tickbus_events_received_total", "source")
        rates = self._rates_by("tickbus_events_received_total", "source")
        details: dict[str, dict[str, Any]] = {}
        if scrape.status is not None:
            details = {row["source"]: row for row in scrape.status["sources"]["rows"]}
            if rates is None:
                rates = {name: row["rate"] for name, row in details.items()}
        table = Table(expand=True, box=None)
        for column, justify in (("source", "left"), ("events/s", "right"), ("total", "right"), ("up", "left"),
                                ("healthy", "left"), ("version", "left"), ("last seen", "right")):  # fmt: skip
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        names = sorted(set(totals) | set(details), key=lambda name: (-(rates or {}).get(name, 0.0), name))
        for name in names[: self.sources_shown]:
            row = details.get(name, {})
            seen = row.get("last_seen")
            table.add_row(
                name,
                _number(None if rates is None else rates.get(name, 0.0)),
                _number(totals.get(name, row.get("total")), 0),
                _yes_no(row.get("up")),
                _yes_no(row.get("healthy")),
                row.get("version") or "-",
                _age(None if seen is None else scrape.at - seen),
            )
        title = f"sources (busiest {min(len(names), self.sources_shown)} of {len(names)})"
        return Panel(table, title=title, title_align="left")

    def _rejections(self, scrape: Scrape) -> Panel:
        totals = scrape.sum_by("tickbus_events_rejected_total", "reason")
        rates = self._rates_by("tickbus_events_rejected_total", "reason")
        examples = {}
        if scrape.status is not None:
            examples = {row["reason"]: row.get("example") for row in scrape.status["rejections"]["by_reason"]}
        table = Table(expand=True, box=None)
        table.add_column("reason")
        table.add_column("/s", justify="right")
        table.add_column("total", justify="right")
        table.add_column("latest example", ratio=1, overflow="fold")
        for reason in sorted(totals, key=lambda reason: (-totals[reason], reason)):
            example = examples.get(reason)
            detail = "-"
            if example:
                who = " / ".join(part for part in (example.get("source"), example.get("kind")) if part)
                detail = f"{_age(scrape.at - example['at'])} ago{f' from {who}' if who else ''}: {example['detail']}"
            rate = None if rates is None else rates.get(reason, 0.0)
            table.add_row(reason, _number(rate, 2), _number(totals[reason], 0), detail)
        return Panel(table, title="rejections (dead-lettered)", title_align="left")
