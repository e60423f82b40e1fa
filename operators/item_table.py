"""The per-item side of the recommender: item signals in batches per item shard, folded into the items' states.

The user operator's signals (``operators.co_occurrence.remember``) leave each batch as one record per item shard
(``signal_batches``), so the item operator gets one Python call per shard and batch, not one per signal. The item
operator folds a batch (``ItemFold.fold``) into the items' states and publishes what changed (``published``):
the strongest neighbours as of the item's newest signal, and its weight as a decay-free score.

>>> from operators.co_occurrence import ItemSignal, RecommendRules
>>> rules = RecommendRules()
>>> batches = signal_batches([ItemSignal("a", "toys", "", 1.0, 0), ItemSignal("a", "toys", "b", 3.0, 0),
...                           ItemSignal("b", "toys", "a", 3.0, 0)], shards=1)
>>> table = ItemTable(rules)
>>> changed = table.fold(decode_signals(batches[0]))
>>> sorted(changed), published(changed["a"], rules)["neighbours"]
(['a', 'b'], [['b', 3.0]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgspec

from operators.co_occurrence import ItemSignal, RecommendRules, decayed, fold_signal, top_neighbours
from operators.shards import shard_of
from state.item_state import ItemNeighbours

__all__ = ["ItemFold", "ItemTable", "decode_signals", "publications", "published", "signal_batches", "weight_score"]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[ItemSignal])


def signal_batches(signals: Iterable[ItemSignal], shards: int) -> dict[int, bytes]:
    """The signals grouped by their item's shard (Java's ``floorMod(item.hashCode(), shards)``), in order."""
    grouped: dict[int, list[ItemSignal]] = {}
    for signal in signals:
        grouped.setdefault(shard_of(signal.item, shards), []).append(signal)
    return {shard: _encoder.encode(batch) for shard, batch in grouped.items()}


def decode_signals(data: bytes) -> list[ItemSignal]:
    return _decoder.decode(data)


class ItemFold:
    """Folds signals into item states read from a store (Flink's map state through a cache, or a dict)."""

    def __init__(self, rules: RecommendRules) -> None:
        self.rules = rules

    def fold(self, signals: Iterable[ItemSignal], load: Callable[[str], ItemNeighbours | None]) -> dict[str, ItemNeighbours]:
        """The states of the items the signals changed, after them (the caller stores and publishes them).
        ``load`` may return the stored object itself: it is changed in place."""
        changed: dict[str, ItemNeighbours] = {}
        for signal in signals:
            state = changed.get(signal.item)
            if state is None:
                state = load(signal.item)
                changed[signal.item] = state = state if state is not None else ItemNeighbours(signal.item)
            fold_signal(state, signal, self.rules)
            state.folded += 1
        return changed


class ItemTable:
    """Items' states in a dict: the item operator of the drivers that run in one process (the replay, the
    baseline, the peer). The job's is keyed by item shard (jobs/item_folding.py)."""

    def __init__(self, rules: RecommendRules) -> None:
        self._fold = ItemFold(rules)
        self.items: dict[str, ItemNeighbours] = {}

    def fold(self, signals: Iterable[ItemSignal]) -> dict[str, ItemNeighbours]:
        changed = self._fold.fold(signals, self._load)
        self.items.update(changed)
        return changed

    def _load(self, item: str) -> ItemNeighbours | None:
        return self.items.get(item)

    def states(self) -> dict[str, ItemNeighbours]:
        return dict(self.items)


def publications(changed: Iterable[ItemNeighbours], rules: RecommendRules) -> Iterator[tuple[dict[str, Any], float]]:
    """What ``state.item_store.ItemWriter.publish`` writes for each changed item: (record, weight score)."""
    for state in changed:
        yield published(state, rules), weight_score(state, rules.half_life_ms)


def as_of(state: ItemNeighbours) -> int:
    """The event time of the item's newest signal: its published scores are as of then."""
    return max(state.at, max((at for _, at in state.neighbours.values()), default=state.at))


def weight_score(state: ItemNeighbours, half_life_ms: int) -> float:
    """The item's decayed weight as a score that needs no clock: ``log2(weight) + at / half_life``.

    Ordering items by it is ordering them by their weight at any common time, so one sorted set ranks them
    without being rewritten as time passes; the weight at time T is ``2 ** (score - T / half_life)``.

    >>> weight_score(ItemNeighbours("a", weight=4.0, at=1_000), 1_000)
    3.0
    """
    if state.weight <= 0:
        return -math.inf
    return math.log2(state.weight) + state.at / half_life_ms


def weight_at(score: float, now: int, half_life_ms: int) -> float:
    """The weight a ``weight_score`` stands for, as of ``now``.

    >>> weight_at(3.0, 2_000, 1_000)
    2.0
    """
    return float(2.0 ** (score - now / half_life_ms))


def published(state: ItemNeighbours, rules: RecommendRules) -> dict[str, Any]:
    """What the item's Redis record holds (schemas/item_neighbours.v1.json): its strongest ``list_size``
    neighbours with their decayed co-occurrence as of ``as_of``, strongest first, ties by item id."""
    t = as_of(state)
    return {"schema_version": 1, "item": state.item, "category": state.category, "as_of": t, "folded": state.folded,
            "weight": decayed(state.weight, state.at, t, rules.half_life_ms),
            "neighbours": [[other, value] for other, value in top_neighbours(state, t, rules.list_size, rules)]}


def table_from_published(records: Mapping[str, Mapping[str, Any]], scores: Mapping[str, float], now: int,
                         half_life_ms: int) -> dict[str, ItemNeighbours]:
    """Item states for ``operators.recommendations.personal_list`` from what Redis holds: the anchors' records
    (their published neighbours) and every candidate's weight score, as of ``now``.

    >>> table = table_from_published({"a": {"item": "a", "category": "c", "as_of": 0, "folded": 2, "weight": 2.0,
    ...                                     "neighbours": [["b", 1.0]]}}, {"b": 1.0}, 1_000, 1_000)
    >>> table["a"].neighbours, table["b"].weight
    ({'b': (1.0, 0)}, 1.0)
    """
    table = {item: ItemNeighbours(item, "", weight_at(score, now, half_life_ms), now) for item, score in scores.items()}
    for item, r in records.items():
        table[item] = ItemNeighbours(item, r["category"], r["weight"], r["as_of"],
                                     {other: (value, r["as_of"]) for other, value in r["neighbours"]}, r["folded"])
    return table
