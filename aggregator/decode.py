"""Turning a message body into events: one event or a batch, JSON or MessagePack, with a refusal for what fails."""

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aggregator.accelerated import compiled, untracked
from aggregator.refusal import Refusal
from schemas.events import KINDS, MAX_BATCH_EVENTS, kind_of
from schemas.labels import LabelCheck
from schemas.types import LABEL_MAX_LENGTH, NAME_PATTERN
from schemas.wire import CONTENT_TYPE_ALIASES, CONTENT_TYPE_JSON, MAX_MESSAGE_BYTES, Codec, Reason

_KIND_PATH = re.compile(r"at `\$(\[\d+\])?\.kind`")
# msgspec's words for a `ts` past the schema's bound (2100-01-01): a clock far off, or milliseconds.
_TS_TOO_LATE = re.compile(r"Expected `float` < [0-9.e+]+ - at `\$(\[\d+\])?\.ts`")
_SOURCE = re.compile(NAME_PATTERN)


@dataclass
class Decoded:
    """The events of a message that decoded, where each stood in it, and the refusals for the rest."""

    events: list[Any] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    codec: Codec | None = None
    # Whether the body was a batch (an array): then a refused event is dead-lettered alone, with its position.
    batch: bool = False
    # Each event's position in the batch, when some were refused (else its index in `events`).
    positions: list[int] | None = None

    def position(self, index: int) -> int | None:
        """Where `events[index]` stood in the message: its batch position, or None for a single event."""
        if not self.batch:
            return None
        return index if self.positions is None else self.positions[index]

    def refuse(self, refused: Sequence[tuple[int, Reason, str]]) -> None:
        """Take the events at these indexes out of `events`, each as a refusal at its position in the message."""
        assert self.codec is not None
        gone = {index for index, _, _ in refused}
        for index, reason, detail in refused:
            event = self.events[index]
            position = self.position(index)
            body = self.codec.encode([event]) if position is not None else b""
            self.refusals.append(
                Refusal(reason, detail, position, body, self.codec.content_type, kind_of(type(event)), event.source)
            )
        kept = [index for index in range(len(self.events)) if index not in gone]
        self.positions = [index if self.positions is None else self.positions[index] for index in kept]
        self.events = [self.events[index] for index in kept]


def _reason(error: msgspec.MsgspecError) -> Reason:
    if isinstance(error, msgspec.ValidationError):
        message = str(error)
        if _KIND_PATH.search(message) or "missing required field `kind`" in message:
            return Reason.UNKNOWN_KIND
        if _TS_TOO_LATE.search(message):
            return Reason.FUTURE_TIMESTAMP
        return Reason.INVALID_EVENT
    return Reason.MALFORMED


def _too_deep(codec: Codec) -> Refusal:
    detail = (
        f"nested deeper than the decoder follows (Python's recursion limit, {sys.getrecursionlimit()}); "
        "events nest 3 levels"
    )
    return Refusal(Reason.TOO_DEEP, detail, content_type=codec.content_type)


class Envelope(msgspec.Struct):
    """What can still be read of a refused event: its kind and source, for counting refusals by producer."""

    kind: str = ""
    source: str = ""


