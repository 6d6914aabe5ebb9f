"""The wire format: exchange, routing keys, content types, headers and the codecs for them."""

from collections.abc import Sequence
from typing import Final

import msgspec

from schemas.events import Batch, Event, EventBase

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

# A message larger than this is rejected unread.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

HEADER_REASON: Final = "x-tickbus-reason"
HEADER_DETAIL: Final = "x-tickbus-detail"
HEADER_ORIGINAL_ROUTING_KEY: Final = "x-tickbus-routing-key"
HEADER_ORIGINAL_MESSAGE_ID: Final = "x-tickbus-message-id"
HEADER_BATCH_INDEX: Final = "x-tickbus-batch-index"


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
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self.message_decoder: msgspec.json.Decoder[Event | Batch] | msgspec.msgpack.Decoder[Event | Batch] = (
                msgspec.json.Decoder(Event | Batch)
            )
            self.raw_list_decoder: (
                msgspec.json.Decoder[list[msgspec.Raw]] | msgspec.msgpack.Decoder[list[msgspec.Raw]]
            ) = msgspec.json.Decoder(list[msgspec.Raw])
            self.event_decoder: msgspec.json.Decoder[Event] | msgspec.msgpack.Decoder[Event] = msgspec.json.Decoder(
                Event
            )
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self.message_decoder = msgspec.msgpack.Decoder(Event | Batch)
            self.raw_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
            self.event_decoder = msgspec.msgpack.Decoder(Event)

    def encode(self, events: Sequence[EventBase]) -> bytes:
        """One event encodes as an object, several as an array (a batch)."""
        if len(events) == 1:
            return self._encoder.encode(events[0])
        return self._encoder.encode(events)
