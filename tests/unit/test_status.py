"""The status page's data without a broker: rates from the rate window, sources, recent refusals, read only."""

import json
import time

from aggregator.pipeline import Pipeline
from aggregator.rates import RateWindow, count_totals
from aggregator.status import StatusQuery, StatusView
from aggregator.version import BuildInfo
from tests.support.engine import make_pipeline


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _body(*events: dict[str, object]) -> bytes:
    return json.dumps(list(events)).encode()


def _error(source: str) -> dict[str, object]:
    return {"kind": "error", "ts": time.time(), "source": source, "component": "c", "error_type": "t"}


def _view(pipeline: Pipeline, rates: RateWindow, clock: Clock) -> StatusView:
    ingest = pipeline.ingest
    return StatusView(
        ingest.store,
        ingest.self_metrics,
        ingest.sources,
        rates,
        pipeline.refusal_log,
        lambda: (True, "consuming"),
        BuildInfo("1.2.3", "abc", "3.11.7"),
        ingest.settings.namespace,
        checkpoints=False,
        clock=clock,
    )


def test_rates_are_measured_from_the_oldest_sample_and_the_ring_is_bounded() -> None:
    """Events counted before the first sample do not show as a rate; those after it do, per source and kind;
    the window keeps window / interval + 1 samples however long it runs."""
    clock = Clock()
    pipeline = make_pipeline()
    metrics = pipeline.ingest.self_metrics
    pipeline.process(_body(_error("old"), _error("old")), "application/json", None)
    rates = RateWindow(window=60, interval=10)
    rates.add(count_totals(metrics, clock.now))
    for _ in range(30):
        pipeline.process(_body(_error("busy")), "application/json", None)
    clock.now += 10
    snapshot = _view(pipeline, rates, clock).snapshot(StatusQuery())
    rows = {row["source"]: row for row in snapshot["sources"]["rows"]}
    assert rows["busy"]["rate"] == 3.0
    assert rows["busy"]["total"] == 30.0
    assert rows["old"]["rate"] == 0.0
    assert rows["old"]["total"] == 2.0
    assert snapshot["sources"]["rows"][0]["source"] == "busy"  # the busiest first
    assert snapshot["events"]["by_kind"] == [{"kind": "error", "rate": 3.0, "total": 32.0}]
    for step in range(100):
        if rates.due(clock.now + step * 10):
            rates.add(count_totals(metrics, clock.now + step * 10))
    assert len(rates) == 7


def test_rejections_carry_their_latest_example_and_sources_are_limited_and_filtered() -> None:
    """A refused event shows under its reason with its detail, kind and source; sources are capped by `limit`
    and matched by `filter`, with the counts of all of them."""
    clock = Clock()
    pipeline = make_pipeline()
    rates = RateWindow()
    rates.add(count_totals(pipeline.ingest.self_metrics, clock.now))
    pipeline.process(_body(*(_error(f"s{index}") for index in range(12))), "application/json", None)
    bad = {"kind": "signal", "ts": time.time(), "source": "shaky", "strategy": "s", "symbol": "X", "side": "up"}
    pipeline.process(_body(bad), "application/json", "m-1")
    pipeline.process(b"{not json", "application/json", "m-2")
    view = _view(pipeline, rates, clock)
    snapshot = view.snapshot(StatusQuery.parse({"limit": "5", "filter": "s1"}))
    sources = snapshot["sources"]
    assert sources["count"] == 12
    assert sources["matching"] == 3  # s1, s10, s11
    assert {row["source"] for row in sources["rows"]} == {"s1", "s10", "s11"}
    assert len(view.snapshot(StatusQuery.parse({"limit": "5"}))["sources"]["rows"]) == 5
    reasons = {row["reason"]: row for row in snapshot["rejections"]["by_reason"]}
    assert set(reasons) == {"invalid_event", "malformed"}
    invalid = reasons["invalid_event"]
    assert (invalid["recent"], invalid["total"]) == (1.0, 1.0)
    assert invalid["example"]["source"] == "shaky"
    assert invalid["example"]["kind"] == "signal"
    assert invalid["example"]["message_id"] == "m-1"
    assert "side" in invalid["example"]["detail"]
    assert reasons["malformed"]["example"]["message_id"] == "m-2"
    assert snapshot["rejections"]["recent"] == 2.0


def test_reading_the_status_changes_nothing_in_the_store() -> None:
    """The snapshot is read only: the store's snapshot (what a checkpoint holds) is the same before and after."""
    pipeline = make_pipeline()
    pipeline.process(_body(_error("a")), "application/json", None)
    rates = RateWindow()
    rates.add(count_totals(pipeline.ingest.self_metrics, time.time()))
    before = pipeline.ingest.store.snapshot()
    _view(pipeline, rates, Clock()).snapshot(StatusQuery(filter="a"))
    assert pipeline.ingest.store.snapshot() == before


def test_a_bad_limit_falls_back_and_a_huge_one_is_capped() -> None:
    """The query string is read leniently: people type it."""
    assert StatusQuery.parse({"limit": "many"}).limit == 100
    assert StatusQuery.parse({"limit": "1000000"}).limit == 1000
    assert StatusQuery.parse({"limit": "-3"}).limit == 0


def test_thousands_of_sources_give_a_bounded_answer_and_a_bounded_ring() -> None:
    """5,000 sources: the answer lists the default 100 rows (the busiest first) with the count of all, its JSON stays
    small, and the rate window still holds 7 samples."""
    clock = Clock()
    pipeline = make_pipeline()
    metrics = pipeline.ingest.self_metrics
    rates = RateWindow()
    rates.add(count_totals(metrics, clock.now))
    sources = [_error(f"worker-{index:04d}") for index in range(5000)]
    for start in range(0, len(sources), 1000):
        pipeline.process(_body(*sources[start : start + 1000]), "application/json", None)
    pipeline.process(_body(*(_error("worker-4999") for _ in range(9))), "application/json", None)
    for _ in range(39):
        clock.now += 10
        if rates.due(clock.now):
            rates.add(count_totals(metrics, clock.now))
    snapshot = _view(pipeline, rates, clock).snapshot(StatusQuery())
    assert snapshot["sources"]["count"] == 5000
    assert len(snapshot["sources"]["rows"]) == 100
    assert snapshot["sources"]["rows"][0]["source"] == "worker-4999"  # the busiest total first once rates are equal
    assert len(json.dumps(snapshot)) < 30_000
    assert len(rates) == 7
