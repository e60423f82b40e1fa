"""The rule-set registry in Redis: every published version, the one in force, and which subtasks applied it.

``rules:versions`` is a hash (version -> ``RuleSet`` JSON, operators/rule_sets.py), ``rules:current`` the
version in force, ``rules:applied`` a hash (subtask index -> JSON of the version it switched to and when).
Versions are never rewritten: a rollback publishes the old source as a new version. A publication is a
transaction on ``rules:current`` (WATCH), so two publishers never get the same number.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import cast

import redis

from state.keys import RedisKeys
from state.rule_set_record import RuleSet


def current_version(client: redis.Redis, keys: RedisKeys) -> int | None:
    """The version in force (one GET: the job calls it every ``rules.refresh_ms``)."""
    raw = cast(bytes | None, client.get(keys.rules_current()))
    return int(raw) if raw is not None else None


def rule_set(client: redis.Redis, keys: RedisKeys, version: int) -> RuleSet | None:
    raw = cast(bytes | None, client.hget(keys.rules_versions(), str(version)))
    return RuleSet.from_json(raw) if raw is not None else None


def current_rule_set(client: redis.Redis, keys: RedisKeys) -> RuleSet | None:
    version = current_version(client, keys)
    return rule_set(client, keys, version) if version is not None else None


def all_rule_sets(client: redis.Redis, keys: RedisKeys) -> list[RuleSet]:
    raw = cast(dict[bytes, bytes], client.hgetall(keys.rules_versions()))
    return sorted((RuleSet.from_json(v) for v in raw.values()), key=lambda r: r.version)


def publish(client: redis.Redis, keys: RedisKeys, make: Callable[[RuleSet | None], RuleSet]) -> RuleSet:
    """Store ``make(newest)`` as the next version and put it in force, atomically; retried if another
    publication got in between."""
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(keys.rules_current(), keys.rules_versions())  # type: ignore[no-untyped-call]
                versions = [int(v) for v in cast(list[bytes], pipe.hkeys(keys.rules_versions()))]
                newest_raw = cast(bytes | None, pipe.hget(keys.rules_versions(), str(max(versions)))) if versions else None
                new = make(RuleSet.from_json(newest_raw) if newest_raw is not None else None)
                pipe.multi()
                pipe.hset(keys.rules_versions(), str(new.version), new.to_json())
                pipe.set(keys.rules_current(), str(new.version))
                pipe.execute()
                return new
            except redis.WatchError:
                continue


def record_applied(client: redis.Redis, keys: RedisKeys, subtask: int, subtasks: int, version: int) -> None:
    """A subtask of the job says it switched to ``version`` (``persona rules list`` shows it)."""
    client.hset(keys.rules_applied(), str(subtask),
                json.dumps({"version": version, "at": int(time.time() * 1000), "subtasks": subtasks}))


def applied(client: redis.Redis, keys: RedisKeys) -> dict[int, dict[str, int]]:
    raw = cast(dict[bytes, bytes], client.hgetall(keys.rules_applied()))
    return {int(k): json.loads(v) for k, v in raw.items()}
