"""Publish items' neighbours and weights to Redis, never letting an older state of an item win.

One Lua call per changed item, pipelined per batch: the item hash (``RedisKeys.item``) is replaced only if the
stored ``folded`` count is lower, and the weight sorted sets (``RedisKeys.item_weights``) move with it. A replay
after a failover refolds the same signals from the checkpoint, so its writes are refused until it passes what
Redis holds, and Redis ends where the stream does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis

from state.keys import RedisKeys

# KEYS[1] item hash, KEYS[2] all items' weights, KEYS[3] the category's weights; ARGV[1] folded, ARGV[2] record
# JSON, ARGV[3] weight score (empty: none), ARGV[4] item id, ARGV[5] category (a field of its own: a lookup that
# applies category rules reads it for every candidate without the record's neighbours).
_PUBLISH_IF_NEWER = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'folded') or '-1')
if stored >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'folded', ARGV[1], 'record', ARGV[2], 'category', ARGV[5])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
end
return 1
"""


class ItemWriter:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self._client, self._keys = client, keys
        # Called by its SHA, loaded once (as the profile writer's guard: no SCRIPT EXISTS per pipeline).
        self._script = client.register_script(_PUBLISH_IF_NEWER)
        self.written = 0

    def publish(self, items: Iterable[tuple[dict[str, Any], float]]) -> int:
        """Write (record, weight score) pairs (``operators.item_table.published``, ``weight_score``) in one
        pipeline; returns how many were newer than Redis."""
        batch = list(items)
        if not batch:
            return 0
        try:
            replies = self._send(batch)
        except redis.exceptions.NoScriptError:   # a restarted or flushed Redis: load the script, send again
            self._client.script_load(_PUBLISH_IF_NEWER)
            replies = self._send(batch)
        applied = sum(1 for r in replies if r == 1)
        self.written += applied
        return applied

    def _send(self, batch: list[tuple[dict[str, Any], float]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        keys = self._keys
        for record, score in batch:
            item = record["item"]
            # EVALSHA by name, as the profile writer: redis-py blocks the method in a cluster pipeline. The three keys
            # share the item's slot on Redis Cluster.
            pipe.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
                "EVALSHA", self._script.sha, 3, keys.item(item), keys.item_weights(None, item),
                keys.item_weights(record["category"], item), record["folded"], orjson.dumps(record).decode(),
                repr(score) if math.isfinite(score) else "", item, record["category"])
        return pipe.execute()


def read_item(client: redis.Redis, keys: RedisKeys, item: str) -> dict[str, Any] | None:
    raw = cast(bytes | str | None, client.hget(keys.item(item), "record"))   # a sync client's reply
    return json.loads(raw) if raw else None


@dataclass
class ListInputs:
    """What a personal list is made of, as Redis holds it: the anchors' records, the weight scores of the anchors
    and their neighbours, and the best items of some categories and of the shop (item, score), best first."""

    records: dict[str, dict[str, Any]]
    scores: dict[str, float]
    by_category: dict[str, list[tuple[str, float]]]
    everything: list[tuple[str, float]]
    categories: dict[str, str] = field(default_factory=dict)   # candidate -> category, when asked for


def read_list_inputs(client: redis.Redis, keys: RedisKeys, anchors: list[str], categories: list[str],
                     per_category: int, overall: int, with_categories: bool = False) -> ListInputs:
    """Two round trips: the anchors' records and the best items, then the weight scores of every candidate (and,
    ``with_categories``, the category of every candidate that is not in a category's ranking)."""
    pipe = client.pipeline(transaction=False)
    for item in anchors:
        pipe.hget(keys.item(item), "record")
    rankings = [*((keys.item_weight_keys(c), per_category) for c in categories), (keys.item_weight_keys(), overall)]
    for shards, n in rankings:
        for key in shards:   # one set on a server; on Redis Cluster the best n of each shard hold the best n
            pipe.zrevrange(key, 0, max(n, 1) - 1, withscores=True)
    replies = pipe.execute()
    records = {item: json.loads(raw) for item, raw in zip(anchors, replies, strict=False) if raw}
    ranked, at = [], len(anchors)
    for shards, n in rankings:
        merged = [(_text(item), float(score)) for reply in replies[at:at + len(shards)] for item, score in reply]
        # Redis orders equal scores by member, descending (ZREVRANGE): the merge keeps that order.
        ranked.append(sorted(merged, key=lambda pair: (pair[1], pair[0]), reverse=True)[:max(n, 1)] if len(shards) > 1
                      else merged)
        at += len(shards)
    everything = ranked.pop()
    wanted = sorted(set(records) | {other for r in records.values() for other, _ in r["neighbours"]})
    by_category = dict(zip(categories, ranked, strict=True))
    unplaced: list[str] = []
    if with_categories:
        placed = {item for best in by_category.values() for item, _ in best}
        unplaced = sorted(({*wanted, *(item for item, _ in everything)}) - placed)
    pipe = client.pipeline(transaction=False)
    by_set: dict[str, list[str]] = {}   # one set on a server; on Redis Cluster, the shard of each item
    for item in wanted:
        by_set.setdefault(keys.item_weights(None, item), []).append(item)
    for key, members in by_set.items():
        pipe.zmscore(key, members)
    for item in unplaced:
        pipe.hget(keys.item(item), "category")
    replies = pipe.execute() if wanted or unplaced else []
    scores = {item: weight for members, reply in zip(by_set.values(), replies, strict=False)
              for item, weight in zip(members, cast(list[float | None], reply), strict=True)}
    found = {item: _text(c) for item, c in zip(unplaced, replies[len(by_set):], strict=True) if c}
    return ListInputs(records, {k: float(v) for k, v in scores.items() if v is not None}, by_category, everything, found)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
