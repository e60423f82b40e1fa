"""The profile changelog's record format and per-batch coalescing (what the loader applies to Redis)."""

from __future__ import annotations

import pytest

from state.profile_changelog import Change, changelog_value, coalesce, read_change
from state.user_state import UserState, encode_state


def test_a_change_round_trips_with_its_state_and_time() -> None:
    state = UserState(version=7, newest_event_ms=123, epoch_ms=99)
    change = read_change(b"u\xc3\xa9", changelog_value(encode_state(state), 1_700_000_000_123, b"\x00" * 8))
    assert (change.user_id, change.updated_at_ms, change.state) == ("u\u00e9", 1_700_000_000_123, state)


@pytest.mark.parametrize("key, value, message", [
    (None, b"x", "without a user id"),
    (b"u1", b"\x03" + bytes(16) + encode_state(UserState()), "unknown format"),
    (b"u1", b"\x02" + bytes(16), "too short"),
    (b"u1", b"\x01" + bytes(8), "too short"),
    (b"u1", b"\x01" + bytes(8) + b"\x07garbage", "user state format"),
])
def test_unreadable_records_raise_value_error(key: bytes | None, value: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_change(key, value)


def test_a_state_after_an_erasure_in_the_same_batch_is_written_after_the_delete() -> None:
    old, new = UserState(version=9), UserState(version=1, epoch_ms=5)
    out = coalesce([Change("u", 1, old), Change("u", 0, None), Change("u", 2, new)])
    assert out["u"].erase and out["u"].last is not None and out["u"].last.state is new


def test_the_newest_state_per_user_wins_as_the_redis_guard_orders_them() -> None:
    a1, a2, b1 = UserState(version=1), UserState(version=2), UserState(version=1)
    restarted = UserState(version=1, epoch_ms=50)   # a state lost and started afresh: a newer epoch
    out = coalesce([Change("a", 1, a1), Change("b", 1, b1), Change("a", 2, a2), Change("a", 3, a1),
                    Change("c", 1, UserState(version=9, epoch_ms=10)), Change("c", 2, restarted)])
    assert {u: (p.erase, p.last.state.version if p.last and p.last.state else None) for u, p in out.items()} == {
        "a": (False, 2), "b": (False, 1), "c": (False, 1)}


def test_a_replay_of_the_same_version_keeps_the_first() -> None:
    first, replayed = UserState(version=4, newest_event_ms=1), UserState(version=4, newest_event_ms=2)
    last = coalesce([Change("a", 1, first), Change("a", 2, replayed)])["a"].last
    assert last is not None and last.state is first
