"""The pipeline without a broker: dedup by message id, dead letters with reasons, and logs that survive a flood."""

import json
import logging
import time

import pytest

from aggregator.config import CatalogSettings
from aggregator.ingest import Ingest
from aggregator.pipeline import Pipeline, RecentIds
from aggregator.store import Store


def _pipeline() -> Pipeline:
    return Pipeline(Ingest(CatalogSettings(), [], Store()), RecentIds(3))


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


def test_a_message_with_nothing_applied_is_not_remembered() -> None:
    """A wholly rejected message can be replayed under the same id once the cause is fixed."""
    pipeline = _pipeline()
    outcome = pipeline.process(b"{bad", "application/json", "x")
    assert [letter.reason for letter in outcome.dead_letters] == ["malformed"]
    assert "x" not in pipeline.recent_ids


def test_a_flood_of_one_reason_is_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    """Every dead letter is counted, but 50 of the same reason make one log line, not 50."""
    pipeline = _pipeline()
    with caplog.at_level(logging.WARNING, logger="aggregator.pipeline"):
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
    with caplog.at_level(logging.WARNING, logger="aggregator.pipeline"):
        for _ in range(5):
            pipeline.process(b"{bad", "application/json", None)
        later = time.monotonic() + 11
        monkeypatch.setattr(time, "monotonic", lambda: later)
        pipeline.summarise_logs()
        pipeline.summarise_logs()
    assert [record.getMessage() for record in caplog.records][1:] == [
        "4 more dead-lettered for malformed in the last 10s"
    ]