class MessageDecoder:
    """Decodes message bodies with codecs built once per content type."""

    def __init__(self, label_check: LabelCheck | None = None) -> None:
        self._codecs = {name: Codec(name) for name in CONTENT_TYPE_ALIASES}
        module = compiled()
        self._label_check = label_check or (
            LabelCheck()
            if module is None
            else LabelCheck(check_values=module.check_values, first_bad_event=module.first_bad_event)
        )
        # Up to 100,000 combinations and values per kind, which every full collection would walk.
        for remembered in self._label_check.remembered():
            untracked(remembered)
        self._envelope_decoders = {
            codec.content_type: (
                msgspec.json.Decoder(Envelope)
                if codec.content_type == CONTENT_TYPE_JSON
                else msgspec.msgpack.Decoder(Envelope)
            )
            for codec in self._codecs.values()
        }

    def codec(self, content_type: str | None) -> Codec | None:
        # A producer that sets no content type (a plain shell tool, say) is taken to send JSON.
        return self._codecs.get((content_type or CONTENT_TYPE_JSON).split(";")[0].strip().lower())

    def _refusal(
        self, reason: Reason, detail: str, codec: Codec | None, body: bytes, position: int | None = None
    ) -> Refusal:
        """A refusal of `body` (the whole message, or one event of a batch at `position`)."""
        kind = source = ""
        if codec is not None and len(body) <= MAX_MESSAGE_BYTES:
            try:
                envelope = self._envelope_decoders[codec.content_type].decode(body)
            except (msgspec.DecodeError, RecursionError):
                pass
            else:
                # Only known kinds and well-formed names: refusals cannot flood the counter with label values.
                kind = envelope.kind if envelope.kind in KINDS else ""
                source = envelope.source
                if len(source) > LABEL_MAX_LENGTH or not _SOURCE.fullmatch(source):
                    source = ""
        return Refusal(
            reason,
            detail,
            position,
            body if position is not None else b"",
            codec.content_type if codec is not None else "",
            kind,
            source,
        )

    def decode(self, body: bytes, content_type: str | None) -> Decoded:
        codec = self.codec(content_type)
        if codec is None:
            return Decoded(
                refusals=[Refusal(Reason.UNSUPPORTED_CONTENT_TYPE, f"content type {content_type!r}", content_type="")]
            )
        if len(body) > MAX_MESSAGE_BYTES:
            detail = f"{len(body)} bytes, limit {MAX_MESSAGE_BYTES}"
            return Decoded(refusals=[Refusal(Reason.TOO_LARGE, detail, content_type=codec.content_type)], codec=codec)
        try:
            decoded = codec.message_decoder.decode(body)
        except msgspec.ValidationError as error:
            return self._decode_apart(body, codec, error)
        except msgspec.DecodeError as error:
            return Decoded(refusals=[self._refusal(Reason.MALFORMED, str(error), codec, body)], codec=codec)
        except RecursionError:
            return Decoded(refusals=[_too_deep(codec)], codec=codec)
        batch = isinstance(decoded, list)
        events: list[Any] = decoded if isinstance(decoded, list) else [decoded]
        if self._label_check.all_valid(events):
            return Decoded(events=events, codec=codec, batch=batch)
        result = Decoded(codec=codec, batch=batch, positions=[])
        for index, event in enumerate(events):
            self._keep_or_refuse(result, event, index, codec.encode([event]) if batch else body)
        return result

    def _decode_apart(self, body: bytes, codec: Codec, error: msgspec.ValidationError) -> Decoded:
        """A body that is not a valid event or batch as a whole: a batch's good events are kept."""
        try:
            raw_events = codec.raw_list_decoder.decode(body)
        except msgspec.ValidationError:
            # Parseable, but not an array: one bad event, unless the body is not this content type at all
            # (JSON sent as MessagePack reads as a number followed by garbage).
            try:
                codec.any_decoder.decode(body)
            except msgspec.DecodeError as parse_error:
                return Decoded(refusals=[self._refusal(Reason.MALFORMED, str(parse_error), codec, body)], codec=codec)
            except RecursionError:
                return Decoded(refusals=[_too_deep(codec)], codec=codec)
            return Decoded(refusals=[self._refusal(_reason(error), str(error), codec, body)], codec=codec)
        except msgspec.DecodeError as parse_error:
            return Decoded(refusals=[self._refusal(Reason.MALFORMED, str(parse_error), codec, body)], codec=codec)
        except RecursionError:
            return Decoded(refusals=[_too_deep(codec)], codec=codec)
        return self._decode_each(raw_events, codec)

    def _keep_or_refuse(self, result: Decoded, event: Any, index: int, raw: bytes) -> None:
        detail = self._label_check.problem(event)
        if detail is None:
            result.events.append(event)
            assert result.positions is not None
            result.positions.append(index)
        else:
            position = index if result.batch else None
            result.refusals.append(self._refusal(Reason.INVALID_EVENT, detail, result.codec, raw, position))

    def _decode_each(self, raw_events: list[msgspec.Raw], codec: Codec) -> Decoded:
        """A batch that failed as a whole: keep its good events, refuse the bad ones one by one."""
        result = Decoded(codec=codec, batch=True, positions=[])
        if not raw_events or len(raw_events) > MAX_BATCH_EVENTS:
            detail = f"a batch holds 1 to {MAX_BATCH_EVENTS} events, this one {len(raw_events)}"
            result.refusals.append(Refusal(Reason.INVALID_BATCH, detail, content_type=codec.content_type))
            return result
        for index, raw in enumerate(raw_events):
            try:
                event = codec.event_decoder.decode(raw)
            except msgspec.DecodeError as error:
                result.refusals.append(self._refusal(_reason(error), str(error), codec, bytes(raw), index))
                continue
            except RecursionError:
                refusal = _too_deep(codec)
                result.refusals.append(Refusal(refusal.reason, refusal.detail, index, bytes(raw), codec.content_type))
                continue
            self._keep_or_refuse(result, event, index, bytes(raw))
        return result
