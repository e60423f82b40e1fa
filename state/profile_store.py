"""Write profiles to Redis in pipelined batches, coalesced per user, never letting an old version win.

The writer holds at most one pending profile per user; ``flush`` sends them all in one pipeline through a
small Lua script that replaces the hash only if the stored ``(profile_epoch, profile_version)`` is older.
Replays after a restart therefore cannot move a profile backwards, and the batch bound keeps freshness
predictable. The epoch is the wall-clock time at which the job created the user's state: a state lost
and started afresh (version 1 again) has a newer epoch, so its writes win instead of being refused until
the stored profile expires.
Time is passed in (``now_ms``) so batching is testable without a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from state.keys import RedisKeys
from state.redis_client import connect

# KEYS[1] profile hash, KEYS[2..] segment sets; ARGV[1] new profile_version, ARGV[2] ttl seconds,
# ARGV[3] user id, ARGV[4] ",i,j," indices of the segments the user belongs to (1-based over KEYS[2..]),
# ARGV[5] profile_epoch, ARGV[6..] field, value, ... The segment update happens only with the profile it
# belongs to. A stored profile without an epoch (written before epochs) counts as epoch 0.
_REPLACE_IF_NEWER = """
local cur = redis.call('HMGET', KEYS[1], 'profile_epoch', 'profile_version')
if cur[2] then
  local stored_epoch, epoch = tonumber(cur[1]) or 0, tonumber(ARGV[5])
  if stored_epoch > epoch or (stored_epoch == epoch and tonumber(cur[2]) >= tonumber(ARGV[1])) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'profile_epoch', ARGV[5], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local member = ARGV[4]
for i = 2, #KEYS do
  if string.find(member, ',' .. (i - 1) .. ',', 1, true) then redis.call('SADD', KEYS[i], ARGV[3]) else redis.call('SREM', KEYS[i], ARGV[3]) end
end
return 1
"""


# The fields, or a function giving them (or giving the fields and the user's sets): encoding is deferred to
# the flush, so a user's profile is encoded once per batch however many events it had.
Fields = Mapping[str, str] | Callable[[], Mapping[str, str] | tuple[Mapping[str, str], tuple[str, ...]]]


class ProfileWriter:
    """Batching, idempotent profile writer. Create it in a Flink function's ``open()``; call ``close()``."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, ttl_s: int, flush_interval_ms: int,
                 max_batch: int, segments: tuple[str, ...] = ()) -> None:
        self._client = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._interval = flush_interval_ms
        self._max_batch = max_batch
        # Called by its SHA, loaded once: a registered script in a pipeline costs a SCRIPT EXISTS round trip at
        # every flush (redis-py's Pipeline.load_scripts), on the loader's per-record path.
        self._script = client.register_script(_REPLACE_IF_NEWER)
        self._segments = segments
        # The segment sets a user's script touches: in the slot of the user's profile on Redis Cluster (one set per
        # bucket and segment), the same sets for everyone on one server.
        self._segment_keys: dict[int, list[str]] = {}
        self._index = {name: i + 1 for i, name in enumerate(segments)}   # 1-based, as the script counts
        self._pending: dict[str, tuple[int, int, Fields, tuple[str, ...]]] = {}
        self._erase: set[str] = set()
        self._oldest_ms: int | None = None
        self.written = 0
        self.skipped_stale = 0

    @classmethod
    def from_url(cls, url: str, keys: RedisKeys, ttl_s: int, flush_interval_ms: int, max_batch: int,
                 segments: tuple[str, ...] = ()) -> ProfileWriter:
        return cls(connect(url, keys.clustered), keys, ttl_s, flush_interval_ms, max_batch, segments)

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._erase)

    def put(self, user_id: str, version: int, fields: Fields, now_ms: int, segment: str | None = None,
            segments: tuple[str, ...] = (), epoch: int = 0) -> None:
        """Queue a profile; a newer version for the same user replaces the queued one.

        ``(epoch, version)`` orders the writes of a user: see the module docstring.

        ``fields`` may be a function: it is called once, at the flush, if this version is still the pending one.
        It may return ``(fields, segments)``, the sets then being decided at the flush too.

        ``segment`` or ``segments`` (of the writer's ``segments``) are the sets the user belongs to; it leaves the others.
        """
        if self._oldest_ms is None:
            self._oldest_ms = now_ms
        self._pending[user_id] = (version, epoch, fields, (segment,) if segment is not None else segments)

    def erase(self, user_id: str, now_ms: int) -> None:
        """Delete the user's profile and segment memberships (erasure request), before any later put."""
        if self._oldest_ms is None:
            self._oldest_ms = now_ms
        self._pending.pop(user_id, None)
        self._erase.add(user_id)

    def due(self, now_ms: int) -> bool:
        """True when the batch is full or its oldest entry has waited ``flush_interval_ms``."""
        if not self._pending:
            return False
        assert self._oldest_ms is not None
        return len(self._pending) >= self._max_batch or now_ms - self._oldest_ms >= self._interval

    def flush(self) -> int:
        """Send all pending profiles in one pipeline; returns how many replaced the stored one."""
        if not self._pending and not self._erase:
            return 0
        try:
            results = self._send()
        except redis.exceptions.NoScriptError:   # a restarted or flushed Redis: load the script, send again
            self._client.script_load(_REPLACE_IF_NEWER)
            results = self._send()
        applied = sum(1 for r in results if r == 1)
        self.written += applied
        self.skipped_stale += len(results) - applied
        self._pending.clear()
        self._erase.clear()
        self._oldest_ms = None
        return applied

    def _send(self) -> list[Any]:
        """One pipeline: the erasures first, then every pending profile through the guard (idempotent: sent again
        after a NOSCRIPT, the deletes repeat and the guard skips what is already written)."""
        pipe = self._client.pipeline(transaction=False)
        for user_id in self._erase:
            pipe.delete(self._keys.profile(user_id))
            for key in self._sets_of(user_id):
                pipe.srem(key, user_id)
        erase_replies = len(self._erase) * (1 + len(self._segments))
        for user_id, (version, epoch, fields, member_of) in self._pending.items():
            values = fields() if callable(fields) else fields
            if isinstance(values, tuple):
                values, member_of = values
            indices = "," + "".join(f"{self._index[s]}," for s in member_of if s in self._index)
            args: list[Any] = [version, self._ttl_s, user_id, indices, epoch]
            for k, v in values.items():
                args += (k, v)
            # EVALSHA by name: redis-py 5 blocks the ``evalsha`` method in a cluster pipeline, yet routes the command
            # by its first key (the keys share the user's slot).
            pipe.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
                "EVALSHA", self._script.sha, 1 + len(self._segments), self._keys.profile(user_id),
                *self._sets_of(user_id), *args)
        return pipe.execute()[erase_replies:]

    def _sets_of(self, user_id: str) -> list[str]:
        bucket = self._keys.bucket(user_id) if self._keys.clustered else 0
        sets = self._segment_keys.get(bucket)
        if sets is None:
            sets = self._segment_keys[bucket] = [self._keys.segment_of(name, user_id) for name in self._segments]
        return sets

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._client.close()


