"""The item operator: keyed by item shard, it folds the users' item signals into the items' states and
publishes the changed items' neighbours and weights to Redis (docs/recommendations.md).

Input: one record per (personalize batch, item shard), the shard's signals as MessagePack
(``operators.item_table.signal_batches``), keyed on the Java side. State per shard, both checkpointed:
- ``item_neighbours_v1``: item -> encoded ``ItemNeighbours``, written once per record with ``put_all``;
  aggregates only, never a user id;
- ``items_unpublished_v1``: the items changed since the last publication.

Publishing is per shard every ``recommend.publish_ms`` (a processing-time timer), not per record: a hot item
changes in most batches, and one Redis call per item and batch cost more than the fold. Because the set of
unpublished items is state, a failover loses none of them; Redis writes are guarded by each item's ``folded``
count (``state.item_store``), so the refolded replay rewrites nothing older, and Redis ends where the stream does.
At the end of a bounded input the event-time timer at the last watermark publishes what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from jobs.state_ttl import state_ttl
from operators.co_occurrence import RecommendRules
from operators.item_table import ItemFold, decode_signals, publications
from operators.runner import END_OF_INPUT
from state.item_state import ITEM_STATE, ItemNeighbours, decode_item, encode_item
from state.item_store import ItemWriter
from state.redis_client import RedisTarget
from state.state_cache import StateCache

UNPUBLISHED_STATE = "items_unpublished_v1"
log = logging.getLogger(__name__)


class FoldItems(KeyedProcessFunction):
    def __init__(self, rules: RecommendRules, target: RedisTarget, state_ttl_s: int, publish_ms: int,
                 cache_items: int) -> None:
        self._rules, self._redis, self._ttl_s = rules, target, state_ttl_s
        self._publish_ms, self._cache_items = publish_ms, cache_items

    def open(self, runtime_context: RuntimeContext) -> None:
        ttl = state_ttl(self._ttl_s)
        items = MapStateDescriptor(ITEM_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        items.enable_time_to_live(ttl)
        self._items = runtime_context.get_map_state(items)
        self._unpublished = runtime_context.get_map_state(MapStateDescriptor(UNPUBLISHED_STATE, Types.STRING(), Types.BOOLEAN()))
        # Decoded states: the map state is the truth (written at every record), so a restart just starts empty.
        self._cache: StateCache[ItemNeighbours] = StateCache(self._cache_items)
        # The unpublished items of each shard as the map state holds them, read once per shard: only items not yet
        # in it are written to it (a hot item changes in most records).
        self._pending: dict[int, set[str]] = {}
        self._fold = ItemFold(self._rules)
        self._client = self._redis.client()
        self._writer = ItemWriter(self._client, self._redis.keys())
        group = runtime_context.get_metrics_group().add_group("items")
        self._signals, self._published = group.counter("signals"), group.counter("published")

    def _load(self, item: str) -> ItemNeighbours | None:
        state = self._cache.get(item)
        if state is None:
            data = self._items.get(item)
            if data is not None:
                state = decode_item(data)
                self._cache.put(item, state)
        return state

    def process_element(self, batch: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        signals = decode_signals(batch)
        changed = self._fold.fold(signals, self._load)
        self._items.put_all({item: encode_item(state) for item, state in changed.items()})
        for item, state in changed.items():
            self._cache.put(item, state)
        pending = self._pending_of(ctx.get_current_key())
        if not pending:
            timers = ctx.timer_service()
            timers.register_processing_time_timer(int(time.time() * 1000) + self._publish_ms)
            timers.register_event_time_timer(END_OF_INPUT)
        new = changed.keys() - pending
        if new:
            self._unpublished.put_all(dict.fromkeys(new, True))
            pending |= new
        self._signals.inc(len(signals))
        yield from ()

    def _pending_of(self, shard: int) -> set[str]:
        pending = self._pending.get(shard)
        if pending is None:
            pending = self._pending[shard] = set(self._unpublished.keys())
        return pending

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        pending = self._pending_of(ctx.get_current_key())
        if not pending:
            return
        states = [s for s in map(self._load, sorted(pending)) if s is not None]
        try:
            self._published.inc(self._writer.publish(publications(states, self._rules)))
            self._unpublished.clear()
            pending.clear()
        except redis.RedisError as e:   # still unpublished: tried again at the next timer
            log.warning("could not publish %d items to Redis (%s); retrying in %d ms", len(states), e, self._publish_ms)
            ctx.timer_service().register_processing_time_timer(int(time.time() * 1000) + self._publish_ms)
        yield from ()

    def close(self) -> None:
        self._client.close()
