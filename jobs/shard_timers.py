"""The per-user timers of each shard in Flink state, and the one Flink timer per shard at the earliest of them.

The runner keeps each shard's timers in a ``state.user_timers.UserTimers``; this class restores it from the
shard's map state (``TIMERS_STATE``: user -> encoded times) at its first use since ``open``, writes back the users
whose times changed once per batch, and registers the shard's Flink event-time timer only when its earliest
time moved (a timer already armed is never registered again).
"""

from __future__ import annotations

from typing import Any

from state.user_timers import UserTimers, decode_times, encode_times


class ShardTimers:
    def __init__(self, state: Any) -> None:
        self._state = state                          # MapState[str, bytes] of the current shard
        self._timers: dict[int, UserTimers] = {}     # per shard, restored on first use
        self._armed: dict[int, int] = {}             # per shard, the Flink timer last registered

    def of(self, shard: int) -> tuple[UserTimers, bool]:
        """The shard's timers, and whether this was their first use since ``open`` (just restored)."""
        timers = self._timers.get(shard)
        if timers is not None:
            return timers, False
        timers = self._timers[shard] = UserTimers()
        for user, data in self._state.items():
            timers.restore(user, decode_times(data))
        return timers, True

    def fired(self, shard: int) -> None:
        """The shard's Flink timer fired: the next ``persist`` registers one again."""
        self._armed.pop(shard, None)

    def persist(self, shard: int, timers: UserTimers, timer_service: Any) -> None:
        changed = timers.take_changed()
        if changed:
            pending = {}
            for user in changed:
                times = timers.times_of(user)
                if times:
                    pending[user] = encode_times(times)
                else:
                    self._state.remove(user)
            if pending:
                self._state.put_all(pending)
        due = timers.next_due()
        if due is not None and self._armed.get(shard) != due:
            timer_service.register_event_time_timer(due)
            self._armed[shard] = due
