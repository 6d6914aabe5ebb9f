"""Property tests: whatever a producer sends, decode -> apply -> render never raises, and nothing goes unexplained."""

import json
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from aggregator.config import CatalogSettings, CustomMetric
from aggregator.exposition import Exposition
from aggregator.pipeline import Pipeline
from schemas.events import KINDS
from schemas.wire import Reason
from tests.support.engine import make_ingest, make_pipeline, read_view

CUSTOM = [
    CustomMetric(name="lag_seconds", type="histogram", help="h", buckets=[0.1, 1.0], labels=["feed"]),
    CustomMetric(name="jobs_total", type="counter", help="h", labels=["queue"]),
    CustomMetric(name="kill_switch_active", type="gauge", help="h", labels=["reason"]),
]
FIELDS = [
    "kind", "ts", "source", "strategy", "symbol", "side", "outcome", "reason", "confidence", "latency", "status",
    "quantity", "price", "slippage_bps", "model", "probability", "expected_profit", "correct", "component",
    "error_type", "severity", "message", "pnl", "holding_time", "equity", "drawdown", "open_positions", "version",
    "instance", "healthy", "started_at", "dropped", "dependency", "up", "name", "value", "labels",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from([*KINDS, "buy", "sell", "filled", "generated", "lag_seconds", "jobs_total", "kill_switch_active"]),
    st.floats(min_value=0, max_value=2 * time.time()),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
events = st.dictionaries(st.sampled_from(FIELDS), values, max_size=12).map(
    lambda event: {"kind": "signal", "ts": time.time(), "source": "s", **event}
)
messages = st.one_of(values, events, st.lists(events, min_size=0, max_size=8))


def _check(pipeline: Pipeline, body: bytes, content_type: str) -> None:
    outcome = pipeline.process(body, content_type, None)
    assert all(isinstance(refusal.reason, Reason) for refusal in outcome.refusals)
    assert outcome.applied > 0 or outcome.refusals, "a message that applied nothing says why"
    for refusal in outcome.refusals:
        assert refusal.detail


def _render_parses(pipeline: Pipeline) -> None:
    exposition = Exposition(read_view(pipeline.ingest), min_interval=0)
    text = exposition.render().decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        for sample in family.samples:
            assert isinstance(sample.value, int | float)
            assert not math.isnan(sample.value) or family.type == "gauge"
    assert exposition.render(openmetrics=True).endswith(b"# EOF\n")


def _pipeline() -> Pipeline:
    return make_pipeline(make_ingest(CatalogSettings(max_series_per_metric=50), CUSTOM))


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# MessagePack can also carry NaN, infinities and 64-bit integers.
ENCODINGS: dict[str, tuple[Callable[[Any], bytes], tuple[type[Exception], ...]]] = {
    "application/json": (_json, (ValueError, RecursionError)),
    "application/msgpack": (msgspec.msgpack.encode, (TypeError, OverflowError)),
}


@pytest.mark.parametrize("content_type", sorted(ENCODINGS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(messages, min_size=1, max_size=6))
def test_any_value_is_applied_or_refused_with_a_reason(content_type: str, bodies: list[Any]) -> None:
    """Arbitrary values, event-shaped objects and batches, as JSON and as MessagePack: each message applies or
    is refused with a reason, and the exposition afterwards parses."""
    encode, unencodable = ENCODINGS[content_type]
    pipeline = _pipeline()
    for value in bodies:
        try:
            body = encode(value)
        except unencodable:
            continue
        _check(pipeline, body, content_type)
    _render_parses(pipeline)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["application/json", "application/msgpack", None, "text/plain"]))
def test_any_bytes_are_refused_or_applied_never_raised(body: bytes, content_type: str | None) -> None:
    """Random bytes under any content type: a refusal with a reason, never an exception."""
    pipeline = _pipeline()
    outcome = pipeline.process(body, content_type, None)
    assert outcome.applied > 0 or outcome.refusals


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=900, max_value=20_000), st.sampled_from(["[", '{"a":']))
def test_any_depth_is_refused_not_raised(depth: int, opener: str) -> None:
    """Nesting from just under to far past the recursion limit: decoded or refused, never RecursionError."""
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()
    outcome = _pipeline().process(body, "application/json", None)
    assert [refusal.reason for refusal in outcome.refusals] in (["too_deep"], ["invalid_event"], ["unknown_kind"])
