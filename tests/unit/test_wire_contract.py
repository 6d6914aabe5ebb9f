"""The contract other languages build on: JSON Schema, AsyncAPI document, wire-format doc and the shell producer's
tables all agree with the Structs and with what the aggregator really accepts and rejects."""

import ast
import copy
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from aggregator.config import CatalogSettings, CustomMetric, load_settings
from aggregator.pipeline import Pipeline
from schemas.asyncapi import DEAD_LETTER_CHANNEL, asyncapi_document, asyncapi_text
from schemas.events import KINDS, MAX_BATCH_EVENTS
from schemas.jsonschema import event_json_schema
from schemas.wire import (
    BATCH_ROUTING_KEY,
    CONTENT_TYPE_ALIASES,
    DEFAULT_EXCHANGE,
    HEADER_BATCH_INDEX,
    HEADER_DETAIL,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REASON,
    MAX_MESSAGE_BYTES,
    REASON_MEANINGS,
    REJECTION_REASONS,
    Reason,
)
from tests.support.engine import make_ingest, make_pipeline
from tests.support.scenario import DESK_CONFIG, DESK_EVENTS

ROOT = Path(__file__).resolve().parents[2]
WIRE_FORMAT = ROOT / "docs" / "wire-format.md"
ASYNCAPI_FILE = ROOT / "schemas" / "asyncapi.json"
SPECS = ROOT / "producers" / "node" / "node_modules" / "@asyncapi" / "specs"


def _committed_json_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((ROOT / "schemas" / "events.schema.json").read_text())
    return schema


def _desk_events(source: str = "contract") -> list[dict[str, Any]]:
    now = time.time()
    return [
        {**event, "source": source, "ts": now - event["ts"]} for event in json.loads(DESK_EVENTS.read_text())["events"]
    ]


def _signal(**fields: Any) -> dict[str, Any]:
    return {"kind": "signal", "ts": time.time(), "source": "c", "strategy": "s", "symbol": "X", "side": "buy", **fields}


def _json_type(prop: dict[str, Any]) -> set[str]:
    branches = prop.get("anyOf", [prop])
    return {branch["type"] for branch in branches if "type" in branch} - {"null"}


def _pipeline() -> Pipeline:
    """The real decode-and-apply path, with the desk's custom metrics and a histogram."""
    histogram = CustomMetric(name="fill_size", type="histogram", help="Fill sizes.", buckets=[1.0, 10.0])
    custom = [*load_settings(DESK_CONFIG).metrics, histogram]
    return make_pipeline(make_ingest(CatalogSettings(), custom))


# --- JSON Schema ---------------------------------------------------------------------------------------------


def test_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The committed schema passes the draft 2020-12 meta-schema, so any standard validator can load it."""
    schema = _committed_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    broken = {**schema, "anyOf": "not a list"}
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema(broken)


def test_desk_scenario_validates_one_by_one_and_as_a_batch() -> None:
    """Every event of the desk scenario, and the scenario as one batch, is valid against the committed schema."""
    validator = jsonschema.Draft202012Validator(_committed_json_schema())
    events = _desk_events()
    for event in events:
        errors = list(validator.iter_errors(event))
        assert errors == [], (event, [error.message for error in errors])
    assert list(validator.iter_errors(events)) == []


def test_desk_scenario_sends_every_kind() -> None:
    """The scenario every producer's tests send holds at least one event of each kind, so each crosses every wire."""
    kinds = {event["kind"] for event in _desk_events()}
    assert kinds == set(KINDS), set(KINDS) ^ kinds


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_signal(confidence=1.5), "invalid_event"),
        ({k: v for k, v in _signal().items() if k != "symbol"}, "invalid_event"),
        (_signal(strategy="has\nnewline"), "invalid_event"),
        (_signal(source=""), "invalid_event"),
        (_signal(ts=-1), "invalid_event"),
        ({**_signal(), "kind": "telepathy"}, "unknown_kind"),
        ([], "invalid_batch"),
        ([_signal()] * (MAX_BATCH_EVENTS + 1), "invalid_batch"),
    ],
)
def test_what_the_schema_refuses_the_aggregator_rejects(body: Any, reason: str) -> None:
    """Bodies invalid by the schema are dead-lettered by the aggregator with the documented reason."""
    assert not jsonschema.Draft202012Validator(_committed_json_schema()).is_valid(body)
    outcome = _pipeline().process(json.dumps(body).encode(), "application/json", None)
    assert outcome.applied == 0
    assert {dead.reason for dead in outcome.refusals} == {reason}


