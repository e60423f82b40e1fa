"""State schemas of the recommender: a user's recent items, and an item's decayed weight and neighbours.

Decayed values are stored as (value, at): the value as of event time ``at``. The value at a later time T is
``value * 2 ** (-(T - at) / half_life)``, so no state changes while nothing happens, and the sum of
contributions does not depend on the order in which they arrive (docs/recommendations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RecentItem:
    """An item in a user's recent window: the highest weight the user gave it (view < cart < purchase) and when."""

    item: str
    category: str
    weight: float
    t: int


@dataclass(slots=True)
class RecentItems:
    """A user's recent items, oldest first, at most ``RecommendRules.recent_items`` of them (no user id inside)."""

    items: list[RecentItem] = field(default_factory=list)

    def find(self, item: str) -> RecentItem | None:
        for recent in self.items:
            if recent.item == item:
                return recent
        return None


@dataclass(slots=True)
class ItemNeighbours:
    """One item's state, keyed by the item: aggregates only, never a user id.

    ``weight``/``at``: the decayed sum of users' weights for the item. ``neighbours``: other item -> (decayed
    co-occurrence, as of event time), at most ``RecommendRules.neighbours_per_item`` of them.
    """

    item: str
    category: str = ""
    weight: float = 0.0
    at: int = 0
    neighbours: dict[str, tuple[float, int]] = field(default_factory=dict)
