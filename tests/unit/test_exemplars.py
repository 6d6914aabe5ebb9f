"""Exemplars: an event's trace or order id on the bucket and counter it updated, in OpenMetrics only."""

from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from aggregator.collector import StoreCollector
from aggregator.config import CatalogSettings, CustomMetric
from aggregator.exposition import Exposition
from aggregator.ingest import Ingest
from schemas.events import Metric, Order, Signal
from tests.support.engine import make_ingest, read_view

Found = dict[tuple[str, frozenset[tuple[str, str]]], tuple[dict[str, str], float]]


def _exemplars(text: str) -> Found:
    found: Found = {}
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if sample.exemplar is not None:
                found[(sample.name, frozenset(sample.labels.items()))] = (
                    sample.exemplar.labels,
                    sample.exemplar.value,
                )
    return found


def _ingest() -> Ingest:
    custom = [CustomMetric(name="step_seconds", type="histogram", help="h", buckets=[0.1, 1.0], labels=["step"])]
    return make_ingest(CatalogSettings(), custom)


def test_a_filled_order_s_id_marks_the_latency_bucket_it_landed_in() -> None:
    """A fill of 0.3 s with order_id o-17 puts `order_id="o-17"` on the 0.5 s bucket of the fill latency."""
    ingest = _ingest()
    ingest.apply(
        [Order(ts=10.0, source="x", symbol="S", side="buy", status="filled", latency=0.3, order_id="o-17")], 11.0
    )
    found = _exemplars(Exposition(read_view(ingest), min_interval=0).render(openmetrics=True).decode())
    labels = {"source": "x", "venue": "", "order_type": "market", "status": "filled", "le": "0.5"}
    assert found[("trading_order_latency_seconds_bucket", frozenset(labels.items()))] == ({"order_id": "o-17"}, 0.3)
    assert not any(name == "trading_order_latency_seconds_bucket" and ("le", "0.25") in key for name, key in found)


def test_a_trace_id_marks_counters_and_custom_histograms_and_the_collector_agrees() -> None:
    """trace_id on a signal and on a custom metric: exemplars on both, identical in both renderers."""
    ingest = _ingest()
    ingest.apply(
        [
            Signal(ts=10.0, source="s", strategy="m", symbol="X", side="buy", latency=0.002, trace_id="t-1"),
            Metric(ts=10.0, source="s", name="step_seconds", value=0.05, labels={"step": "load"}, trace_id="t-2"),
            Signal(ts=10.0, source="s", strategy="m", symbol="Y", side="buy"),
        ],
        11.0,
    )
    ours = _exemplars(Exposition(read_view(ingest), min_interval=0).render(openmetrics=True).decode())
    registry = CollectorRegistry()
    registry.register(StoreCollector(read_view(ingest)))
    assert ours == _exemplars(generate_openmetrics(registry).decode())  # type: ignore[no-untyped-call]
    signal = {"source": "s", "strategy": "m", "symbol": "X", "side": "buy", "outcome": "generated", "reason": ""}
    assert ours[("trading_signals_total", frozenset(signal.items()))] == ({"trace_id": "t-1"}, 1.0)
    step = {"source": "s", "step": "load", "le": "0.1"}
    assert ours[("trading_step_seconds_bucket", frozenset(step.items()))] == ({"trace_id": "t-2"}, 0.05)
    unmarked = {"source": "s", "strategy": "m", "symbol": "Y", "side": "buy", "outcome": "generated", "reason": ""}
    assert ("trading_signals_total", frozenset(unmarked.items())) not in ours


def test_prometheus_text_has_no_exemplars_and_ids_too_long_are_not_kept() -> None:
    """The text format cannot carry exemplars; an id past OpenMetrics' 128-character limit is dropped, not cut."""
    ingest = _ingest()
    ingest.apply([Signal(ts=1.0, source="s", strategy="m", symbol="X", side="buy", trace_id="t" * 125)], 2.0)
    exposition = Exposition(read_view(ingest), min_interval=0)
    assert b" # {" not in exposition.render()
    assert _exemplars(exposition.render(openmetrics=True).decode()) == {}


def test_an_id_holding_a_control_character_is_not_kept_and_a_quote_is_escaped() -> None:
    """A NUL or a newline in an id would make Prometheus refuse the whole scrape: such an id gets no exemplar (the
    event still counts); quotes and backslashes are printable and come back intact through the escaping."""
    ingest = _ingest()
    ingest.apply([Signal(ts=1.0, source="s", strategy="m", symbol="X", side="buy", trace_id="a\x00b")], 2.0)
    ingest.apply([Signal(ts=1.0, source="s", strategy="n", symbol="X", side="buy", trace_id="a\nb")], 2.0)
    ingest.apply([Signal(ts=1.0, source="s", strategy="q", symbol="X", side="buy", trace_id='say "hi" \\')], 2.0)
    text = Exposition(read_view(ingest), min_interval=0).render(openmetrics=True).decode()
    assert "\x00" not in text
    assert [labels for labels, _ in _exemplars(text).values()] == [{"trace_id": 'say "hi" \\'}]
    assert text.count('strategy="') >= 3, "every event counted"
