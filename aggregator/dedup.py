"""Recent message ids: the bounded window that makes redeliveries and producer retries count once."""


class RecentIds:
    """A bounded, insertion-ordered window of message ids already applied."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}
        # Ids added since the last commit took them (see take_new).
        self._new: list[str] = []

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        ids = self._ids
        ids[message_id] = None
        self._new.append(message_id)
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]

    def take_new(self) -> list[str]:
        """The ids added since the last call: what a commit journals."""
        new, self._new = self._new, []
        return new[-self.capacity :] if self.capacity else []

    def give_back(self, ids: list[str]) -> None:
        """A commit that journalled these failed: the next one takes them again."""
        self._new[:0] = ids

    def snapshot(self) -> list[str]:
        return list(self._ids)

    def restore(self, message_ids: list[str]) -> None:
        self._ids = dict.fromkeys(message_ids[-self.capacity :] if self.capacity else [])
