"""The profile changelog: every profile change the job makes, as one Kafka record keyed by user id.

The job writes it through Flink's Java Kafka sink, which flushes at each checkpoint, so a change is never
lost across a failover (the in-memory Redis batch it replaces was). The profile loader
(``persona/loader.py``) applies it to Redis. The topic is compacted: it keeps each user's newest record,
which is enough to rebuild Redis (``persona loader --rebuild``).

Record layout (format 2):

- key: the user id, UTF-8;
- value: one format byte (2), the wall-clock time of the change in ms (8 bytes, big-endian: the profile's
  ``updated_at``), the fingerprint of the job's profile settings (8 bytes, ``operators.profile_fold.
  profile_fingerprint``), then the user's state exactly as Flink stores it (``state.user_state``, with its own
  format byte); the loader derives the Redis profile from it with its own profile settings, and refuses a record
  whose fingerprint is not theirs. Format 1 (builds before 2026-12-06) has no fingerprint;
- a null value (a tombstone) is an erasure: the loader deletes the profile and the user's set memberships,
  and compaction later removes the user's older records.

>>> from state.user_state import UserState, encode_state
>>> value = changelog_value(encode_state(UserState(version=2, epoch_ms=5)), 1_000, b"12345678")
>>> change = read_change(b"u1", value)
>>> change.user_id, change.updated_at_ms, change.state.version, change.fingerprint
('u1', 1000, 2, b'12345678')
>>> read_change(b"u1", None).state is None
True
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from state.user_state import UserState, decode_state

CHANGELOG_FORMAT = 2
_HEAD = struct.Struct(">BQ8s")
_HEAD_V1 = struct.Struct(">BQ")


def changelog_value(state_bytes: bytes, updated_at_ms: int, fingerprint: bytes) -> bytes:
    """The record value of a profile change: ``state_bytes`` are ``encode_state(state)``, ``fingerprint`` the job's
    ``profile_fingerprint``."""
    return _HEAD.pack(CHANGELOG_FORMAT, updated_at_ms, fingerprint) + state_bytes


@dataclass(frozen=True, slots=True)
class Change:
    user_id: str
    updated_at_ms: int
    state: UserState | None          # None: an erasure (tombstone)
    fingerprint: bytes | None = None  # of the profile settings it was made under; None in format 1


def read_change(key: bytes | None, value: bytes | None) -> Change:
    """Decode one changelog record; raises ``ValueError`` on a record this code cannot read."""
    if not key:
        raise ValueError("changelog record without a user id key")
    user_id = key.decode()
    if value is None:
        return Change(user_id, 0, None)
    if len(value) > _HEAD.size and value[0] == CHANGELOG_FORMAT:
        _, updated_at, fingerprint = _HEAD.unpack_from(value)
        return Change(user_id, updated_at, decode_state(value[_HEAD.size:]), fingerprint)
    if len(value) > _HEAD_V1.size and value[0] == 1:   # written by a build before the fingerprint
        _, updated_at = _HEAD_V1.unpack_from(value)
        return Change(user_id, updated_at, decode_state(value[_HEAD_V1.size:]))
    raise ValueError(f"changelog record of user {user_id!r}: unknown format {value[:1]!r} "
                     f"or too short ({len(value)} bytes)")


@dataclass(slots=True)
class Pending:
    """What a batch of changes does to one user: delete first (an erasure in the batch), then write ``last``."""

    erase: bool = False
    last: Change | None = None


def coalesce(changes: Iterable[Change]) -> dict[str, Pending]:
    """Per user: whether the batch erases, and the newest state after its last erasure.

    Newest by ``(epoch_ms, version)``, the order the Redis guard keeps (``state/profile_store.py``), so a
    batch gives what applying its records one by one would: a replayed or older state never wins, and on a
    tie the first one stays.

    >>> from state.user_state import UserState
    >>> s1, s2 = UserState(version=1), UserState(version=2)
    >>> out = coalesce([Change("a", 1, s2), Change("a", 2, s1), Change("b", 1, s1), Change("b", 0, None)])
    >>> out["a"].erase, out["a"].last.state.version, out["b"].erase, out["b"].last
    (False, 2, True, None)
    """
    out: dict[str, Pending] = {}
    for change in changes:
        pending = out.get(change.user_id)
        if pending is None:
            pending = out[change.user_id] = Pending()
        if change.state is None:
            pending.erase, pending.last = True, None
        elif pending.last is None or _order(change) > _order(pending.last):
            pending.last = change
    return out


def _order(change: Change) -> tuple[int, int]:
    assert change.state is not None
    return change.state.epoch_ms, change.state.version
