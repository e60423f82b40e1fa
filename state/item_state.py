"""State schemas of the recommender: a user's recent items, and an item's decayed weight and neighbours.

Decayed values are stored as (value, at): the value as of event time ``at``. The value at a later time T is
``value * 2 ** (-(T - at) / half_life)``, so no state changes while nothing happens, and the sum of
contributions does not depend on the order in which they arrive (docs/recommendations.md).

Both are msgspec Structs: ``RecentItems`` is part of the user's state (``UserState.recent_items``), and an
``ItemNeighbours`` is one entry of the item operator's map state, as MessagePack bytes.

>>> s = ItemNeighbours("p1", "toys", 2.0, 1_000, {"p2": (1.5, 900)}, 3)
>>> decode_item(encode_item(s)) == s
True
"""

from __future__ import annotations

import msgspec

# Persisted state name of the item operator (jobs/item_folding.py): renaming it loses state on restore.
ITEM_STATE = "item_neighbours_v1"


class RecentItem(msgspec.Struct, array_like=True):
    """An item in a user's recent window: the highest weight the user gave it (view < cart < purchase) and when."""

    item: str
    category: str
    weight: float
    t: int


class RecentItems(msgspec.Struct, rename={"items": "i"}):
    """A user's recent items, oldest first, at most ``RecommendRules.recent_items`` of them (no user id inside)."""

    items: list[RecentItem] = []

    def find(self, item: str) -> RecentItem | None:
        for recent in self.items:
            if recent.item == item:
                return recent
        return None


class ItemNeighbours(msgspec.Struct, array_like=True):
    """One item's state, keyed by the item: aggregates only, never a user id.

    ``weight``/``at``: the decayed sum of users' weights for the item. ``neighbours``: other item -> (decayed
    co-occurrence, as of event time), at most ``RecommendRules.neighbours_per_item`` of them. ``folded``: how
    many signals made it, which orders its Redis writes (a replay after a failover rewrites no older list).
    """

    item: str
    category: str = ""
    weight: float = 0.0
    at: int = 0
    neighbours: dict[str, tuple[float, int]] = {}
    folded: int = 0


_item_encoder = msgspec.msgpack.Encoder()
_item_decoder = msgspec.msgpack.Decoder(ItemNeighbours)


def encode_item(state: ItemNeighbours) -> bytes:
    return _item_encoder.encode(state)


def decode_item(data: bytes) -> ItemNeighbours:
    return _item_decoder.decode(data)
