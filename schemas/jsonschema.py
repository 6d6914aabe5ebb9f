"""The JSON Schema of the events, generated from the Structs for producers in other languages."""

from typing import Any

import msgspec

from schemas.events import Batch, Event

SCHEMA_ID = "https://tickbus.dev/schemas/events.schema.json"


def event_json_schema() -> dict[str, Any]:
    """One document: a message body is one event (by `kind`) or a batch (an array of events)."""
    (message_schema,), components = msgspec.json.schema_components([Event | Batch], ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "tickbus message",
        "description": "A tickbus message body: one event object, or a batch (array) of events.",
        **message_schema,
        "$defs": components,
    }
