"""Rendering the store as Prometheus text or OpenMetrics, reusing what did not change since the last scrape."""

import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from aggregator.accelerated import compiled_render
from aggregator.readview import DerivedGauge, ReadView
from aggregator.store import AnyFamily, CounterFamily, GaugeFamily, HistogramFamily, LabelKey

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Back-to-back scrapes (several Prometheus replicas, a scrape storm) share one rendering within this
# window, or within ten times what the last rendering cost if that is longer: rendering then never
# takes more than about a tenth of the time, whatever the store's size.
MIN_RENDER_INTERVAL = 0.02
RENDER_COST_FACTOR = 10.0
# Series the compiled renderer writes in one call, which holds the interpreter: a few milliseconds at most,
# so that the event loop gets its turn while a large family is rendered in a worker thread.
RENDER_SLICE = 5_000


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = ",".join(f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _exemplar(exemplar: Any) -> str:
    """An OpenMetrics exemplar after a sample: ` # {trace_id="..."} value timestamp`."""
    return f' # {{{exemplar.label}="{_escape_label(exemplar.id)}"}} {_number(exemplar.value)} {exemplar.ts!r}'


def bucket_label(bound: float) -> str:
    """The `le` label of a bucket bound, as both renderings write it."""
    return repr(float(bound))


def wants_openmetrics(accept: str) -> bool:
    """Content negotiation as prometheus_client does it: OpenMetrics when the client lists it."""
    return any(part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(","))


class FamilyText:
    """One family's rendered text per format, kept between scrapes while the family is unchanged.

    Counters and gauges are written by the compiled renderer (aggregator/_fastrender.pyx) where it was
    built; otherwise, and for histograms, in Python, which keeps each series' sample-name prefix between
    scrapes. The Python renderer is the reference, and a test holds the two to the same bytes.
    """

    def __init__(self, family: AnyFamily, renderer: Any = None) -> None:
        self.family = family
        self.renderer = renderer
        self.prefixes: dict[LabelKey, Any] = {}
        self.blocks: dict[bool, tuple[int, bytes]] = {}
        self.headers: dict[bool, bytes] = {}
        # A histogram's bucket bounds, and their `le` labels.
        self.bounds: tuple[tuple[float, ...] | None, list[str]] = (None, [])

    def header(self, openmetrics: bool) -> str:
        family = self.family
        name = family.name
        if openmetrics and isinstance(family, CounterFamily):
            name = name.removesuffix("_total")
        lines = [f"# HELP {name} {_escape_help(family.help)}", f"# TYPE {name} {family.type}"]
        if openmetrics and family.unit and family.name.endswith("_" + family.unit):
            lines.append(f"# UNIT {name} {family.unit}")
        return "\n".join(lines) + "\n"

    def text(self, openmetrics: bool) -> bytes:
        family = self.family
        cached = self.blocks.get(openmetrics)
        if cached is not None and cached[0] == family.version and not family.volatile:
            return cached[1]
        version = family.version
        header = self.headers.get(openmetrics)
        if header is None:
            header = self.headers[openmetrics] = self.header(openmetrics).encode()
        text = header + self._samples(openmetrics)
        self.blocks[openmetrics] = (version, text)
        return text

    def _samples(self, openmetrics: bool) -> bytes:
        family = self.family
        # OpenMetrics alone carries exemplars (Prometheus text has no syntax for them).
        exemplars = getattr(family, "exemplars", None) if openmetrics else None
        series = family.series
        # The keys now: the event loop may add series while this runs in a worker thread.
        keys = list(series)
        if isinstance(family, HistogramFamily):
            self._forget_prefixes(keys)
            return self._histogram_samples(family, keys, exemplars or {}).encode()
        if self.renderer is not None:
            return self._compiled_samples(family, keys, exemplars or {})
        self._forget_prefixes(keys)
        return self._plain_samples(family, keys, exemplars or {}).encode()

    def _forget_prefixes(self, keys: list[LabelKey]) -> None:
        if len(self.prefixes) > len(keys) * 2:  # many series expired since: drop their prefixes
            self.prefixes = {key: self.prefixes[key] for key in keys if key in self.prefixes}

    def _compiled_samples(self, family: AnyFamily, keys: list[LabelKey], exemplars: dict[Any, Any]) -> bytes:
        names = family.label_names
        heads = tuple((("{" if index == 0 else '",') + f'{name}="').encode() for index, name in enumerate(names))
        render, name, gauge = self.renderer.render_plain, family.name.encode(), isinstance(family, GaugeFamily)
        return b"".join(
            render(name, heads, keys, start, start + RENDER_SLICE, family.series, gauge, exemplars, _exemplar)
            for start in range(0, len(keys), RENDER_SLICE)
        )

    def _histogram_samples(self, family: HistogramFamily, keys: list[LabelKey], exemplars: dict[Any, Any]) -> str:
        prefixes, series = self.prefixes, family.series
        if self.bounds[0] is not family.bounds:
            self.bounds = (family.bounds, [*map(bucket_label, family.bounds), "+Inf"])
        bounds = self.bounds[1]
        out: list[str] = []
        append = out.append
        for key in keys:
            counts = series.get(key)
            if counts is None:
                continue
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = prefixes[key] = self._histogram_prefixes(key, bounds)
            cumulative = 0.0
            marks = exemplars.get(key)
            for index, (line_prefix, count) in enumerate(zip(prefix[0], counts, strict=False)):
                cumulative += count
                if marks and index in marks:
                    append("%s%d%s\n" % (line_prefix, cumulative, _exemplar(marks[index])))  # noqa: UP031
                else:
                    append("%s%d\n" % (line_prefix, cumulative))  # noqa: UP031 (counts are whole numbers)
            append("%s%d\n%s%s\n" % (prefix[1], cumulative, prefix[2], _number(counts[-1])))  # noqa: UP031
        return "".join(out)

    def _plain_samples(self, family: AnyFamily, keys: list[LabelKey], exemplars: dict[Any, Any]) -> str:
        prefixes, series, names, sample_name = self.prefixes, family.series, family.label_names, family.name
        gauge = isinstance(family, GaugeFamily)
        out: list[str] = []
        append = out.append
        for key in keys:
            value = series.get(key)
            if value is None:
                continue
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = prefixes[key] = f"{sample_name}{_labels(names, key)} "
            if key in exemplars:
                append(f"{prefix}{_number(value)}{_exemplar(exemplars[key])}\n")
            else:
                append(f"{prefix}{_number(value[0] if gauge else value)}\n")
        return "".join(out)

    def _histogram_prefixes(self, key: LabelKey, bounds: list[str]) -> tuple[list[str], str, str]:
        family = self.family
        names = family.label_names
        buckets = [f"{family.name}_bucket{_labels((*names, 'le'), (*key, bound))} " for bound in bounds]
        plain = _labels(names, key)
        return buckets, f"{family.name}_count{plain} ", f"{family.name}_sum{plain} "


class Exposition:
    """The /metrics body for the whole store, plus the series derived at scrape time.

    Safe to call from worker threads (the HTTP server renders off the event loop): one rendering at a
    time, and it reads each family's keys once, then their current values.
    """

    def __init__(
        self,
        view: ReadView,
        min_interval: float = MIN_RENDER_INTERVAL,
        cost_factor: float = RENDER_COST_FACTOR,
        compiled: bool | None = None,
    ) -> None:
        """Render `view`; scrapes within `min_interval` (or `cost_factor` times the last rendering) share one.

        `compiled`: counters and gauges by the compiled renderer (True), in Python (False), or by the
        compiled one where it was built (None).
        """
        self._view = view
        self._renderer = None if compiled is False else compiled_render()
        if compiled and self._renderer is None:
            raise RuntimeError("the compiled renderer (aggregator._fastrender) is not built")
        self._texts: dict[str, FamilyText] = {}
        self._derived: dict[str, tuple[DerivedGauge, bytes]] = {}
        self._min_interval = min_interval
        self._cost_factor = cost_factor
        # format -> (monotonic time rendered, body, CPU seconds it took)
        self._last: dict[bool, tuple[float, bytes, float]] = {}
        self._lock = threading.Lock()

    def render(self, openmetrics: bool = False) -> bytes:
        """The body for one scrape; scrapes close together share one rendering (see MIN_RENDER_INTERVAL)."""
        with self._lock:
            now = time.monotonic()
            body = self._shared(openmetrics, now)
            if body is None:
                # The cost is the rendering's CPU time: in a worker thread its wall time also counts the
                # turns the event loop takes with the interpreter, which would stretch the window tenfold.
                cpu = time.thread_time()
                body = self._render(openmetrics)
                self._last[openmetrics] = (now, body, time.thread_time() - cpu)
            return body

    def shared(self, openmetrics: bool = False) -> bytes | None:
        """The body a scrape now would share with the last one, or None if it would be rendered anew.

        Cheap and safe on the event loop: it renders nothing and takes no lock.
        """
        return self._shared(openmetrics, time.monotonic())

    def renews_in(self, openmetrics: bool = False) -> float:
        """Seconds until a scrape would get a new rendering rather than share the last one (0: now)."""
        window = self._window(openmetrics)
        return 0.0 if window is None else max(0.0, window[1] - time.monotonic())

    def samples(self) -> int:
        """The sample lines a full rendering of the store would write (a histogram's buckets, count and sum each)."""
        return sum(
            len(family.series) * (len(family.bounds) + 3 if isinstance(family, HistogramFamily) else 1)
            for family in self._view.families()
        )

    def _shared(self, openmetrics: bool, now: float) -> bytes | None:
        window = self._window(openmetrics)
        return window[0] if window is not None and now < window[1] else None

    def _window(self, openmetrics: bool) -> tuple[bytes, float] | None:
        """The last rendering and the monotonic time its sharing ends; None when there is none to share."""
        last = self._last.get(openmetrics)
        # A minimum interval of 0 turns sharing off (tests and benchmarks that want every rendering).
        if last is None or not self._min_interval:
            return None
        rendered, body, cost = last
        return body, rendered + max(self._min_interval, self._cost_factor * cost)

    def _render(self, openmetrics: bool) -> bytes:
        texts = self._texts
        parts = []
        for family in self._view.families():
            text = texts.get(family.name)
            if text is None or text.family is not family:
                text = texts[family.name] = FamilyText(family, self._renderer)
            parts.append(text.text(openmetrics))
        parts += map(self._derived_text, self._view.derived())
        if openmetrics:
            parts.append(b"# EOF\n")
        return b"".join(parts)

    def _derived_text(self, gauge: DerivedGauge) -> bytes:
        """A derived gauge's text, kept while its samples are unchanged (the series counts, mostly)."""
        cached = self._derived.get(gauge.name)
        if cached is not None and cached[0] == gauge:
            return cached[1]
        text = _derived_text(gauge).encode()
        self._derived[gauge.name] = (gauge, text)
        return text


def _derived_text(gauge: DerivedGauge) -> str:
    lines = [f"# HELP {gauge.name} {_escape_help(gauge.help)}\n# TYPE {gauge.name} gauge\n"]
    lines += [f"{gauge.name}{_labels(gauge.label_names, key)} {_number(value)}\n" for key, value in gauge.samples]
    return "".join(lines)