# Fields stored as decimal text and as JSON text (schemas/profile.v1.json); the rest are plain strings.
_INT_FIELDS = frozenset({"profile_version", "profile_epoch", "propensity_version", "updated_at", "last_event_time", "events_total", "session_count",
                         "current_session_length_ms", "current_session_product_dwell_ms", "sessions_7d",
                         "purchases_7d", "local_hour", "cart_items", "cart_value_minor"})
_JSON_FIELDS = frozenset({"counts_by_type", "windows", "recent_sessions", "rfm", "affinities", "device_mix",
                          "demographics", "marketing_consent", "consent", "consent_history", "propensity", "bot_score", "bot",
                          "cart_products", "recent_items"})


def read_profile(client: redis.Redis, keys: RedisKeys, user_id: str) -> dict[str, Any] | None:
    """The stored profile, typed (ints, JSON values, booleans), or None when the user has no profile.

    This is the read API for front-ends; unknown fields are returned as text.
    """
    raw = cast(dict[bytes | str, bytes | str], client.hgetall(keys.profile(user_id)))   # a sync client's reply
    return typed_profile(raw) if raw else None


def typed_profile(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """A profile hash's fields typed as ``read_profile`` returns them (from Redis, or from ``profile_record``)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        # Works with clients that decode responses and with those that return bytes.
        name = k.decode() if isinstance(k, bytes) else k
        text = v.decode() if isinstance(v, bytes) else v
        out[name] = int(text) if name in _INT_FIELDS else json.loads(text) if name in _JSON_FIELDS else text
    return out


def segment_members(client: redis.Redis, keys: RedisKeys, name: str) -> set[str]:
    """The user ids in a segment: one set on a server, the union of its bucket sets on a cluster (pipelined)."""
    pipe = client.pipeline(transaction=False)
    for key in keys.segment_keys(name):
        pipe.smembers(key)
    return {m.decode() if isinstance(m, bytes) else m for members in pipe.execute() for m in members}


def segment_size(client: redis.Redis, keys: RedisKeys, name: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys.segment_keys(name):
        pipe.scard(key)
    return sum(pipe.execute())
