"""Per-user event-time timers of one shard, held by the runner (``operators/runner.py``) instead of by Flink.

Flink keeps one timer per (key, time). With one Python call per batch of a shard, the users' timers live
here: a heap in (time, user) order, with one entry per (user, time), and the set of users whose timers
changed since the caller last persisted them. The Flink function stores each user's times in a map state
entry (``TIMERS_STATE``) and registers one Flink timer per shard, at ``next_due()``.

>>> t = UserTimers()
>>> t.arm("b", 20); t.arm("a", 20); t.arm("a", 10); t.arm("a", 10)
>>> t.next_due(), [t.pop_due(20), t.pop_due(20), t.pop_due(20), t.pop_due(20)]
(10, [(10, 'a'), (20, 'a'), (20, 'b'), None])
>>> sorted(t.take_changed())
['a', 'b']
>>> t.times_of("a"), decode_times(encode_times([30, 40]))
([], [30, 40])
"""

from __future__ import annotations

import heapq

import msgspec

# Persisted state name (one map entry per user with pending timers): renaming it loses the timers on restore.
TIMERS_STATE = "user_timers_v1"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[int])


def encode_times(times: list[int]) -> bytes:
    return _encoder.encode(times)


def decode_times(data: bytes) -> list[int]:
    return _decoder.decode(data)


class UserTimers:
    __slots__ = ("_heap", "_times", "_changed")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._times: dict[str, list[int]] = {}
        self._changed: set[str] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def restore(self, user: str, times: list[int]) -> None:
        """A user's persisted times (after a restart): armed again without counting as a change."""
        for t in times:
            if self._add(user, t):
                heapq.heappush(self._heap, (t, user))

    def arm(self, user: str, t: int) -> None:
        """One timer per (user, time), as in Flink: arming it twice is a no-op."""
        if self._add(user, t):
            heapq.heappush(self._heap, (t, user))
            self._changed.add(user)

    def _add(self, user: str, t: int) -> bool:
        times = self._times.setdefault(user, [])
        if t in times:
            return False
        times.append(t)
        return True

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, watermark_ms: int) -> tuple[int, str] | None:
        """The earliest timer at or before ``watermark_ms``, in (time, user) order; None when none is due."""
        if not self._heap or self._heap[0][0] > watermark_ms:
            return None
        t, user = heapq.heappop(self._heap)
        times = self._times[user]
        times.remove(t)
        if not times:
            del self._times[user]
        self._changed.add(user)
        return t, user

    def users(self) -> list[str]:
        """The users with a timer armed."""
        return list(self._times)

    def times_of(self, user: str) -> list[int]:
        return sorted(self._times.get(user, ()))

    def take_changed(self) -> set[str]:
        """The users whose timers changed since the last call (to persist ``times_of`` each, or delete it)."""
        changed, self._changed = self._changed, set()
        return changed
