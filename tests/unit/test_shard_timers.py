"""ShardTimers: a shard's user timers are restored on first use, written back once per batch, and the shard's
Flink timer is registered only when its earliest time moves."""

from __future__ import annotations

from jobs.shard_timers import ShardTimers
from state.user_timers import decode_times, encode_times


class MapStateOfOneShard(dict[str, bytes]):
    """The calls ShardTimers makes on a PyFlink MapState (items, put_all, remove), over a dict."""

    def put_all(self, entries: dict[str, bytes]) -> None:
        self.update(entries)

    def remove(self, key: str) -> None:
        del self[key]


class Registered(list[int]):
    def register_event_time_timer(self, t: int) -> None:
        self.append(t)


def test_restore_persist_and_one_flink_timer_per_earliest_time() -> None:
    state = MapStateOfOneShard({"u1": encode_times([50, 70])})
    shard = ShardTimers(state)
    timers, first = shard.of(7)
    assert first and timers.next_due() == 50 and shard.of(7) == (timers, False)
    registered = Registered()
    timers.arm("u2", 30)
    shard.persist(7, timers, registered)
    assert decode_times(state["u2"]) == [30] and registered == [30]
    timers.arm("u2", 40)
    shard.persist(7, timers, registered)
    assert decode_times(state["u2"]) == [30, 40] and registered == [30]   # the earliest did not move
    assert timers.pop_due(40) == (30, "u2") and timers.pop_due(40) == (40, "u2")
    shard.fired(7)
    shard.persist(7, timers, registered)
    assert "u2" not in state and decode_times(state["u1"]) == [50, 70] and registered == [30, 50]
