"""The AsyncAPI 3.0 document of the wire contract, generated from the Structs so that new kinds appear by themselves.

The document describes a tickbus producer: one channel per routing key (every event kind, and `batch`) on the
topic exchange, the message each carries, the AMQP properties a producer sets, and the dead letters the
aggregator sends back for what it rejects. Teams feed it to the usual AsyncAPI tools to generate clients and docs.
"""

import json
import typing
from typing import Any, Final

import msgspec

from schemas.events import MAX_BATCH_EVENTS, Event, EventBase, kind_of
from schemas.wire import (
    BATCH_ROUTING_KEY,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_MSGPACK,
    DEFAULT_EXCHANGE,
    HEADER_BATCH_INDEX,
    HEADER_DETAIL,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REASON,
    HEADER_SOURCE,
    MAX_MESSAGE_BYTES,
    REJECTION_REASONS,
)

ASYNCAPI_VERSION: Final = "3.0.0"
AMQP_BINDING_VERSION: Final = "0.3.0"
# The version of the contract itself: minor for new kinds or new optional fields, major for anything a
# producer written against the previous version would get rejected for.
CONTRACT_VERSION: Final = "1.5.0"
DOCUMENT_ID: Final = "urn:tickbus:wire-contract"
DEAD_LETTER_CHANNEL: Final = "deadLetters"

# Every value of the x-tickbus-reason header of a dead letter, with what it means to the producer.
# The aggregator's decoder and ingest produce these; tests/unit/test_wire_contract.py checks both ways.

_MESSAGE_PROPERTIES = (
    "Publish every message with delivery mode 2 (persistent), content type application/json or "
    "application/msgpack, a message id unique per message and kept across retries of the same message "
    "(the aggregator applies an id once), and preferably the timestamp and app id (the source) properties and "
    f"the {HEADER_SOURCE} header (the source: sharded aggregators route every message of a source by it)."
)
_EVENT_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        HEADER_SOURCE: {
            "type": "string",
            "description": (
                "The source of the message's events (recommended since 1.5.0). A sharded deployment's "
                "consistent-hash exchange hashes on it, so that every message of one source reaches one "
                "aggregator replica; messages without it all reach the same one."
            ),
        }
    },
}


def _event_types() -> tuple[type[EventBase], ...]:
    """The Structs of the `Event` union, the very union the aggregator decodes."""
    return typing.get_args(Event)


def _amqp_channel_binding(exchange: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def _send_binding() -> dict[str, Any]:
    return {"amqp": {"deliveryMode": 2, "mandatory": True, "timestamp": True, "bindingVersion": AMQP_BINDING_VERSION}}


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "deadLetter",
        "title": "Dead letter",
        "summary": "A message, or one event of a batch, that the aggregator rejected, with the reason in its headers.",
        "description": (
            "The body is the rejected message as it was received, or for one bad event of a batch that event "
            "encoded alone; the content type is the original one; app id and timestamp are copied from the "
            "original. Rejected events are counted in `tickbus_events_rejected_total{reason, kind, source}`."
        ),
        "headers": {
            "type": "object",
            "required": [HEADER_REASON, HEADER_DETAIL, HEADER_ORIGINAL_ROUTING_KEY, HEADER_ORIGINAL_MESSAGE_ID],
            "properties": {
                HEADER_REASON: {
                    "type": "string",
                    "enum": list(REJECTION_REASONS),
                    "description": "Why it was rejected. "
                    + " ".join(f"`{reason}`: {meaning}" for reason, meaning in REJECTION_REASONS.items()),
                },
                HEADER_DETAIL: {
                    "type": "string",
                    "maxLength": 1000,
                    "description": "A human-readable explanation naming the offending field, for logs.",
                },
                HEADER_ORIGINAL_ROUTING_KEY: {
                    "type": "string",
                    "description": "The routing key the producer published with.",
                },
                HEADER_ORIGINAL_MESSAGE_ID: {
                    "type": "string",
                    "description": "The message id the producer set; empty if it set none.",
                },
                HEADER_BATCH_INDEX: {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Present when one event of a batch was rejected: its zero-based position.",
                },
            },
        },
        "payload": {"description": "The rejected body: any bytes, since a malformed body is kept as it came."},
    }