def test_unknown_fields_are_valid_and_ignored() -> None:
    """A field from a newer contract passes the schema and the aggregator applies the event, ignoring it."""
    event = _signal(field_from_the_future={"nested": [1, 2]})
    assert jsonschema.Draft202012Validator(_committed_json_schema()).is_valid(event)
    for definition in _committed_json_schema()["$defs"].values():
        assert definition.get("additionalProperties", True) is not False
    outcome = _pipeline().process(json.dumps(event).encode(), "application/json", None)
    assert outcome.applied == 1
    assert outcome.refusals == []


def test_added_fields_are_optional_in_every_kind() -> None:
    """Only the fields of contract 1.0.0 are required; anything added since must be optional."""
    required_in_1_0 = {
        "signal": {"strategy", "symbol", "side"}, "order": {"symbol", "side", "status"}, "prediction": {"model"},
        "error": {"component", "error_type"}, "position": {"symbol", "quantity"}, "portfolio": set(),
        "trade": {"symbol", "side", "pnl"}, "heartbeat": set(), "metric": {"name", "value"},
    }  # fmt: skip
    for definition in _committed_json_schema()["$defs"].values():
        kind = definition["properties"]["kind"]["enum"][0]
        if kind in required_in_1_0:  # a kind added later may require its own fields
            assert set(definition["required"]) - {"kind", "ts", "source"} <= required_in_1_0[kind], kind


# --- AsyncAPI ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_spec() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON Schema, from the npm package @asyncapi/specs (installed on demand)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-node-deps")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    spec: dict[str, Any] = json.loads((SPECS / "schemas" / "3.0.0.json").read_text())
    return spec


def test_committed_asyncapi_is_current() -> None:
    """schemas/asyncapi.json is what schemas.asyncapi generates from the Structs now."""
    assert ASYNCAPI_FILE.read_text() == asyncapi_text(), (
        "regenerate: .venv/bin/python -c 'from schemas.asyncapi import asyncapi_text; "
        'print(asyncapi_text(), end="")\' > schemas/asyncapi.json'
    )


def test_asyncapi_is_valid_against_the_official_3_0_schema(asyncapi_spec: dict[str, Any]) -> None:
    """The committed document passes the official AsyncAPI 3.0.0 JSON Schema, and a broken copy does not."""
    assert json.loads((SPECS / "package.json").read_text())["name"] == "@asyncapi/specs"
    validator = jsonschema.Draft7Validator(asyncapi_spec)
    document = json.loads(ASYNCAPI_FILE.read_text())
    assert document["asyncapi"] == "3.0.0"
    errors = [f"{list(error.absolute_path)}: {error.message[:200]}" for error in validator.iter_errors(document)]
    assert errors == []
    breakers: list[Callable[[dict[str, Any]], object]] = [
        lambda doc: doc["operations"]["send_signal"].__setitem__("action", "publish"),
        lambda doc: doc["operations"]["send_batch"]["bindings"]["amqp"].__setitem__("deliveryMode", 3),
        lambda doc: doc["components"]["schemas"]["Signal"].__setitem__("type", "struct"),
        lambda doc: doc["info"].pop("version"),
    ]
    for break_it in breakers:
        broken = copy.deepcopy(document)
        break_it(broken)
        assert not validator.is_valid(broken)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "$ref":
                yield child
            else:
                yield from _refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from _refs(child)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_references_resolve_and_operations_use_their_channel() -> None:
    """Every $ref points into the document, and each operation sends a message of its own channel."""
    document = asyncapi_document()
    refs = list(_refs(document))
    assert len(refs) > 30
    for ref in refs:
        _resolve(document, ref)
    for name, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name


