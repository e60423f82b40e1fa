"""A bounded cache of deserialized per-user state, in front of Flink's ValueState.

Reading Flink state unpickles the user's whole value on every event (~60 µs for a typical profile).
The operator is the only writer of its keys' state, and an operator that restores from a checkpoint
starts with an empty cache, so a cached object is always the value Flink holds: reads can be served
from memory and only writes go to Flink. Writes still go through on every event, which is what makes
the state checkpointed and the cache safe to drop at any time.

>>> c = StateCache(max_users=2)
>>> c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)   # "b" is now the least recently used
1
>>> c.get("b") is None, c.get("a"), c.get("c")
(True, 1, 3)
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class StateCache(Generic[V]):
    def __init__(self, max_users: int) -> None:
        self._max = max_users
        self._items: dict[str, V] = {}

    def get(self, key: str) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self._items[key] = value   # most recently used goes last
        return value

    def put(self, key: str, value: V) -> None:
        if self._max <= 0:
            return
        self._items.pop(key, None)
        self._items[key] = value
        if len(self._items) > self._max:
            del self._items[next(iter(self._items))]

    def drop(self, key: str) -> None:
        """Forget ``key``: its next read comes from Flink (after a failed step left the cached copy half-updated)."""
        self._items.pop(key, None)
