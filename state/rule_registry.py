"""The rule-set registry in Redis: every published version, the one in force, and which subtasks applied it.

``rules:versions`` is a hash (version -> ``RuleSet`` JSON, operators/rule_sets.py), ``rules:current`` the
version in force, ``rules:applied`` a hash (subtask index -> JSON of the version it switched to and when).
Versions are never rewritten: a rollback publishes the old source as a new version. A publication is a
script that refuses a version number already taken, so two publishers never get the same number.
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


# KEYS[1] rules:current, KEYS[2] rules:versions; ARGV[1] the new version, ARGV[2] its JSON. The version is the
# newest + 1 that the publisher read: if it exists now, another publication got in between, and nothing is written.
_PUBLISH_IF_UNTAKEN = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


def publish(client: redis.Redis, keys: RedisKeys, make: Callable[[RuleSet | None], RuleSet]) -> RuleSet:
    """Store ``make(newest)`` as the next version and put it in force, atomically (one script on the two keys,
    which share a slot on Redis Cluster); made again from the new newest if another publication got in between."""
    script = client.register_script(_PUBLISH_IF_UNTAKEN)
    while True:
        versions = [int(v) for v in cast(list[bytes], client.hkeys(keys.rules_versions()))]
        newest_raw = cast(bytes | None, client.hget(keys.rules_versions(), str(max(versions)))) if versions else None
        new = make(RuleSet.from_json(newest_raw) if newest_raw is not None else None)
        if script(keys=[keys.rules_current(), keys.rules_versions()], args=[str(new.version), new.to_json()]) == 1:
            return new


def record_applied(client: redis.Redis, keys: RedisKeys, subtask: int, subtasks: int, version: int) -> None:
    """A subtask of the job says it switched to ``version`` (``persona rules list`` shows it)."""
    client.hset(keys.rules_applied(), str(subtask),
                json.dumps({"version": version, "at": int(time.time() * 1000), "subtasks": subtasks}))


def applied(client: redis.Redis, keys: RedisKeys) -> dict[int, dict[str, int]]:
    raw = cast(dict[bytes, bytes], client.hgetall(keys.rules_applied()))
    return {int(k): json.loads(v) for k, v in raw.items()}
