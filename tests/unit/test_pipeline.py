"""The pipeline without a broker: dedup by message id, dead letters with reasons, and logs that survive a flood."""

import json
import logging
import time

import pytest

from aggregator.config import CatalogSettings
from aggregator.dedup import RecentIds
from aggregator.pipeline import Pipeline
from tests.support.engine import make_ingest, make_pipeline


def _pipeline() -> Pipeline:
    return make_pipeline(window=3)


def _error_body(source: str = "s") -> bytes:
    return json.dumps(
        {"kind": "error", "ts": time.time(), "source": source, "component": "c", "error_type": "t"}
    ).encode()


def test_a_message_id_seen_before_is_skipped_and_the_window_is_bounded() -> None:
    """Redelivered ids count once; ids older than the window are forgotten."""
    pipeline = _pipeline()
    assert pipeline.process(_error_body(), "application/json", "a").applied == 1
    assert pipeline.process(_error_body(), "application/json", "a").duplicate
    for message_id in ("b", "c", "d"):
        pipeline.process(_error_body(), "application/json", message_id)
    assert "a" not in pipeline.recent_ids
    assert len(pipeline.recent_ids) == 3


def test_a_refused_message_is_remembered_and_its_replay_is_not() -> None:
    """A wholly refused message redelivered after a crash is refused (and dead-lettered) once; a replay from
    the dead-letter queue carries an id of its own (`<id>:replay`), so it applies once the cause is fixed."""
    pipeline = _pipeline()
    outcome = pipeline.process(b"{bad", "application/json", "x")
    assert [letter.reason for letter in outcome.refusals] == ["malformed"]
    assert "x" in pipeline.recent_ids
    again = pipeline.process(b"{bad", "application/json", "x")
    assert again.duplicate
    assert again.refusals == []
    assert pipeline.process(_error_body(), "application/json", "x:replay").applied == 1


def test_a_flood_of_one_reason_is_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    """Every dead letter is counted, but 50 of the same reason make one log line, not 50."""
    pipeline = _pipeline()
    with caplog.at_level(logging.WARNING, logger="aggregator.refusal"):
        for _ in range(50):
            pipeline.process(b"{bad", "application/json", None)
        pipeline.process(b"\x00", "text/csv", None)
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [
        "dead-lettering malformed",
        "dead-lettering unsupported_content_type",
    ]
    rejected = pipeline.ingest.self_metrics.events_rejected.series
    assert rejected[("malformed", "", "")] == 50


def test_refused_events_are_counted_by_kind_and_source_when_those_can_be_read() -> None:
    """A producer sending bad events shows up by name in the rejection counter; garbage stays anonymous."""
    pipeline = _pipeline()
    bad_signal = json.dumps({"kind": "signal", "ts": time.time(), "source": "strategy-7", "side": "up"}).encode()
    pipeline.process(bad_signal, "application/json", None)
    flood = json.dumps({"kind": "x" * 500, "ts": 1.0, "source": "not a name!"}).encode()
    pipeline.process(flood, "application/json", None)
    pipeline.process(b"{bad", "application/json", None)
    rejected = pipeline.ingest.self_metrics.events_rejected.series
    assert rejected == {
        ("invalid_event", "signal", "strategy-7"): 1.0,
        ("unknown_kind", "", ""): 1.0,
        ("malformed", "", ""): 1.0,
    }


def test_held_back_dead_letters_are_summarised_when_the_window_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count of letters not logged one by one appears once the window is over, even if no more come."""
    pipeline = _pipeline()
    with caplog.at_level(logging.WARNING, logger="aggregator.refusal"):
        for _ in range(5):
            pipeline.process(b"{bad", "application/json", None)
        later = time.monotonic() + 11
        monkeypatch.setattr(time, "monotonic", lambda: later)
        pipeline.refusal_log.summarise()
        pipeline.refusal_log.summarise()
    assert [record.getMessage() for record in caplog.records][1:] == [
        "4 more dead-lettered for malformed in the last 10s"
    ]


def test_an_event_from_the_future_is_refused_and_changes_nothing() -> None:
    """A producer clock an hour ahead would pin gauges; such events are refused with a reason."""
    now = 1_000_000.0
    pipeline = Pipeline(make_ingest(CatalogSettings(namespace="desk")), RecentIds(3), clock=lambda: now)
    ahead = {"kind": "position", "ts": now + 3_600, "source": "skewed", "symbol": "X", "quantity": 5.0}
    fine = {"kind": "position", "ts": now, "source": "ok", "symbol": "X", "quantity": 1.0}
    outcome = pipeline.process(json.dumps([ahead, fine]).encode(), "application/json", None)
    assert [(r.position, r.reason) for r in outcome.refusals] == [(0, "future_timestamp")]
    assert "ahead of the aggregator's clock" in outcome.refusals[0].detail
    ingest = pipeline.ingest
    assert set(ingest.store.families["desk_position_quantity"].series) == {("ok", "", "", "X")}
    assert ("position", "skewed") not in ingest.self_metrics.events_received.series
