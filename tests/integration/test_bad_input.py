"""Bad input over the real broker: dead-lettered with its reason, counted, and never in the way of good events."""

import json
import time
from collections import Counter
from collections.abc import Callable

import msgspec

from schemas.wire import HEADER_BATCH_INDEX, HEADER_REASON
from tests.support.broker import RawMessage, drain, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.scenario import DESK_CONFIG
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]


def _signal(source: str, **fields: object) -> dict[str, object]:
    return {"kind": "signal", "ts": time.time(), "source": source, "strategy": "s", "symbol": "BTCUSDT",
            "side": "buy", **fields}  # fmt: skip


def _json(event: object) -> bytes:
    return json.dumps(event).encode()


def test_bad_messages_are_dead_lettered_with_reasons_and_good_ones_counted_once(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """Every kind of bad input goes to the dead-letter queue with its reason; every good event counts exactly once."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    good = _json(_signal("good"))
    messages = [
        RawMessage(good, "signal", message_id="m1"),
        RawMessage(b"{not json", "signal", message_id="m2"),
        RawMessage(good, "signal", message_id="m3"),
        RawMessage(_json({**_signal("bad"), "kind": "telepathy"}), "telepathy"),
        RawMessage(_json(_signal("bad", confidence=2.5)), "signal"),
        RawMessage(_json(_signal("bad", confidence="high")), "signal"),
        RawMessage(_json({k: v for k, v in _signal("bad").items() if k != "symbol"}), "signal"),
        RawMessage(good, "signal", content_type="text/xml"),
        RawMessage(
            _json([_signal("good"), _signal("bad", side="sideways"), _signal("good")]), "batch", message_id="m4"
        ),
        RawMessage(_json({"kind": "metric", "ts": time.time(), "source": "bad", "name": "nope", "value": 1}), "metric"),
        RawMessage(
            _json(
                {
                    "kind": "metric",
                    "ts": time.time(),
                    "source": "bad",
                    "name": "kill_switch_active",
                    "value": 1,
                    "labels": {"wrong": "x"},
                }
            ),
            "metric",
        ),
        RawMessage(b"\xc1\xc1\xc1", "batch", content_type="application/msgpack"),
        RawMessage(msgspec.msgpack.encode([_signal("good"), _signal("good")]), "batch", "application/msgpack", "m5"),
        RawMessage(good, "signal", message_id="m6"),
    ]
    publish_raw(names.exchange, messages)

    expected_reasons = Counter({
        "malformed": 2, "unknown_kind": 1, "invalid_event": 4, "unsupported_content_type": 1,
        "undeclared_metric": 1, "label_mismatch": 1,
    })  # fmt: skip

    def settled() -> bool:
        samples = aggregator.scrape()
        return total(samples, "tickbus_events_rejected_total") == sum(expected_reasons.values()) and (
            total(samples, "trading_signals_total") == 7
        )

    wait_for(settled, timeout=20, what="all messages to be processed")
    samples = aggregator.scrape()
    assert total(samples, "trading_signals_total", source="good") == 7
    assert total(samples, "trading_signals_total", source="bad") == 0
    for reason, count in expected_reasons.items():
        assert total(samples, "tickbus_events_rejected_total", reason=reason) == count, reason

    dead = drain(names.dead_letter_queue)
    assert Counter(str(message.headers[HEADER_REASON]) for message in dead) == expected_reasons
    from_batch = [message for message in dead if HEADER_BATCH_INDEX in message.headers]
    assert len(from_batch) == 1
    assert from_batch[0].headers[HEADER_BATCH_INDEX] == 1
    assert json.loads(from_batch[0].body)["side"] == "sideways"
    assert aggregator.process is not None
    assert aggregator.process.poll() is None
    assert aggregator.ready()


def test_a_redelivered_message_id_counts_once(names: Names, start_aggregator: StartAggregator) -> None:
    """A producer retrying a message whose confirm it lost (same message id) is counted once."""
    aggregator = start_aggregator(names)
    body = _json(_signal("retry"))
    publish_raw(names.exchange, [RawMessage(body, "signal", message_id="same-id") for _ in range(3)])
    publish_raw(names.exchange, [RawMessage(body, "signal", message_id="other-id")])
    wait_for(lambda: value(aggregator.scrape(), "tickbus_messages_received_total") == 4, what="4 messages")
    samples = aggregator.scrape()
    assert total(samples, "trading_signals_total", source="retry") == 2
    assert value(samples, "tickbus_duplicate_messages_total") == 2


def test_deeply_nested_bodies_are_dead_lettered_and_the_good_events_around_them_count(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """Bodies nested 5,000 deep (JSON, MessagePack, in `labels`, in an unknown field) between good events:
    the aggregator stays up, each bad one is dead-lettered as too_deep, every good event counts once."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    deep_json = b"[" * 5_000 + b"1" + b"]" * 5_000
    deep_msgpack = b"\x91" * 5_000 + b"\xc0"
    metric = {"kind": "metric", "ts": time.time(), "source": "bad", "name": "kill_switch_active", "value": 1}
    marker = "DEEP"
    good = _json(_signal("good"))
    messages = [
        RawMessage(good, "signal", message_id="g1"),
        RawMessage(deep_json, "signal"),
        RawMessage(good, "signal", message_id="g2"),
        RawMessage(deep_msgpack, "signal", content_type="application/msgpack"),
        RawMessage(_json({**metric, "labels": marker}).replace(b'"DEEP"', deep_json), "metric"),
        RawMessage(_json(_signal("bad", extension=marker)).replace(b'"DEEP"', deep_json), "signal"),
        RawMessage(
            msgspec.msgpack.encode(_signal("bad", extension=marker)).replace(
                msgspec.msgpack.encode(marker), deep_msgpack
            ),
            "signal",
            content_type="application/msgpack",
        ),
        RawMessage(good, "signal", message_id="g3"),
    ]
    publish_raw(names.exchange, messages)
    wait_for(
        lambda: total(aggregator.scrape(), "tickbus_events_rejected_total", reason="too_deep") == 5,
        what="five too_deep refusals",
    )
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total") == 3, what="the three good signals")
    assert total(aggregator.scrape(), "trading_signals_total", source="good") == 3
    dead = drain(names.dead_letter_queue)
    assert Counter(str(message.headers[HEADER_REASON]) for message in dead) == {"too_deep": 5}
    assert aggregator.process is not None
    assert aggregator.process.poll() is None
    assert aggregator.ready()
    assert "RecursionError" not in aggregator.log()
