"""`aggregator dlq` over the real broker: list and show with reasons, replay after a config fix, purge."""

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.broker import RawMessage, drain, publish_raw
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _dlq(names: Names, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aggregator", "dlq", *args, "--amqp-url", AMQP_URL, "--queue", names.queue]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _metric(name: str, source: str = "risk") -> bytes:
    return (
        f'{{"kind":"metric","ts":{time.time()},"source":"{source}","name":"{name}","value":1,'
        f'"labels":{{"reason":"drawdown"}}}}'
    ).encode()


def test_list_show_replay_after_fixing_the_config(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """An undeclared metric is dead-lettered; once declared, `dlq replay` gets it counted, exactly once."""
    aggregator = start_aggregator(names)
    publish_raw(names.exchange, [RawMessage(_metric("kill_switch_active"), "metric", message_id="k1")])
    publish_raw(names.exchange, [RawMessage(b"{broken", "signal", message_id="b1")])
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 2, what="two rejections")

    listing = _dlq(names, "list")
    assert listing.returncode == 0, listing.stderr
    assert "undeclared_metric" in listing.stdout
    assert "malformed" in listing.stdout
    shown = _dlq(names, "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "reason:       undeclared_metric" in shown.stdout
    assert "kill_switch_active" in shown.stdout
    assert "message id:   k1" in shown.stdout
    assert _dlq(names, "show", "5").returncode == 1

    aggregator.stop()
    config = tmp_path / "fixed.toml"
    config.write_text(
        '[[metrics]]\nname = "kill_switch_active"\ntype = "gauge"\nhelp = "Kill switch."\nlabels = ["reason"]\n'
    )
    aggregator = start_aggregator(names, config=config)
    replay = _dlq(names, "replay", "--reason", "undeclared_metric", "--exchange", names.exchange)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 dead letter(s)" in replay.stdout
    wait_for(
        lambda: value(aggregator.scrape(), "trading_kill_switch_active", source="risk", reason="drawdown") == 1,
        what="the replayed metric",
    )
    remaining = drain(names.dead_letter_queue)
    assert [message.headers["x-tickbus-reason"] for message in remaining] == ["malformed"]


def test_purge_empties_the_dead_letter_queue(names: Names, start_aggregator: StartAggregator) -> None:
    """`dlq purge --yes` deletes every dead letter and says how many."""
    aggregator = start_aggregator(names)
    publish_raw(names.exchange, [RawMessage(b"nope", "signal") for _ in range(3)])
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 3, what="three rejections")
    purge = _dlq(names, "purge", "--yes")
    assert purge.returncode == 0, purge.stderr
    assert "purged 3 dead letter(s)" in purge.stdout
    assert "empty" in _dlq(names, "list").stdout


def test_missing_dead_letter_queue_is_a_clear_error(names: Names) -> None:
    """Before any aggregator declared the topology, dlq says the queue does not exist."""
    result = _dlq(names, "list")
    assert result.returncode == 1
    assert "NOT_FOUND - no queue" in result.stderr
    assert names.dead_letter_queue in result.stderr


def test_replay_to_an_exchange_nothing_listens_on_keeps_the_letters(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """A wrong --exchange cannot destroy dead letters: the replay stops, says why, and leaves them queued."""
    aggregator = start_aggregator(names)
    publish_raw(names.exchange, [RawMessage(_metric("undeclared"), "metric", message_id="u1")])
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 1, what="one rejection")
    publish_raw(f"{names.exchange}.unbound", [])  # an exchange with no queue bound to it
    replay = _dlq(names, "replay", "--exchange", f"{names.exchange}.unbound")
    assert replay.returncode == 1
    assert "no queue is bound" in replay.stderr
    assert [message.headers["x-tickbus-reason"] for message in drain(names.dead_letter_queue)] == ["undeclared_metric"]


def test_list_as_json_for_scripts_and_replay_shows_its_progress(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """`dlq list --json` gives every field and the exact body; `dlq replay` draws its progress on stderr and
    still prints the count on stdout."""
    aggregator = start_aggregator(names)
    bodies = [_metric("undeclared_thing", source=f"risk-{index}") for index in range(5)]
    publish_raw(
        names.exchange, [RawMessage(body, "metric", message_id=f"u{index}") for index, body in enumerate(bodies)]
    )
    publish_raw(names.exchange, [RawMessage(b"{broken", "signal", message_id="b1")])
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 6, what="six rejections")

    listing = _dlq(names, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    letters = json.loads(listing.stdout)
    assert [letter["position"] for letter in letters] == [1, 2, 3, 4, 5, 6]
    assert [letter["reason"] for letter in letters] == ["undeclared_metric"] * 5 + ["malformed"]
    assert [letter["message_id"] for letter in letters] == ["u0", "u1", "u2", "u3", "u4", "b1"]
    assert [base64.b64decode(letter["body_base64"]) for letter in letters] == [*bodies, b"{broken"]
    assert letters[0]["routing_key"] == "metric"
    assert "undeclared_thing" in letters[0]["detail"]
    assert json.loads(_dlq(names, "list", "--json", "--limit", "2").stdout)[1]["message_id"] == "u1"

    replay = _dlq(names, "replay", "--reason", "undeclared_metric", "--exchange", names.exchange)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 5 dead letter(s)" in replay.stdout
    assert f"replaying from {names.dead_letter_queue}" in replay.stderr
    assert "100%" in replay.stderr
