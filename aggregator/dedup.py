"""Recent message ids: the bounded window that makes redeliveries and producer retries count once."""


class RecentIds:
    """A bounded, insertion-ordered window of message ids already applied."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        ids = self._ids
        ids[message_id] = None
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]

    def snapshot(self) -> list[str]:
        return list(self._ids)

    def restore(self, message_ids: list[str]) -> None:
        self._ids = dict.fromkeys(message_ids[-self.capacity :] if self.capacity else [])
