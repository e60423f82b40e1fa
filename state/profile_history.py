"""Profile history: every version of every profile, one Kafka record each, kept for a retention period.

The compacted changelog (``state/profile_changelog.py``) keeps only each user's newest state. With
``history.profile_versions`` on, the job also writes each version it makes to the history topic
(``kafka.topics.profile_history``), so "what did we know about this user when that trigger went out?" has an
answer (``persona profile USER --at TIME`` and ``--history``; docs/history.md "Profile history").

Record layout (format 1):

- key: ``{user_id}@{version}``, UTF-8. One key per version: the topic is ``compact,delete``, so compaction
  never merges two versions, retention deletes old ones, and an erasure's tombstones (one per version the user
  had) remove them;
- value: one format byte (1), the *as-of* time in ms (8 bytes, big-endian: the event time of the event or of
  the timer that made the version), then the changelog value of that version (``changelog_value``: its wall
  clock, fingerprint and encoded state);
- a null value (a tombstone) erases that version.

A version's as-of time is the time of the step that made it. Steps come in arrival order, which an
out-of-order event or a timer can make non-monotone, so "the profile at T" is the last version before the
running maximum of the as-of times passes T: what the job held before it saw anything later than T.

>>> from state.user_state import UserState, encode_state
>>> from state.profile_changelog import changelog_value
>>> key, value = history_record("u1", 3, 5_000, changelog_value(encode_state(UserState(version=3)), 9, b"12345678"))
>>> key, read_version(key, value).as_of_ms, read_version(key, value).change.state.version
(b'u1@3', 5000, 3)
>>> versions = [Version("u1", v, t, None) for v, t in [(1, 10), (2, 40), (3, 20), (4, 50)]]   # 3 arrived late
>>> at(versions, 30).version, at(versions, 45).version, at(versions, 5)
(1, 3, None)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from state.profile_changelog import Change, read_change

HISTORY_FORMAT = 1
_HEAD = struct.Struct(">BQ")


def history_key(user_id: str, version: int) -> str:
    return f"{user_id}@{version}"


def history_record(user_id: str, version: int, as_of_ms: int, change_value: bytes) -> tuple[bytes, bytes]:
    """(key, value) of one version; ``change_value`` is the changelog value of that version."""
    return history_key(user_id, version).encode(), history_value(as_of_ms, change_value)


def history_value(as_of_ms: int, change_value: bytes) -> bytes:
    return _HEAD.pack(HISTORY_FORMAT, max(as_of_ms, 0)) + change_value


def split_key(key: bytes) -> tuple[str, int]:
    """(user id, version) of a history key; ``ValueError`` if it is not one. A user id may hold '@'."""
    user, sep, version = key.decode().rpartition("@")
    if not sep or not version.isdigit():
        raise ValueError(f"not a profile history key: {key!r}")
    return user, int(version)


@dataclass(frozen=True, slots=True)
class Version:
    user_id: str
    version: int
    as_of_ms: int
    change: Change | None        # None: erased (a tombstone)


def read_version(key: bytes, value: bytes | None) -> Version:
    """One history record; raises ``ValueError`` on a record this code cannot read."""
    user, version = split_key(key)
    if value is None:
        return Version(user, version, 0, None)
    if len(value) <= _HEAD.size or value[0] != HISTORY_FORMAT:
        raise ValueError(f"profile history record {key!r}: unknown format {value[:1]!r} or too short")
    _, as_of = _HEAD.unpack_from(value)
    return Version(user, version, as_of, read_change(user.encode(), value[_HEAD.size:]))


def live_versions(records: Iterable[tuple[bytes, bytes | None]], user_id: str) -> list[Version]:
    """The versions of ``user_id`` that ``records`` (key, value; in offset order per key) still hold, oldest
    first: a later record of a key replaces an earlier one (a redelivery, a tombstone)."""
    prefix = f"{user_id}@".encode()
    return every_user(((k, v) for k, v in records if k is not None and k.startswith(prefix))).get(user_id, [])


def every_user(records: Iterable[tuple[bytes, bytes | None]]) -> dict[str, list[Version]]:
    """Per user, the versions ``records`` still hold, oldest first (see ``live_versions``); records that are not
    history records are skipped."""
    newest: dict[str, dict[int, Version]] = {}
    for key, value in records:
        try:
            v = read_version(key, value)
        except ValueError:
            continue
        newest.setdefault(v.user_id, {})[v.version] = v
    out = {user: [v for _, v in sorted(held.items()) if v.change is not None] for user, held in newest.items()}
    return {user: versions for user, versions in out.items() if versions}


def at(versions: Sequence[Version], time_ms: int) -> Version | None:
    """The version the job held before it saw anything later than ``time_ms`` (``versions`` oldest first)."""
    found, newest = None, 0
    for v in versions:
        newest = max(newest, v.as_of_ms)
        if newest > time_ms:
            break
        found = v
    return found
