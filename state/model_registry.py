"""Published model snapshots in Redis: the newest one's metrics, and the last N versions for pinning.

``model:{name}`` is a hash (version, model_schema, examples, created_at, metrics as JSON, pinned);
``model:{name}:v{n}`` holds the models-topic record of version n; ``model:{name}:versions`` lists the
kept versions. The trainer writes them as it publishes; ``persona models`` reads them and re-publishes
a kept version as a pin.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from state.keys import RedisKeys


def record_snapshot(client: redis.Redis, keys: RedisKeys, record: dict[str, Any], keep: int,
                    descriptions: list[str] | None = None) -> None:
    """``descriptions``: per segment, a readable description (the segments model), kept beside the metrics."""
    name, version = record["model"], int(record["version"])
    # One MULTI on a server. redis-py has no transactions on Redis Cluster: there the writes go in this order in one
    # pipeline to the node of the model's slot (its keys share a hash tag), the blob before the version naming it.
    pipe = client.pipeline(transaction=not keys.clustered)
    pipe.set(keys.model_blob(name, version), json.dumps(record))
    pipe.zadd(keys.model_versions(name), {str(version): version})
    fields: dict[str, Any] = {
        "version": version, "model_schema": record["model_schema"], "examples": record["examples"],
        "created_at": record["created_at"], "metrics": json.dumps(record["metrics"], sort_keys=True)}
    if descriptions is not None:
        fields["descriptions"] = json.dumps(descriptions)
    pipe.hset(keys.model(name), mapping=fields)
    pipe.execute()
    # redis-py types every reply as "awaitable or value" (one API for sync and async clients): these are sync.
    old = cast(list[bytes], client.zrange(keys.model_versions(name), 0, -keep - 1))
    pinned = cast(bytes | None, client.hget(keys.model(name), "pinned"))
    # A pinned version is never evicted: scorers that restart must still find it (the newest is never old).
    old = [v for v in old if pinned is None or int(v) != int(pinned)]
    if old:
        pipe = client.pipeline(transaction=not keys.clustered)
        pipe.zrem(keys.model_versions(name), *old)   # unlisted before its blob goes
        for v in old:
            pipe.delete(keys.model_blob(name, int(v)))
        pipe.execute()


def model_info(client: redis.Redis, keys: RedisKeys, name: str) -> dict[str, Any] | None:
    """The newest snapshot's description (metrics decoded), or None if the model never published."""
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in cast(dict[bytes, bytes], client.hgetall(keys.model(name))).items()}
    if not raw:
        return None
    out: dict[str, Any] = {k: int(v) for k, v in raw.items() if k in ("version", "model_schema", "examples", "created_at")}
    out["metrics"] = json.loads(raw.get("metrics", "{}"))
    if raw.get("descriptions"):
        out["descriptions"] = json.loads(raw["descriptions"])
    out["pinned"] = int(raw["pinned"]) if raw.get("pinned") else None
    out["versions"] = [int(v) for v in cast(list[bytes], client.zrange(keys.model_versions(name), 0, -1))]
    return out


def newest_version(client: redis.Redis, keys: RedisKeys, name: str) -> int:
    """The highest version the registry knows for ``name`` (0 if none): a trainer that lost its state continues
    from it, so its snapshots are newer than what scorers serve instead of being evicted at once."""
    newest = cast(list[tuple[bytes, float]], client.zrange(keys.model_versions(name), -1, -1, withscores=True))
    stored = cast(bytes | None, client.hget(keys.model(name), "version"))
    return max([int(score) for _, score in newest] + ([int(stored)] if stored else []) + [0])


def kept_versions(client: redis.Redis, keys: RedisKeys, name: str) -> list[int]:
    """The kept versions of ``name``, newest first."""
    return [int(v) for v in cast(list[bytes], client.zrevrange(keys.model_versions(name), 0, -1))]


def kept_record(client: redis.Redis, keys: RedisKeys, name: str, version: int) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.get(keys.model_blob(name, version)))
    return json.loads(raw) if raw else None


def set_pinned(client: redis.Redis, keys: RedisKeys, name: str, version: int | None) -> None:
    if version is None:
        client.hdel(keys.model(name), "pinned")
    else:
        client.hset(keys.model(name), "pinned", str(version))
