"""The item operator: keyed by item shard, it folds the users' item signals into the items' states and
publishes each changed item's neighbours and weight to Redis (docs/recommendations.md).

Input: one record per (personalize batch, item shard), the shard's signals as MessagePack
(``operators.item_table.signal_batches``), keyed on the Java side. State per shard: a map of item -> encoded
``ItemNeighbours``, written once per record with ``put_all``. It holds aggregates only, never a user id.

Redis is written after the state, guarded by each item's ``folded`` count (``state.item_store``): after a
failover the restored state refolds the same signals, and Redis ends where the stream does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from jobs.state_ttl import state_ttl
from operators.co_occurrence import RecommendRules
from operators.item_table import ItemFold, decode_signals, publications
from state.item_state import ITEM_STATE, encode_item
from state.item_store import ItemWriter
from state.keys import RedisKeys

log = logging.getLogger(__name__)


class FoldItems(KeyedProcessFunction):
    def __init__(self, rules: RecommendRules, redis_url: str, key_prefix: str, state_ttl_s: int) -> None:
        self._rules, self._redis_url, self._prefix, self._ttl_s = rules, redis_url, key_prefix, state_ttl_s

    def open(self, runtime_context: RuntimeContext) -> None:
        items = MapStateDescriptor(ITEM_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        items.enable_time_to_live(state_ttl(self._ttl_s))
        self._items = runtime_context.get_map_state(items)
        self._fold = ItemFold(self._rules)
        self._client = redis.Redis.from_url(self._redis_url)
        self._writer = ItemWriter(self._client, RedisKeys(self._prefix))
        group = runtime_context.get_metrics_group().add_group("items")
        self._signals, self._published = group.counter("signals"), group.counter("published")

    def process_element(self, batch: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        signals = decode_signals(batch)
        changed = self._fold.fold(signals, self._items.get)
        self._items.put_all({item: encode_item(state) for item, state in changed.items()})
        self._signals.inc(len(signals))
        try:
            self._published.inc(self._writer.publish(publications(changed.values(), self._rules)))
        except redis.RedisError as e:   # the state has them; the item's next signal publishes it again
            log.warning("could not publish %d items to Redis: %s", len(changed), e)
        yield from ()

    def close(self) -> None:
        self._client.close()