def test_asyncapi_has_every_kind_and_the_batch_on_the_exchange() -> None:
    """A channel, send operation and message per kind plus `batch`, on the durable topic exchange."""
    document = asyncapi_document()
    routing_keys = [*KINDS, BATCH_ROUTING_KEY]
    assert sorted(document["channels"]) == sorted([*routing_keys, DEAD_LETTER_CHANNEL])
    for key in routing_keys:
        channel = document["channels"][key]
        assert channel["address"] == key
        assert channel["bindings"]["amqp"]["exchange"] == {
            "name": DEFAULT_EXCHANGE, "type": "topic", "durable": True, "autoDelete": False, "vhost": "/",
        }  # fmt: skip
        assert document["operations"][f"send_{key}"]["action"] == "send"
        assert document["operations"][f"send_{key}"]["bindings"]["amqp"]["deliveryMode"] == 2
    batch = document["components"]["messages"][BATCH_ROUTING_KEY]["payload"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH_EVENTS)
    assert len(batch["items"]["oneOf"]) == len(KINDS)


def test_asyncapi_payloads_are_the_json_schema_definitions() -> None:
    """The AsyncAPI payload schemas are the JSON Schema's definitions, so the two documents never disagree."""
    components = json.dumps(asyncapi_document()["components"]["schemas"], sort_keys=True)
    definitions = json.dumps(event_json_schema()["$defs"], sort_keys=True).replace("#/$defs/", "#/components/schemas/")
    assert components == definitions


def test_asyncapi_dead_letters_list_every_reason_and_header() -> None:
    """The dead-letter message names every header the consumer sets and every rejection reason."""
    message = asyncapi_document()["components"]["messages"]["deadLetter"]
    headers = message["headers"]["properties"]
    assert set(headers) == {HEADER_REASON, HEADER_DETAIL, HEADER_ORIGINAL_ROUTING_KEY, HEADER_ORIGINAL_MESSAGE_ID,
                            HEADER_BATCH_INDEX}  # fmt: skip
    assert headers[HEADER_REASON]["enum"] == list(REJECTION_REASONS)


# --- rejection reasons -----------------------------------------------------------------------------------------


def _bad_inputs() -> dict[str, tuple[bytes, str]]:
    """One body (and content type) per documented reason."""

    def metric(**fields: Any) -> bytes:
        return json.dumps({"kind": "metric", "ts": time.time(), "source": "c", **fields}).encode()

    good = json.dumps(_signal()).encode()
    return {
        "unsupported_content_type": (good, "text/xml"),
        "too_large": (b'"' + b"x" * MAX_MESSAGE_BYTES + b'"', "application/json"),
        "malformed": (b"{not json", "application/json"),
        "unknown_kind": (json.dumps({**_signal(), "kind": "telepathy"}).encode(), "application/json"),
        "invalid_event": (json.dumps(_signal(confidence=2.5)).encode(), "application/json"),
        "invalid_batch": (b"[]", "application/json"),
        "undeclared_metric": (metric(name="nope", value=1), "application/json"),
        "label_mismatch": (metric(name="kill_switch_active", value=1, labels={"wrong": "x"}), "application/json"),
        "negative_increment": (
            metric(name="cache_requests_total", value=-1, labels={"cache": "c", "result": "hit"}),
            "application/json",
        ),
        "negative_observation": (metric(name="fill_size", value=-2.5), "application/json"),
        "future_timestamp": (json.dumps(_signal(ts=time.time() + 3_600)).encode(), "application/json"),
        "too_deep": (b"[" * 5_000 + b"]" * 5_000, "application/json"),
    }


def test_every_documented_reason_is_one_the_aggregator_gives() -> None:
    """For each documented reason, a body that earns it is dead-lettered with exactly that reason.

    `poison` is the consumer's, not the pipeline's: tests/unit/test_poison.py earns it. `source_not_allowed`
    needs authenticated sources configured: tests/unit/test_source_auth.py earns it.
    """
    inputs = _bad_inputs()
    assert sorted(inputs) == sorted(set(REJECTION_REASONS) - {"poison", "source_not_allowed"})
    for reason, (body, content_type) in inputs.items():
        outcome = _pipeline().process(body, content_type, None)
        assert [dead.reason for dead in outcome.refusals] == [reason], reason


