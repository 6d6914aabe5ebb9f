"""Authenticated sources without a broker: the pipeline applies an event only if its user may speak for its source."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import ConfigError, SourceAuthSettings, load_settings
from aggregator.dedup import RecentIds
from aggregator.pipeline import Pipeline
from aggregator.reload import Reloader
from schemas.wire import REJECTION_REASONS, Reason
from tests.support.engine import make_ingest

USERS = {"producer-momentum": ["momentum-*"], "producer-exec": ["exec-1", "exec-2"], "tickbus-operator": ["*"]}


def _pipeline(enabled: bool = True) -> Pipeline:
    return Pipeline(make_ingest(), RecentIds(100), source_auth=SourceAuthSettings(enabled=enabled, users=USERS))


def _event(source: str) -> dict[str, Any]:
    return {"kind": "error", "ts": time.time(), "source": source, "component": "c", "error_type": "t"}


def _body(*sources: str) -> bytes:
    events = [_event(source) for source in sources]
    return json.dumps(events[0] if len(events) == 1 else events).encode()


def _received(pipeline: Pipeline) -> dict[str, float]:
    return {key[1]: value for key, value in pipeline.ingest.self_metrics.events_received.series.items()}


def test_a_user_publishes_as_its_own_sources_only() -> None:
    """Exact names and prefixes apply; another user's source is refused as source_not_allowed, naming both."""
    pipeline = _pipeline()
    assert pipeline.process(_body("momentum-7"), "application/json", "a", "producer-momentum").applied == 1
    assert pipeline.process(_body("exec-2"), "application/json", "b", "producer-exec").applied == 1
    outcome = pipeline.process(_body("exec-1"), "application/json", "c", "producer-momentum")
    assert outcome.applied == 0
    (refusal,) = outcome.refusals
    assert refusal.reason == Reason.SOURCE_NOT_ALLOWED
    assert "'producer-momentum' may not publish as source 'exec-1'" in refusal.detail
    assert refusal.source == "exec-1"
    # A prefix is a prefix: `exec-1` does not allow `exec-10`.
    assert pipeline.process(_body("exec-10"), "application/json", "d", "producer-exec").applied == 0
    assert _received(pipeline) == {"momentum-7": 1.0, "exec-2": 1.0}
    rejected = pipeline.ingest.self_metrics.events_rejected.series
    assert rejected[("source_not_allowed", "error", "exec-1")] == 1.0


def test_in_a_batch_only_the_forged_events_are_refused_each_with_its_position() -> None:
    """The good events of a batch apply; each forged one is refused alone, at its place in the batch."""
    pipeline = _pipeline()
    outcome = pipeline.process(
        _body("momentum-1", "exec-1", "momentum-2", "risk"), "application/json", "m", "producer-momentum"
    )
    assert outcome.applied == 2
    assert [(refusal.reason, refusal.position, refusal.source) for refusal in outcome.refusals] == [
        (Reason.SOURCE_NOT_ALLOWED, 1, "exec-1"),
        (Reason.SOURCE_NOT_ALLOWED, 3, "risk"),
    ]
    assert all(json.loads(refusal.body)["source"] == refusal.source for refusal in outcome.refusals)


def test_no_user_id_or_an_unknown_user_is_refused_and_says_why() -> None:
    """A message without user_id, or from a user the config does not list, applies nothing."""
    pipeline = _pipeline()
    missing = pipeline.process(_body("momentum-1", "momentum-2"), "application/json", "x", None)
    assert missing.applied == 0
    assert [refusal.reason for refusal in missing.refusals] == [Reason.SOURCE_NOT_ALLOWED] * 2
    assert "no user_id property" in missing.refusals[0].detail
    stranger = pipeline.process(_body("momentum-1"), "application/json", "y", "someone-else")
    assert [refusal.reason for refusal in stranger.refusals] == [Reason.SOURCE_NOT_ALLOWED]
    assert "source_auth.users has no entry for it" in stranger.refusals[0].detail
    # `*` speaks for any source (an operator replaying dead letters).
    assert pipeline.process(_body("exec-1", "risk"), "application/json", "z", "tickbus-operator").applied == 2


def test_off_by_default_every_source_is_taken_as_sent() -> None:
    """With source_auth.enabled false (the default) the user does not matter."""
    assert load_settings().source_auth.enabled is False
    pipeline = _pipeline(enabled=False)
    assert pipeline.process(_body("exec-1"), "application/json", "a", None).applied == 1
    assert pipeline.process(_body("risk"), "application/json", "b", "producer-momentum").applied == 1


def test_source_not_allowed_is_decided_before_other_checks() -> None:
    """A forged event stamped in the future is refused for its source, not its clock: the source is what lies."""
    pipeline = _pipeline()
    event = {**_event("exec-1"), "ts": time.time() + 3600}
    outcome = pipeline.process(json.dumps(event).encode(), "application/json", "f", "producer-momentum")
    assert [refusal.reason for refusal in outcome.refusals] == [Reason.SOURCE_NOT_ALLOWED]
    assert "source_not_allowed" in REJECTION_REASONS


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[source_auth]\nenabled = true\n", "every event would be refused"),
        ("[source_auth.users]\nbob = []\n", "users.bob: an empty list"),
        ("[source_auth.users]\nbob = ['a*b']\n", "source_auth.users"),
        ("[source_auth.users]\nbob = ['*x']\n", "source_auth.users"),
        ("[source_auth]\nenable = true\n", "unknown field `enable`"),
    ],
)
def test_a_bad_source_auth_section_names_the_key(tmp_path: Path, toml: str, message: str) -> None:
    """Mistakes in [source_auth] are config errors that say what is wrong."""
    path = tmp_path / "tickbus.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
        load_settings(path)


def test_a_reload_does_not_change_who_may_publish_what(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """source_auth is read at start: a SIGHUP with another mapping is refused with a warning saying so."""
    path = tmp_path / "tickbus.toml"
    path.write_text("[source_auth]\nenabled = true\n[source_auth.users]\nbob = ['bob-*']\n")
    settings = load_settings(path)
    reloader = Reloader(lambda: load_settings(path), settings, make_ingest())
    path.write_text("[source_auth]\nenabled = true\n[source_auth.users]\nbob = ['*']\n")
    with caplog.at_level("WARNING"):
        reloader.reload()
    assert "source_auth.users changed, which takes a restart" in caplog.text
    assert reloader.settings.source_auth.users == {"bob": ["bob-*"]}
