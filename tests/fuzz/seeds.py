"""The fuzz harness's seed corpus: every event shape of the test scenarios, as JSON and MessagePack, and edge bodies.

    .venv/bin/python -m tests.fuzz.seeds      # rewrites tests/fuzz/corpus/seed-* (committed)

Scenario times are seconds before now; here they are stamped before the harness's fixed clock.
"""

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import EVENT_TYPES, KINDS, MAX_BATCH_EVENTS
from tests.fuzz.harness import CORPUS, NOW, ROOT

SCENARIOS = (*sorted((ROOT / "tests" / "migrations").glob("*.json")), ROOT / "tests" / "scenarios" / "desk.json")
SEED_PREFIX = "seed-"


def scenario_events(path: Path) -> list[dict[str, Any]]:
    """A scenario's events with absolute times (before NOW) and a source on each."""
    events = []
    for written in json.loads(path.read_text(encoding="utf-8"))["events"]:
        event = dict(written)
        event.setdefault("source", path.stem)
        for key in ("ts", "started_at"):
            if key in event:
                event[key] = NOW - event[key]
        if "value_ago" in event:
            event["value"] = NOW - event.pop("value_ago")
        events.append(event)
    return events


def _msgpack_float(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


def _msgpack_str(data: bytes) -> bytes:
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data


def _msgpack_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(key + value for key, value in pairs)


def edge_bodies() -> dict[str, bytes]:
    """Bodies at the edges: nesting, numbers, NaN in MessagePack, bad UTF-8, sizes, batches, duplicates."""
    gauge = {"kind": "metric", "ts": NOW - 1, "source": "edge", "name": "kill_switch_active", "value": 1,
             "labels": {"reason": "drawdown"}}  # fmt: skip
    order = {"kind": "order", "ts": NOW - 1, "source": "edge", "symbol": "BTCUSDT", "side": "buy", "status": "filled",
             "quantity": 1, "price": 100, "latency": 0.01}  # fmt: skip
    as_json = msgspec.json.encode
    bodies = {
        "empty": b"",
        # Deeper than Python's recursion limit (1000), which the decoder's nesting follows.
        "deep-array": b"[" * 3_000 + b"]" * 3_000,
        "deep-object": b'{"a":' * 1_500 + b"1" + b"}" * 1_500,
        "deep-msgpack": b"\x91" * 3_000 + b"\xc0",
        "deep-labels": as_json({**gauge, "labels": {"reason": json.loads("[" * 50 + "]" * 50)}}),
        "huge-integer": as_json(order).replace(b'"quantity":1', b'"quantity":' + b"9" * 400),
        "huge-float": as_json(order).replace(b'"price":100', b'"price":1e400'),
        "negative-zero": as_json({**gauge, "value": -0.0}),
        "tiny-float": as_json({**order, "latency": 5e-324}),
        "far-future-ts": as_json({**order, "ts": 4_102_444_800_000}),
        "ts-in-ms": as_json({**order, "ts": NOW * 1000}),
        "nan-json-literal": as_json(gauge).replace(b'"value":1', b'"value":NaN'),
        "bad-utf8-json": as_json(order).replace(b"BTCUSDT", b"BTC\xff\xfeUSDT"),
        "lone-surrogate-json": as_json(order).replace(b"BTCUSDT", b"BTC\\ud800USDT"),
        "control-chars-label": as_json({**gauge, "labels": {"reason": 'a"\n\\b\x00'}}),
        "long-label": as_json({**gauge, "labels": {"reason": "x" * 10_000}}),
        "duplicate-keys": as_json(order)[:-1] + b',"side":"sell","kind":"signal"}',
        "batch-empty": b"[]",
        "batch-too-long": as_json([0] * (MAX_BATCH_EVENTS + 1)),
        "batch-mixed": as_json([order, {"kind": "nope"}, 7, gauge, {**order, "price": -1}]),
        "not-an-event": b'"just a string"',
        "json-as-msgpack": b'{"kind": "order"}',
        "msgpack-nan-gauge": _msgpack_map(
            [
                (_msgpack_str(b"kind"), _msgpack_str(b"metric")),
                (_msgpack_str(b"ts"), _msgpack_float(NOW - 1)),
                (_msgpack_str(b"source"), _msgpack_str(b"edge")),
                (_msgpack_str(b"name"), _msgpack_str(b"kill_switch_active")),
                (_msgpack_str(b"value"), _msgpack_float(math.nan)),
                (_msgpack_str(b"labels"), _msgpack_map([(_msgpack_str(b"reason"), _msgpack_str(b"nan"))])),
            ]
        ),
        "msgpack-inf-price": msgspec.msgpack.encode({**order, "price": math.inf}),
        "msgpack-bad-utf8": _msgpack_map(
            [
                (_msgpack_str(b"kind"), _msgpack_str(b"error")),
                (_msgpack_str(b"ts"), _msgpack_float(NOW - 1)),
                (_msgpack_str(b"source"), _msgpack_str(b"ed\xc3\x28ge")),
                (_msgpack_str(b"component"), _msgpack_str(b"c")),
                (_msgpack_str(b"error_type"), _msgpack_str(b"t\xff")),
            ]
        ),
        "msgpack-ext-and-bin": b"\x82\xa4kind\xd4\x01\x00\xa2ts\xc4\x03abc",
        "msgpack-huge-array-header": b"\xdd\xff\xff\xff\xff",
        "msgpack-huge-map-header": b"\xdf\xff\xff\xff\xff",
        "msgpack-uint64": msgspec.msgpack.encode({**order, "quantity": 2**64 - 1}),
        "msgpack-truncated": msgspec.msgpack.encode(order)[:-3],
    }
    return bodies


def seeds() -> dict[str, bytes]:
    """Name -> body: one of each event shape (kind and fields) as JSON, one of each kind as MessagePack,
    each scenario as one JSON batch, and the edge bodies."""
    found: dict[str, bytes] = {}
    shapes: set[tuple[str, ...]] = set()
    kinds: set[str] = set()
    for path in SCENARIOS:
        events = scenario_events(path)
        found[f"batch-{path.stem}.json"] = msgspec.json.encode(events)
        for event in events:
            shape = (event["kind"], *sorted(event))
            if shape not in shapes:
                shapes.add(shape)
                body = msgspec.json.encode(event)
                found[f"{event['kind']}-{hashlib.sha1(body).hexdigest()[:10]}.json"] = body
            if event["kind"] not in kinds:
                kinds.add(event["kind"])
                found[f"{event['kind']}.msgpack"] = msgspec.msgpack.encode(event)
    found |= {f"edge-{name}": body for name, body in edge_bodies().items()}
    return found


DICTIONARY = Path(__file__).with_name("events.dict")


def dictionary() -> str:
    """libFuzzer's dictionary: the wire format's words (kinds, fields, literals), quoted for JSON and MessagePack."""
    words: set[str] = set(KINDS)
    for event_type in EVENT_TYPES:
        words.update(event_type.__struct_fields__)
    words.update(("buy", "sell", "filled", "generated", "kill_switch_active", "reason", "drawdown", "labels"))
    lines = []
    for word in sorted(words):
        data = word.encode()
        lines.append(f'json_{word}="\\"{word}\\""')
        if len(data) < 32:
            escaped = "".join(f"\\x{byte:02x}" for byte in _msgpack_str(data))
            lines.append(f'msgpack_{word}="{escaped}"')
    lines += [
        'nan="NaN"',
        'inf="Infinity"',
        'big="1e308"',
        'msgpack_nan="\\xcb\\x7f\\xf8\\x00\\x00\\x00\\x00\\x00\\x00"',
    ]
    return "\n".join(lines) + "\n"


def write(directory: Path = CORPUS) -> int:
    """Replace the seed files in `directory` (files found by fuzzing stay); returns how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{SEED_PREFIX}*"):
        old.unlink()
    made = seeds()
    for name, body in made.items():
        (directory / f"{SEED_PREFIX}{name}").write_bytes(body)
    DICTIONARY.write_text(dictionary(), encoding="utf-8")
    return len(made)


if __name__ == "__main__":
    print(f"{write()} seeds written to {CORPUS}")
