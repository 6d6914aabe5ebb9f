"""Decoding message bodies: both codecs, single events and batches, and a reason for every failure."""

import json
import time

import msgspec
import pytest

from aggregator.decode import MessageDecoder
from schemas.events import Order, Signal


def _signal(**fields: object) -> dict[str, object]:
    return {"kind": "signal", "ts": time.time(), "source": "s", "strategy": "m", "symbol": "X", "side": "buy", **fields}


@pytest.fixture
def decoder() -> MessageDecoder:
    return MessageDecoder()


def _encode(value: object, content_type: str) -> bytes:
    return json.dumps(value).encode() if "json" in content_type else msgspec.msgpack.encode(value)


@pytest.mark.parametrize("content_type", ["application/json", "application/msgpack", "application/x-msgpack"])
def test_single_event_and_batch_decode_in_both_codecs(decoder: MessageDecoder, content_type: str) -> None:
    """One object is one event; an array is a batch; the kind picks the Struct."""
    single = decoder.decode(_encode(_signal(), content_type), content_type)
    assert [type(event) for event in single.events] == [Signal]
    order = {"kind": "order", "ts": 1.0e9, "source": "s", "symbol": "X", "side": "sell", "status": "filled"}
    batch = decoder.decode(_encode([_signal(), order], content_type), content_type)
    assert [type(event) for event in batch.events] == [Signal, Order]
    assert batch.refusals == []


def test_missing_content_type_is_taken_as_json(decoder: MessageDecoder) -> None:
    """Shell tools often set no content type; JSON is assumed."""
    assert len(decoder.decode(json.dumps(_signal()).encode(), None).events) == 1


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{oops", "application/json", "malformed"),
        (b"\xc1", "application/msgpack", "malformed"),
        (json.dumps({**_signal(), "kind": "weather"}).encode(), "application/json", "unknown_kind"),
        (json.dumps({k: v for k, v in _signal().items() if k != "kind"}).encode(), "application/json", "unknown_kind"),
        (json.dumps(_signal(confidence=1.01)).encode(), "application/json", "invalid_event"),
        (json.dumps(_signal(confidence="sure")).encode(), "application/json", "invalid_event"),
        (json.dumps(_signal(latency=-1)).encode(), "application/json", "invalid_event"),
        (json.dumps(_signal(symbol="BTC\nUSDT")).encode(), "application/json", "invalid_event"),
        (json.dumps(_signal(symbol="X" * 65)).encode(), "application/json", "invalid_event"),
        (json.dumps(_signal(ts=-5)).encode(), "application/json", "invalid_event"),
        (json.dumps([]).encode(), "application/json", "invalid_batch"),
        (json.dumps(_signal()).encode(), "text/csv", "unsupported_content_type"),
    ],
)
def test_each_failure_has_its_reason(decoder: MessageDecoder, body: bytes, content_type: str, reason: str) -> None:
    """Every way a body can be wrong maps to one named reason, and nothing is applied."""
    decoded = decoder.decode(body, content_type)
    assert decoded.events == []
    assert [rejected.reason for rejected in decoded.refusals] == [reason]
    assert decoded.refusals[0].detail


def test_msgpack_nan_is_rejected(decoder: MessageDecoder) -> None:
    """MessagePack can carry NaN and infinity; the bounds on every float refuse them."""
    for bad in (float("nan"), float("inf")):
        decoded = decoder.decode(msgspec.msgpack.encode(_signal(confidence=bad)), "application/msgpack")
        assert [rejected.reason for rejected in decoded.refusals] == ["invalid_event"]


def test_a_bad_event_in_a_batch_rejects_only_itself(decoder: MessageDecoder) -> None:
    """The good events of a batch survive; the bad one is rejected alone, with its index and own body."""
    body = json.dumps([_signal(), _signal(side="up"), _signal(), {"kind": "nope"}]).encode()
    decoded = decoder.decode(body, "application/json")
    assert len(decoded.events) == 2
    assert [(r.position, r.reason) for r in decoded.refusals] == [(1, "invalid_event"), (3, "unknown_kind")]
    assert json.loads(decoded.refusals[0].body)["side"] == "up"


def test_unknown_fields_are_ignored_for_forward_compatibility(decoder: MessageDecoder) -> None:
    """A newer producer's extra fields do not break an older aggregator."""
    decoded = decoder.decode(json.dumps(_signal(new_field="x")).encode(), "application/json")
    assert len(decoded.events) == 1


def test_label_charset_is_checked_for_every_label_like_field(decoder: MessageDecoder) -> None:
    """Sources, labels and custom-metric label values outside the safe charset are refused with the field named."""
    bad = [
        _signal(source="has space"),
        _signal(strategy="tab\there"),
        _signal(reason="semi;colon"),
        {"kind": "metric", "ts": 1.0e9, "source": "s", "name": "m", "value": 1, "labels": {"k": "x\ny"}},
        {"kind": "metric", "ts": 1.0e9, "source": "s", "name": "m", "value": 1, "labels": {"bad-name": "x"}},
    ]
    for event in bad:
        decoded = decoder.decode(json.dumps(event).encode(), "application/json")
        assert decoded.events == [], event
        assert [rejected.reason for rejected in decoded.refusals] == ["invalid_event"]
    assert "`source`" in decoder.decode(json.dumps(bad[0]).encode(), "application/json").refusals[0].detail


def test_a_bad_label_in_a_batch_keeps_the_original_position(decoder: MessageDecoder) -> None:
    """Positions in the dead letter refer to the batch as sent, whichever check refused the event."""
    body = json.dumps([_signal(), _signal(side="up"), _signal(symbol="a|b"), _signal()]).encode()
    decoded = decoder.decode(body, "application/json")
    assert len(decoded.events) == 2
    assert [(r.position, r.reason) for r in decoded.refusals] == [(1, "invalid_event"), (2, "invalid_event")]
    assert [decoded.position(index) for index in range(2)] == [0, 3]
    good_only = decoder.decode(json.dumps([_signal(), _signal(symbol="a|b")]).encode(), "application/json")
    assert [(r.position, json.loads(r.body)["symbol"]) for r in good_only.refusals] == [(1, "a|b")]
