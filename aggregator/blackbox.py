"""The black box: which message the aggregator was processing when it died, and counts a checkpoint cannot keep."""

import hashlib
import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "blackbox"
MAGIC = b"TBBX"
VERSION = 1
# magic, version, checkpoint failures, processing flag, the message being processed
_HEADER = struct.Struct(">4sHQB16s")
_SUSPECT = struct.Struct(">16sI")
SUSPECTS = 64
SIZE = _HEADER.size + SUSPECTS * _SUSPECT.size
_FLAG_AT = struct.calcsize(">4sHQ")
_IDLE, _PROCESSING = 0, 1


def fingerprint(message_id: str | None, body: bytes) -> bytes:
    """16 bytes that name a message across redeliveries: its id when it has one, else its body."""
    return hashlib.blake2b(message_id.encode() if message_id else body, digest_size=16).digest()


class BlackBox:
    """A small preallocated, memory-mapped file in the state directory.

    Writing to it is a store to memory: no system call per message, and what was written survives
    the process dying in any way (kill -9, a crash in C code, the OOM killer), since the kernel
    keeps the pages. Being preallocated, it stays writable when the state disk is full.

    A message the aggregator was processing when it died becomes a suspect; a suspect that was being
    processed at `limit` deaths is poison, and is set aside instead of being processed again.
    """

    def __init__(self, buffer: mmap.mmap | bytearray, persistent: bool) -> None:
        self._buffer = buffer
        self.persistent = persistent
        magic, version, failures, flag, current = _HEADER.unpack_from(buffer)
        if magic != MAGIC or version != VERSION:
            buffer[:SIZE] = bytes(SIZE)
            _HEADER.pack_into(buffer, 0, MAGIC, VERSION, 0, _IDLE, bytes(16))
            failures, flag, current = 0, _IDLE, bytes(16)
        self.checkpoint_failures: int = failures
        self.suspects: dict[bytes, int] = {}
        for index in range(SUSPECTS):
            suspect, crashes = _SUSPECT.unpack_from(buffer, _HEADER.size + index * _SUSPECT.size)
            if crashes:
                self.suspects[suspect] = crashes
        # The message being processed when the last run died, if it died processing one.
        self.died_processing: bytes | None = None
        if flag == _PROCESSING:
            self.died_processing = current
            self.suspects[current] = self.suspects.get(current, 0) + 1
            self._write_suspects()
            buffer[_FLAG_AT] = _IDLE

    @classmethod
    def open(cls, directory: Path | None) -> "BlackBox":
        """The black box of a state directory; one in memory only (no poison breaker) when there is none."""
        if directory is None:
            return cls(bytearray(SIZE), persistent=False)
        path = directory / FILE_NAME
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(descriptor).st_size < SIZE:
                    os.posix_fallocate(descriptor, 0, SIZE)
                buffer = mmap.mmap(descriptor, SIZE)
            finally:
                os.close(descriptor)
        except OSError as error:
            log.error(
                "cannot keep the black box %s (%s): a message that kills the aggregator will not be set aside "
                "as poison, and checkpoint failures are counted from zero",
                path,
                error,
            )
            return cls(bytearray(SIZE), persistent=False)
        return cls(buffer, persistent=True)

    def began(self, message: bytes) -> None:
        """Processing `message` (a fingerprint) starts now."""
        buffer = self._buffer
        buffer[_FLAG_AT + 1 : _FLAG_AT + 17] = message
        buffer[_FLAG_AT] = _PROCESSING

    def ended(self) -> None:
        """Processing the current message ended (applied or refused): the aggregator survived it."""
        self._buffer[_FLAG_AT] = _IDLE

    def crashes(self, message: bytes) -> int:
        """How many times the aggregator died while processing this message."""
        return self.suspects.get(message, 0)

    def forget(self, message: bytes) -> None:
        """The message is settled (processed, or set aside): it is no longer a suspect."""
        if self.suspects.pop(message, None) is not None:
            self._write_suspects()

    def count_checkpoint_failure(self, total: int) -> None:
        """Keep the failure counter's new total where a failed checkpoint cannot lose it."""
        self.checkpoint_failures = total
        struct.pack_into(">Q", self._buffer, struct.calcsize(">4sH"), total)

    def _write_suspects(self) -> None:
        # The newest suspects are kept when there are more than fit.
        kept = list(self.suspects.items())[-SUSPECTS:]
        self.suspects = dict(kept)
        rows = [*kept, *[(bytes(16), 0)] * (SUSPECTS - len(kept))]
        for index, (suspect, crashes) in enumerate(rows):
            _SUSPECT.pack_into(self._buffer, _HEADER.size + index * _SUSPECT.size, suspect, crashes)

    def close(self) -> None:
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()