def asyncapi_document(exchange: str = DEFAULT_EXCHANGE) -> dict[str, Any]:
    """The AsyncAPI 3.0 document: a channel and a send operation per routing key, plus the dead letters."""
    event_types = _event_types()
    refs, schemas = msgspec.json.schema_components(event_types, ref_template="#/components/schemas/{name}")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type, ref in zip(event_types, refs, strict=True):
        kind = kind_of(event_type)
        doc = (event_type.__doc__ or kind).strip()
        messages[kind] = {
            "name": kind,
            "title": event_type.__name__,
            "summary": doc,
            "description": (
                f"One `{kind}` event as the whole body, published with routing key `{kind}`. {_MESSAGE_PROPERTIES}"
            ),
            "contentType": CONTENT_TYPE_JSON,
            "headers": _EVENT_HEADERS,
            "payload": ref,
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": AMQP_BINDING_VERSION}},
        }
    messages[BATCH_ROUTING_KEY] = {
        "name": BATCH_ROUTING_KEY,
        "title": "Batch",
        "summary": f"Several events of any kinds in one message: an array of 1 to {MAX_BATCH_EVENTS} events.",
        "description": (
            f"An array of events as the body, published with routing key `{BATCH_ROUTING_KEY}`. Each element is "
            f"one event exactly as in the single-event messages; the aggregator applies the good ones and "
            f"dead-letters the bad ones one by one. {_MESSAGE_PROPERTIES}"
        ),
        "contentType": CONTENT_TYPE_JSON,
        "headers": _EVENT_HEADERS,
        "payload": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_EVENTS,
            "items": {"oneOf": list(refs)},
        },
        "bindings": {"amqp": {"messageType": BATCH_ROUTING_KEY, "bindingVersion": AMQP_BINDING_VERSION}},
    }
    for name in messages:
        channels[name] = {
            "address": name,
            "title": f"Routing key {name}",
            "description": f"Messages published to the `{exchange}` topic exchange with routing key `{name}`.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": _amqp_channel_binding(exchange),
        }
        operations[f"send_{name}"] = {
            "action": "send",
            "title": f"Send {'a batch' if name == BATCH_ROUTING_KEY else f'a {name} event'}",
            "summary": "Publish with publisher confirms; retry with the same message id until confirmed.",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": _send_binding(),
        }
    channels[DEAD_LETTER_CHANNEL] = {
        "address": "{reason}",
        "title": "Dead letters",
        "description": (
            f"What the aggregator rejected, published to the topic exchange `{exchange}.dead` (the aggregator's "
            f"`amqp.dead_letter_exchange` setting) with the reason as routing key, and kept in the aggregator's "
            f"dead-letter queue. Bind your own queue to it (e.g. with `#`) to see your rejections."
        ),
        "parameters": {
            "reason": {"enum": list(REJECTION_REASONS), "description": "The x-tickbus-reason of the dead letter."}
        },
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        "bindings": _amqp_channel_binding(f"{exchange}.dead"),
    }
    operations["receive_deadLetters"] = {
        "action": "receive",
        "title": "Receive dead letters",
        "summary": "Read why messages were rejected (optional: a producer needs no consumer to work).",
        "channel": {"$ref": f"#/channels/{DEAD_LETTER_CHANNEL}"},
        "messages": [{"$ref": f"#/channels/{DEAD_LETTER_CHANNEL}/messages/deadLetter"}],
        "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
    }
    messages["deadLetter"] = _dead_letter_message()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": DOCUMENT_ID,
        "info": {
            "title": "tickbus events",
            "version": CONTRACT_VERSION,
            "description": (
                "Typed metric events that trading processes publish to RabbitMQ and one tickbus aggregator turns "
                "into Prometheus metrics. This document describes a producer: what it sends, and the dead letters "
                "it can get back. The body is JSON (shown) or MessagePack (content type "
                f"{CONTENT_TYPE_MSGPACK}, same structure); at most {MAX_MESSAGE_BYTES} bytes per message. Fields "
                "the aggregator does not know are ignored, and fields added to the contract are always optional. "
                "The wire format in prose: docs/wire-format.md."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "servers": {
            "local": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The RabbitMQ broker the aggregator consumes from (its address is site-specific).",
            }
        },
        "defaultContentType": CONTENT_TYPE_JSON,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def asyncapi_text(exchange: str = DEFAULT_EXCHANGE) -> str:
    """The document as committed in schemas/asyncapi.json: indented JSON ending in a newline."""
    return json.dumps(asyncapi_document(exchange), indent=2) + "\n"
