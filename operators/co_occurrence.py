"""Item-to-item co-occurrence, decayed in event time: what a user's recent items teach about every item.

A user's touch of an item (a product view, an add-to-cart, an item of a purchase) carries a weight, view <
add to cart < purchase. Within the user's recent window, the co-occurrence of two items grows by the product
of the highest weights the user gave them: so a user counts once per pair and window, however often they
bounce between the two (a crawler cannot make a pair). The per-user side (``remember``) turns a touch into
``ItemSignal`` records routed by item; the per-item side (``fold_signal``) adds them to that item's state. Every
value decays with ``half_life_ms`` of event time, so the state is the same whatever order the signals arrive in,
except which neighbour a full item evicts.

>>> rules = RecommendRules()
>>> recent = RecentItems()
>>> remember(recent, Touch("a", "books", 1.0, 0), rules)
[ItemSignal(item='a', category='books', other='', amount=1.0, t=0)]
>>> [(s.item, s.other, s.amount) for s in remember(recent, Touch("b", "books", 3.0, 1_000), rules)]
[('b', '', 3.0), ('b', 'a', 3.0), ('a', 'b', 3.0)]
>>> remember(recent, Touch("a", "books", 1.0, 2_000), rules)   # seen before, with no more weight: nothing new
[]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import msgspec

from state.item_state import ItemNeighbours, RecentItem, RecentItems

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class RecommendRules:
    """The recommender's parameters (conf/job.yaml ``recommend``; docs/recommendations.md)."""

    view_weight: float = 1.0
    cart_weight: float = 3.0
    purchase_weight: float = 5.0
    half_life_ms: int = 7 * DAY_MS            # of co-occurrences and item weights, in event time
    recent_items: int = 8                     # items per user's recent window
    pair_window_ms: int = DAY_MS              # items touched longer ago than this pair with nothing
    pair_items: int = 2                       # a touch pairs with at most this many of the newest recent items
    neighbours_per_item: int = 50             # kept per item; a quarter more and the weakest are pruned
    list_size: int = 20                       # items in a personal list
    recency_half_life_ms: int = 60_000        # how fast a recent item loses its say in the user's list
    content_weight: float = 1.0               # the best items of the user's recent categories (cold items, new users)
    popularity_weight: float = 0.01           # the shop's best items (cold start)


@dataclass(frozen=True, slots=True)
class Touch:
    item: str
    category: str
    weight: float
    t: int


class ItemSignal(msgspec.Struct, frozen=True, array_like=True):
    """A change to one item's state, routed by ``item``: its weight (``other`` empty) or its pair with ``other``.

    It crosses from the user operator to the item operator as MessagePack (``operators.item_table``)."""

    item: str
    category: str
    other: str
    amount: float
    t: int


def touches(event_type: str, payload: dict[str, Any], t: int, rules: RecommendRules) -> list[Touch]:
    """The item touches of one validated event (none for most event types).

    >>> touches("page_view", {"page_type": "product", "product_id": "p1", "category": "toys"}, 5, RecommendRules())
    [Touch(item='p1', category='toys', weight=1.0, t=5)]
    """
    if event_type == "page_view":
        if payload.get("page_type") == "product" and payload.get("product_id"):
            return [Touch(payload["product_id"], payload.get("category") or "", rules.view_weight, t)]
        return []
    if event_type == "add_to_cart":
        return [Touch(payload["product_id"], payload["category"], rules.cart_weight, t)]
    if event_type == "purchase":
        return [Touch(it["product_id"], it["category"], rules.purchase_weight, t) for it in payload["items"]]
    return []


def remember(recent: RecentItems, touch: Touch, rules: RecommendRules) -> list[ItemSignal]:
    """Add ``touch`` to the user's window and return what it changes for every item concerned."""
    items = recent.items
    items[:] = [r for r in items if r.t >= touch.t - rules.pair_window_ms]   # an expired item counts anew
    seen = recent.find(touch.item)
    if seen is not None and touch.weight <= seen.weight:
        seen.t = max(seen.t, touch.t)     # still in mind: it stays longer and is the newest again
        items.remove(seen)
        items.append(seen)
        return []
    delta = touch.weight - (seen.weight if seen is not None else 0.0)
    signals = [ItemSignal(touch.item, touch.category, "", delta, touch.t)]
    partners = [r for r in items if r.item != touch.item][-rules.pair_items:]
    for r in partners:
        amount = delta * r.weight
        signals.append(ItemSignal(touch.item, touch.category, r.item, amount, touch.t))
        signals.append(ItemSignal(r.item, r.category, touch.item, amount, touch.t))
    if seen is not None:
        items.remove(seen)
    items.append(RecentItem(touch.item, touch.category, touch.weight, max(touch.t, seen.t if seen else touch.t)))
    del items[:-rules.recent_items]
    return signals


def decayed(value: float, at: int, now: int, half_life_ms: int) -> float:
    """``value`` as of ``at``, seen at ``now`` (later or earlier).

    >>> decayed(8.0, 0, 2_000, 1_000)
    2.0
    """
    return value * float(2.0 ** (-(now - at) / half_life_ms))


def add_decayed(value: float, at: int, amount: float, t: int, half_life_ms: int) -> tuple[float, int]:
    """Add ``amount`` made at ``t`` to ``value`` as of ``at``; the result is as of the later of the two times.

    >>> add_decayed(4.0, 1_000, 1.0, 0, 1_000)    # a late contribution is decayed to the newer time
    (4.5, 1000)
    """
    if t >= at:
        return decayed(value, at, t, half_life_ms) + amount, t
    return value + decayed(amount, t, at, half_life_ms), at


def fold_signal(state: ItemNeighbours, signal: ItemSignal, rules: RecommendRules) -> None:
    """The per-item side: add one signal to the item's state, evicting its weakest neighbour when it is full."""
    state.category = state.category or signal.category
    if not signal.other:
        state.weight, state.at = add_decayed(state.weight, state.at, signal.amount, signal.t, rules.half_life_ms)
        return
    value, at = state.neighbours.get(signal.other, (0.0, signal.t))
    state.neighbours[signal.other] = add_decayed(value, at, signal.amount, signal.t, rules.half_life_ms)
    cap = rules.neighbours_per_item
    if len(state.neighbours) > cap + cap // 4:
        # Pruned in one sort when a quarter over the cap, not at each new neighbour: a full item's every new pair
        # would otherwise decay all its neighbours to find the weakest (it was a third of the fold's time).
        # The weakest as of the newest go; between equals, the larger item id (fixed, so replays are identical).
        now = max(at for _, at in state.neighbours.values())
        ranked = sorted(state.neighbours, key=lambda other: (-decayed(*state.neighbours[other], now, rules.half_life_ms), other))
        for other in ranked[cap:]:
            del state.neighbours[other]


def top_neighbours(state: ItemNeighbours, now: int, k: int, rules: RecommendRules) -> list[tuple[str, float]]:
    """The ``k`` strongest neighbours as of ``now``, strongest first, ties by item id."""
    half_life = rules.half_life_ms   # ``decayed`` inlined: this runs for every neighbour of every published item
    scored = [(other, value * 2.0 ** ((at - now) / half_life)) for other, (value, at) in state.neighbours.items()]
    return heapq.nsmallest(k, scored, key=lambda pair: (-pair[1], pair[0]))