def _reasons_in_aggregator_source() -> tuple[set[str], set[str]]:
    """Reasons the aggregator's code gives (`Reason.X`), and reason names it spells as bare strings."""
    given: set[str] = set()
    spelled: set[str] = set()
    values = {reason.value for reason in Reason}
    for module in (ROOT / "aggregator").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "Reason":
                given.add(Reason[node.attr].value)
            elif isinstance(node, ast.Constant) and node.value in values:
                spelled.add(f"{module.name}: {node.value}")
    return given, spelled


def test_the_aggregator_gives_no_undocumented_reason() -> None:
    """Every reason the aggregator gives comes from the one vocabulary, and each one there is documented."""
    given, spelled = _reasons_in_aggregator_source()
    assert len(given) >= 8
    assert given <= set(REJECTION_REASONS), given - set(REJECTION_REASONS)
    assert spelled == set(), "spell reasons as Reason members, not strings"
    assert set(REASON_MEANINGS) == set(Reason)


# --- the prose and the shell producer ---------------------------------------------------------------------------


def test_wire_format_doc_covers_the_contract() -> None:
    """docs/wire-format.md names every kind, reason, header, content type and limit, and lists fields exactly."""
    text = WIRE_FORMAT.read_text()
    headers = [
        HEADER_REASON,
        HEADER_DETAIL,
        HEADER_ORIGINAL_ROUTING_KEY,
        HEADER_ORIGINAL_MESSAGE_ID,
        HEADER_BATCH_INDEX,
    ]
    for word in [*KINDS, *REJECTION_REASONS, *CONTENT_TYPE_ALIASES, *headers, BATCH_ROUTING_KEY, "trace_id"]:
        assert f"`{word}`" in text, word
    for number in (str(MAX_MESSAGE_BYTES), str(MAX_BATCH_EVENTS), "4102444800"):
        assert number in text, number
    assert f"Contract version {asyncapi_document()['info']['version']}." in text
    for reason, meaning in REJECTION_REASONS.items():
        assert f"| `{reason}` | {meaning} |" in text
    rows = {row[0].strip(" `"): row[1:] for row in (line.split("|")[1:-1] for line in text.splitlines())
            if len(row) == 3 and row[0].strip(" `") in KINDS}  # fmt: skip
    assert sorted(rows) == sorted(KINDS)
    for definition in _committed_json_schema()["$defs"].values():
        kind = definition["properties"]["kind"]["enum"][0]
        required = set(definition["required"]) - {"kind", "ts", "source"}
        # `trace_id` is every kind's: documented once, beside kind, ts and source.
        optional = set(definition["properties"]) - set(definition["required"]) - {"trace_id"}
        assert "trace_id" in definition["properties"], kind

        def names(cell: str) -> set[str]:
            return {part.split(" (")[0].strip() for part in cell.split(", ")} - {"-", ""}

        assert names(rows[kind][0]) == required, kind
        assert names(rows[kind][1]) == optional, kind


def test_shell_producer_knows_every_kind_and_field_type() -> None:
    """tickbus-emit.sh's kind list and number/boolean field lists equal what the schema says."""
    script = (ROOT / "producers" / "shell" / "tickbus-emit.sh").read_text()

    def words(variable: str) -> set[str]:
        match = re.search(rf'^{variable}="([^"]*)"$', script, re.MULTILINE)
        assert match, variable
        return set(match[1].split())

    numbers, booleans = set(), set()
    for definition in _committed_json_schema()["$defs"].values():
        for name, prop in definition["properties"].items():
            types = _json_type(prop)
            if types & {"number", "integer"}:
                numbers.add(name)
            if "boolean" in types:
                booleans.add(name)
            assert not (types & {"number", "integer", "boolean"} and types & {"string"}), name
    assert words("KINDS") == set(KINDS)
    assert words("NUMBER_FIELDS") == numbers
    assert words("BOOLEAN_FIELDS") == booleans
