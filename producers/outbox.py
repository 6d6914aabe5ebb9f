"""The bounded buffer between emit() and the publisher: never blocks, counts what it drops."""

import itertools
from collections import deque
from typing import Any


class Outbox:
    """A bounded FIFO of events, safe to fill from any thread and drain from one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._events: deque[Any] = deque()
        # itertools.count advances atomically under the GIL, so emit() needs no lock.
        self._accepted = itertools.count(1)
        self._dropped = itertools.count(1)
        self.accepted = 0
        self.dropped = 0

    def put(self, event: Any) -> bool:
        """Queue an event; False (and counted as dropped) when the buffer is full."""
        if len(self._events) >= self.capacity:
            self.dropped = next(self._dropped)
            return False
        self._events.append(event)
        self.accepted = next(self._accepted)
        return True

    def count_dropped(self, count: int) -> None:
        """Count events dropped after they were accepted (ones that could not be encoded)."""
        for _ in range(count):
            self.dropped = next(self._dropped)

    def close(self) -> None:
        """Accept nothing more: a later put() is a counted drop, never an event silently lost."""
        self.capacity = 0

    def take(self, limit: int) -> list[Any]:
        events = self._events
        count = min(limit, len(events))
        return [events.popleft() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._events)
