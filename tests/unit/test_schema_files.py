"""The committed JSON Schema matches the Structs, and the CLI's field=value parsing builds valid events."""

import json
from pathlib import Path

import msgspec

from aggregator.cli import parse_assignments
from schemas.events import KINDS, Event, Metric
from schemas.jsonschema import event_json_schema

ROOT = Path(__file__).resolve().parents[2]


def test_committed_json_schema_is_current() -> None:
    """schemas/events.schema.json is what `aggregator schema` generates; regenerate it if this fails."""
    committed = json.loads((ROOT / "schemas" / "events.schema.json").read_text())
    assert committed == event_json_schema(), "run: aggregator schema --output schemas/events.schema.json"


def test_json_schema_names_every_kind() -> None:
    """Every event kind appears in the schema's discriminator."""
    schema = event_json_schema()
    single_event, batch = sorted(schema["anyOf"], key=lambda branch: branch.get("type", ""))
    assert sorted(single_event["discriminator"]["mapping"]) == sorted(KINDS)
    assert batch["items"]["discriminator"] == single_event["discriminator"]


def test_cli_assignments_build_events_including_labels() -> None:
    """`labels.NAME=value` words fill a metric's labels; strings convert to the field types."""
    raw = parse_assignments("metric", ["name=kill_switch_active", "value=1", "labels.reason=dd"], "cli")
    event = msgspec.convert(raw, Event, strict=False)
    assert isinstance(event, Metric)
    assert event.labels == {"reason": "dd"}
    assert event.value == 1.0
    assert event.source == "cli"
