"""Where the project's Redis is and how its keys are laid out: one server, or a Redis Cluster.

A ``RedisTarget`` is small and picklable, so a Flink function carries it and connects in ``open()``. On Redis
Cluster the client is redis-py's ``RedisCluster``: it routes each command, and each pipeline per node, by the
key's slot, follows MOVED and ASK replies and finds the new master after a failover. It offers the commands the
project uses with the same signatures as ``redis.Redis``, so the stores take either (typed as ``redis.Redis``).

>>> RedisTarget("redis://127.0.0.1:6379/0", "persona:").keys()
RedisKeys(prefix='persona:', buckets=0)
>>> RedisTarget("redis://127.0.0.1:7000/0", "persona:", cluster_buckets=64).keys().clustered
True
>>> _cluster_url("redis://user:pw@10.0.0.5:7000/0?ssl_ca_certs=/ca.pem")
'redis://user:pw@10.0.0.5:7000?ssl_ca_certs=/ca.pem'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis

from state.keys import RedisKeys


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str                   # with credentials merged in: never log it (persona.settings masks it)
    prefix: str
    cluster_buckets: int = 0   # > 0: a Redis Cluster, per-user keys in this many hash-tag buckets (state/keys.py)

    @property
    def cluster(self) -> bool:
        return self.cluster_buckets > 0

    def keys(self) -> RedisKeys:
        return RedisKeys(self.prefix, self.cluster_buckets)

    def client(self, **options: Any) -> redis.Redis:
        """A client for this target; ``options`` as for ``redis.Redis`` (``socket_timeout``, ...)."""
        return connect(self.url, self.cluster, **options)


def connect(url: str, cluster: bool = False, **options: Any) -> redis.Redis:
    """``redis.Redis.from_url(url)``, or a ``RedisCluster`` seeded by that node when ``cluster``."""
    if not cluster:
        return redis.Redis.from_url(url, **options)
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException
    # A cluster has database 0 only, and redis-py refuses a ``db`` argument: the URL's path is dropped.
    try:
        return cast(redis.Redis, RedisCluster.from_url(_cluster_url(url), **options))
    except RedisClusterException as e:   # it connects at once; callers handle a server that does not answer
        raise redis.exceptions.ConnectionError(f"Redis Cluster: {e}") from None


def _cluster_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has database 0 only, not {parts.path.lstrip('/')!r}")
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))
