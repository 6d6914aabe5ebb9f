"""The wire format: exchange, routing keys, content types, headers, refusal reasons and the codecs."""

import enum
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from schemas.events import MAX_BATCH_EVENTS, Batch, Event, EventBase

DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE: Final = "metrics"
BATCH_ROUTING_KEY: Final = "batch"

CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_MSGPACK: Final = "application/msgpack"
# Producers in the wild send these spellings too; they mean the same codecs.
CONTENT_TYPE_ALIASES: Final = {
    "application/json": CONTENT_TYPE_JSON,
    "text/json": CONTENT_TYPE_JSON,
    "application/msgpack": CONTENT_TYPE_MSGPACK,
    "application/x-msgpack": CONTENT_TYPE_MSGPACK,
    "application/vnd.msgpack": CONTENT_TYPE_MSGPACK,
}

# A message larger than this is rejected unread (too_large); deploy/rabbitmq/rabbitmq.conf sets the broker's
# max_message_size to the same, so that the broker refuses it before it is queued.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

HEADER_REASON: Final = "x-tickbus-reason"
HEADER_DETAIL: Final = "x-tickbus-detail"
HEADER_ORIGINAL_ROUTING_KEY: Final = "x-tickbus-routing-key"
# On a dead letter, the id of the message it came from; on a message from a producer that cannot set the
# message_id property (amqp-publish), its id.
HEADER_ORIGINAL_MESSAGE_ID: Final = "x-tickbus-message-id"
HEADER_BATCH_INDEX: Final = "x-tickbus-batch-index"
# The source whose events the message holds: what a sharded deployment's consistent-hash exchange hashes on, so
# that every message of one source reaches one aggregator replica (its `hash-header`). Contract 1.5.0.
HEADER_SOURCE: Final = "x-tickbus-source"


class Reason(enum.StrEnum):
    """Why the aggregator refused a message or an event: the x-tickbus-reason of its dead letter.

    The one vocabulary of refusal: the aggregator's code, the dead-letter headers, the `reason`
    label of `tickbus_events_rejected_total` and docs/wire-format.md all take it from here.
    """

    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    MALFORMED = "malformed"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_EVENT = "invalid_event"
    INVALID_BATCH = "invalid_batch"
    UNDECLARED_METRIC = "undeclared_metric"
    LABEL_MISMATCH = "label_mismatch"
    NEGATIVE_INCREMENT = "negative_increment"
    NEGATIVE_OBSERVATION = "negative_observation"
    FUTURE_TIMESTAMP = "future_timestamp"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    POISON = "poison"


REASON_MEANINGS: Final[dict[Reason, str]] = {
    Reason.UNSUPPORTED_CONTENT_TYPE: "The content type is neither JSON nor MessagePack (nor an alias of them).",
    Reason.TOO_LARGE: f"The body is larger than {MAX_MESSAGE_BYTES} bytes; it is rejected unread.",
    Reason.TOO_DEEP: (
        "The body nests arrays or objects deeper than the decoder follows (Python's recursion limit, "
        "1000 by default; events nest 3 levels), even inside a field the aggregator would skip or in one "
        "event of a batch: the whole message is refused."
    ),
    Reason.MALFORMED: "The body is not parseable as the JSON or MessagePack its content type says.",
    Reason.UNKNOWN_KIND: "The event has no `kind` field, or one the aggregator does not know.",
    Reason.INVALID_EVENT: (
        "The event breaks the schema: a required field missing, a wrong type, a value out of range, "
        "a label value too long or with characters outside its pattern."
    ),
    Reason.INVALID_BATCH: f"A batch array is empty or holds more than {MAX_BATCH_EVENTS} events.",
    Reason.UNDECLARED_METRIC: "A `metric` event names a custom metric the aggregator's config does not declare.",
    Reason.LABEL_MISMATCH: "A `metric` event's label names differ from the ones its declaration lists.",
    Reason.NEGATIVE_INCREMENT: "A `metric` event for a counter carries a negative value.",
    Reason.NEGATIVE_OBSERVATION: "A `metric` event for a histogram carries a negative value (put a sign in a label).",
    Reason.FUTURE_TIMESTAMP: (
        "The event's `ts` is further ahead of the aggregator's clock than `max_clock_skew_seconds` "
        "(default 300), or past 4102444800 (2100-01-01): the producer's clock is wrong, or it sends milliseconds."
    ),
    Reason.SOURCE_NOT_ALLOWED: (
        "Authenticated sources are on (`source_auth.enabled`) and the event's `source` is not one the publishing "
        "RabbitMQ user may speak for (`source_auth.users`), or the message carries no `user_id` property (the "
        "broker checks that it names the connection's user)."
    ),
    Reason.POISON: (
        "The aggregator died twice while processing this message (or processing it raised an error): it is "
        "set aside so that it cannot stop the aggregator again. The detail says what is known."
    ),
}
# Kept for readers of the 1.x contract: reason -> meaning.
REJECTION_REASONS: Final[dict[str, str]] = {str(reason): meaning for reason, meaning in REASON_MEANINGS.items()}


def routing_key_for(events: Sequence[EventBase]) -> str:
    """The routing key of a message: the kind of its single event, or `batch`."""
    if len(events) == 1:
        tag = events[0].__struct_config__.tag
        assert isinstance(tag, str)
        return tag
    return BATCH_ROUTING_KEY


class Codec:
    """Encoders and decoders for one content type, built once."""

    def __init__(self, content_type: str) -> None:
        self.content_type = CONTENT_TYPE_ALIASES[content_type]
        if self.content_type == CONTENT_TYPE_JSON:
            # Decimal prices and quantities go out as numbers, as the schema types them.
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder(
                decimal_format="number"
            )
            self.message_decoder: msgspec.json.Decoder[Event | Batch] | msgspec.msgpack.Decoder[Event | Batch] = (
                msgspec.json.Decoder(Event | Batch)
            )
            self.raw_list_decoder: (
                msgspec.json.Decoder[list[msgspec.Raw]] | msgspec.msgpack.Decoder[list[msgspec.Raw]]
            ) = msgspec.json.Decoder(list[msgspec.Raw])
            self.event_decoder: msgspec.json.Decoder[Event] | msgspec.msgpack.Decoder[Event] = msgspec.json.Decoder(
                Event
            )
            self.any_decoder: msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any] = msgspec.json.Decoder()
        else:
            self._encoder = msgspec.msgpack.Encoder(decimal_format="number")
            self.message_decoder = msgspec.msgpack.Decoder(Event | Batch)
            self.raw_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
            self.event_decoder = msgspec.msgpack.Decoder(Event)
            self.any_decoder = msgspec.msgpack.Decoder()

    def encode(self, events: Sequence[EventBase]) -> bytes:
        """One event encodes as an object, several as an array (a batch)."""
        if len(events) == 1:
            return self._encoder.encode(events[0])
        return self._encoder.encode(events)
