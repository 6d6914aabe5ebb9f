"""Turning a message body into events: one event or a batch, JSON or MessagePack, with reasons for what fails."""

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.events import KINDS, MAX_BATCH_EVENTS
from schemas.labels import LabelCheck
from schemas.types import LABEL_MAX_LENGTH, NAME_PATTERN
from schemas.wire import CONTENT_TYPE_ALIASES, CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, MAX_MESSAGE_BYTES, Codec

_KIND_PATH = re.compile(r"at `\$(\[\d+\])?\.kind`")


@dataclass(frozen=True)
class Rejected:
    """A whole message, or one event of a batch (`index`), that could not be decoded."""

    reason: str
    detail: str
    index: int | None = None
    body: bytes = b""


@dataclass
class Decoded:
    """The events of a message that decoded, and what did not."""

    events: list[Any] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    codec: Codec | None = None
    # Where each event stood in the message, when some were rejected (else its index in `events`).
    positions: list[int] | None = None

    def position(self, index: int) -> int:
        return index if self.positions is None else self.positions[index]


def _reason(error: msgspec.MsgspecError) -> str:
    if isinstance(error, msgspec.ValidationError):
        message = str(error)
        if _KIND_PATH.search(message) or "missing required field `kind`" in message:
            return "unknown_kind"
        return "invalid_event"
    return "malformed"


class Envelope(msgspec.Struct):
    """What can still be read of a refused event: its kind and source, for counting rejections by producer."""

    kind: str = ""
    source: str = ""


_SOURCE = re.compile(NAME_PATTERN)


class MessageDecoder:
    """Decodes message bodies with codecs built once per content type."""

    def __init__(self, label_check: LabelCheck | None = None) -> None:
        self._codecs = {name: Codec(name) for name in CONTENT_TYPE_ALIASES}
        self._label_check = label_check or LabelCheck()
        self._envelope_decoders: dict[str, msgspec.json.Decoder[Envelope] | msgspec.msgpack.Decoder[Envelope]] = {
            CONTENT_TYPE_JSON: msgspec.json.Decoder(Envelope),
            CONTENT_TYPE_MSGPACK: msgspec.msgpack.Decoder(Envelope),
        }

    def envelope(self, body: bytes, content_type: str | None) -> tuple[str, str]:
        """The kind and source of a refused event when they can be read and are well formed, else empty.

        Only known kinds and well-formed source names are returned, so refusals cannot flood the
        rejection counter with label values.
        """
        codec = self.codec(content_type)
        if codec is None or len(body) > MAX_MESSAGE_BYTES:
            return "", ""
        try:
            envelope = self._envelope_decoders[codec.content_type].decode(body)
        except msgspec.DecodeError:
            return "", ""
        kind = envelope.kind if envelope.kind in KINDS else ""
        source = envelope.source if len(envelope.source) <= LABEL_MAX_LENGTH and _SOURCE.match(envelope.source) else ""
        return kind, source

    def codec(self, content_type: str | None) -> Codec | None:
        # A producer that sets no content type (a plain shell tool, say) is taken to send JSON.
        return self._codecs.get((content_type or CONTENT_TYPE_JSON).split(";")[0].strip().lower())

    def decode(self, body: bytes, content_type: str | None) -> Decoded:
        codec = self.codec(content_type)
        if codec is None:
            return Decoded(rejected=[Rejected("unsupported_content_type", f"content type {content_type!r}")])
        if len(body) > MAX_MESSAGE_BYTES:
            return Decoded(
                rejected=[Rejected("too_large", f"{len(body)} bytes, limit {MAX_MESSAGE_BYTES}")], codec=codec
            )
        try:
            decoded = codec.message_decoder.decode(body)
        except msgspec.ValidationError as error:
            try:
                raw_events = codec.raw_list_decoder.decode(body)
            except msgspec.DecodeError:
                return Decoded(rejected=[Rejected(_reason(error), str(error))], codec=codec)
            return self._decode_each(raw_events, codec)
        except msgspec.DecodeError as error:
            return Decoded(rejected=[Rejected("malformed", str(error))], codec=codec)
        events = decoded if isinstance(decoded, list) else [decoded]
        problem = self._label_check.problem
        if all(problem(event) is None for event in events):
            return Decoded(events=events, codec=codec)
        single = not isinstance(decoded, list)
        result = Decoded(codec=codec, positions=[])
        for index, event in enumerate(events):
            self._keep_or_reject(result, event, index, body if single else codec.encode([event]), single)
        return result

    def _keep_or_reject(self, result: Decoded, event: Any, index: int, raw: bytes, single: bool) -> None:
        detail = self._label_check.problem(event)
        if detail is None:
            result.events.append(event)
            assert result.positions is not None
            result.positions.append(index)
        else:
            result.rejected.append(Rejected("invalid_event", detail, None if single else index, raw))

    def _decode_each(self, raw_events: list[msgspec.Raw], codec: Codec) -> Decoded:
        """A batch that failed as a whole: keep its good events, reject the bad ones one by one."""
        result = Decoded(codec=codec, positions=[])
        if not raw_events or len(raw_events) > MAX_BATCH_EVENTS:
            detail = f"a batch holds 1 to {MAX_BATCH_EVENTS} events, this one {len(raw_events)}"
            result.rejected.append(Rejected("invalid_batch", detail))
            return result
        for index, raw in enumerate(raw_events):
            try:
                event = codec.event_decoder.decode(raw)
            except msgspec.DecodeError as error:
                result.rejected.append(Rejected(_reason(error), str(error), index, bytes(raw)))
                continue
            self._keep_or_reject(result, event, index, bytes(raw), single=False)
        return result
