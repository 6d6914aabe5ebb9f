"""The compiled exposition against the Python renderer: the same store gives the same bytes, in both formats."""

import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import _fastrender
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.exposition import RENDER_SLICE, Exposition
from aggregator.readview import ReadView
from aggregator.sources import Sources
from aggregator.store import CounterFamily, GaugeFamily, Store
from schemas.events import Metric, Position, Signal
from tests.support.engine import make_ingest, read_view
from tests.unit.test_exposition import _random_events


def _both(view: ReadView) -> tuple[Exposition, Exposition]:
    return Exposition(view, min_interval=0, compiled=True), Exposition(view, min_interval=0, compiled=False)


def test_the_compiled_and_python_renderers_write_the_same_bytes_for_a_desk() -> None:
    """Every kind of event, exemplars on counters, custom metrics: byte for byte equal, text and OpenMetrics."""
    custom = [
        CustomMetric(name="queue_depth", type="gauge", help="Depth.", labels=["feed"]),
        CustomMetric(name="ticks_total", type="counter", help="Ticks.", labels=[]),
    ]
    ingest = make_ingest(CatalogSettings(), custom)
    events = _random_events(random.Random(7), 40)
    now = time.time()
    events += [
        Signal(ts=now, source="s", strategy="m", symbol='Q"X\\n', side="buy", trace_id="t-\u00e9"),
        Metric(ts=now, source="f", name="queue_depth", value=math.inf, labels={"feed": "a\nb"}),
        Metric(ts=now, source="f", name="queue_depth", value=-math.inf, labels={"feed": "\u00fcber"}),
        Metric(ts=now, source="f", name="ticks_total", value=3.0, labels={}),
        Position(ts=now + 1, source="p", symbol="NAN", quantity=math.nan),
    ]
    ingest.apply(events, now=now)
    clock = time.time()
    compiled, python = _both(read_view(ingest, lambda: clock))
    for openmetrics in (False, True):
        ours = compiled.render(openmetrics)
        assert ours == python.render(openmetrics)
    assert b'trace_id="t-\xc3\xa9"' in compiled.render(True)
    assert b'feed="a\\nb"' in compiled.render(False)


labels = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60).map(float)


@settings(max_examples=200, deadline=None)
@given(
    counters=st.dictionaries(st.tuples(labels, labels), values, max_size=20),
    gauges=st.dictionaries(st.tuples(labels), st.tuples(values, st.floats(0, 1e9)), max_size=20),
)
def test_any_label_text_and_value_render_the_same(
    counters: dict[tuple[str, ...], float], gauges: dict[tuple[str, ...], tuple[float, float]]
) -> None:
    """Any UTF-8 label value (quotes, backslashes, newlines, astral characters) and any float: identical bytes."""
    store = Store()
    counter = store.add(CounterFamily("c_total", "h", ["a", "b"]))
    gauge = GaugeFamily("g", "h", ["x"])
    store.add(gauge)
    counter.series.update(counters)
    gauge.series.update(gauges)
    compiled, python = _both(ReadView(store, Sources(CatalogSettings(), gauge, "up")))
    assert compiled.render(False) == python.render(False)
    assert compiled.render(True) == python.render(True)


def test_a_family_larger_than_a_slice_renders_whole_and_skips_series_gone_since() -> None:
    """A family written in several compiled calls comes out whole; a key listed but gone is left out."""
    store = Store()
    family = store.add(CounterFamily("c_total", "h", ["k"], max_series=10**6))
    family.series.update({(f"k{index}",): float(index) for index in range(2 * RENDER_SLICE + 3)})
    compiled, python = _both(ReadView(store, Sources(CatalogSettings(), GaugeFamily("g", "h", ["x"]), "up")))
    body = compiled.render(False)
    assert body == python.render(False)
    assert body.count(b"\nc_total{") == 2 * RENDER_SLICE + 3
    heads = (b'{k="',)
    lines = _fastrender.render_plain(b"c_total", heads, [("a",), ("b",)], 0, 2, {("b",): 2.0}, False, {}, str)
    assert lines == b'c_total{k="b"} 2.0\n'
    with pytest.raises(ValueError, match="a key of 2 values in a family of 1 labels"):
        _fastrender.render_plain(b"c_total", heads, [("a", "b")], 0, 1, {("a", "b"): 1.0}, False, {}, str)


def test_a_store_value_of_the_wrong_shape_is_an_error_not_a_crash() -> None:
    """A key that is not a tuple or a gauge value that is not a (value, time) tuple raise; a None value is skipped."""
    heads = (b'{k="',)
    for value in [(), [1.0, 2.0], 1.0]:
        with pytest.raises(TypeError, match="not a \\(value, time\\) tuple"):
            _fastrender.render_plain(b"g", heads, [("a",)], 0, 1, {("a",): value}, True, {}, str)
    with pytest.raises(TypeError, match="not a tuple"):
        _fastrender.render_plain(b"g", heads, ["a"], 0, 1, {"a": (1.0, 2.0)}, True, {}, str)  # type: ignore[list-item, dict-item]
    assert _fastrender.render_plain(b"c", heads, [("a",)], 0, 1, {("a",): None}, False, {}, str) == b""
