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
    ids=[
        "bad-json",
        "bad-msgpack",
        "unknown-kind",
        "no-kind",
        "confidence-over-1",
        "confidence-text",
        "negative-latency",
        "newline-in-label",
        "label-too-long",
        "negative-ts",
        "empty-batch",
        "csv",
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


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _with_deep_value(event: dict[str, object], field: str, content_type: str) -> bytes:
    """`event` encoded with `field` set to a value nested 5,000 levels deep (spliced in: encoders refuse it)."""
    marker = "DEEP_VALUE_MARKER"
    if content_type == "application/json":
        deep = b"[" * 5_000 + b"1" + b"]" * 5_000
        return json.dumps({**event, field: marker}).encode().replace(f'"{marker}"'.encode(), deep)
    deep = b"\x91" * 5_000 + b"\xc0"  # 5,000 one-element arrays around nil
    return msgspec.msgpack.encode({**event, field: marker}).replace(msgspec.msgpack.encode(marker), deep)


@pytest.mark.parametrize("content_type", ["application/json", "application/msgpack"])
def test_bodies_nested_past_the_decoder_are_refused_as_too_deep(decoder: MessageDecoder, content_type: str) -> None:
    """A bare deep array, a deep value in `labels`, one in an unknown field, one in a batch: refused whole, no crash."""
    metric = {"kind": "metric", "ts": time.time(), "source": "s", "name": "m", "value": 1}
    in_batch = _with_deep_value(_signal(), "extension", content_type)
    bodies = [
        _with_deep_value({"wrapper": 1}, "wrapper", content_type),
        _with_deep_value(metric, "labels", content_type),
        _with_deep_value(_signal(), "extension", content_type),
        _encode([_signal()], content_type)[:-1] + b"," + in_batch + b"]"
        if content_type == "application/json"
        else b"\x92" + _encode(_signal(), content_type) + in_batch,
    ]
    for body in bodies:
        decoded = decoder.decode(body, content_type)
        assert decoded.events == []
        assert [refusal.reason for refusal in decoded.refusals] == ["too_deep"]
        assert decoded.refusals[0].position is None, "the whole message is dead-lettered, good events with it"
        assert "recursion limit" in decoded.refusals[0].detail
    batch = _encode([_signal(), _signal(extension=_nested(50))], content_type)
    assert len(decoder.decode(batch, content_type).events) == 2, "moderate nesting in an unknown field is skipped"


def test_json_sent_as_msgpack_is_malformed(decoder: MessageDecoder) -> None:
    """A JSON body labelled MessagePack does not parse as what it claims: `malformed`, not `invalid_event`."""
    for body in (json.dumps(_signal()).encode(), json.dumps([_signal()]).encode()):
        decoded = decoder.decode(body, "application/msgpack")
        assert [refusal.reason for refusal in decoded.refusals] == ["malformed"]


def test_a_timestamp_in_milliseconds_is_a_future_timestamp(decoder: MessageDecoder) -> None:
    """`ts` past the schema's bound (a producer sending milliseconds) is refused as future_timestamp."""
    for body in (json.dumps(_signal(ts=time.time() * 1000)).encode(), json.dumps([_signal(ts=1.7e12)]).encode()):
        decoded = decoder.decode(body, "application/json")
        assert [refusal.reason for refusal in decoded.refusals] == ["future_timestamp"]


def test_http_route_templates_are_label_values(decoder: MessageDecoder) -> None:
    """FastAPI's and Flask's route templates fit the label charset, so HTTP metrics keep their path label."""
    for path in ("/api/v1/orders/{order_id}", "/users/<int:user_id>", "/items/{item_id:int}"):
        event = {
            "kind": "metric",
            "ts": time.time(),
            "source": "api",
            "name": "m",
            "value": 1,
            "labels": {"path": path},
        }
        decoded = decoder.decode(json.dumps(event).encode(), "application/json")
        assert decoded.refusals == [], path
