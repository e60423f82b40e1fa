"""A user's personal list: neighbours of their recent items, the best of their categories, the shop's best.

Three sources, blended by score (docs/recommendations.md):

- collaborative: for each recent item j, weighted by the user's weight for it and how recent it is, every
  neighbour c adds the cosine of their decayed co-occurrence, ``s(j, c) / sqrt(w(j) * w(c))``;
- content-based: the most popular items of the categories of the user's recent items (``content_weight``);
- popularity: the shop's most popular items (``popularity_weight``), so a new user gets a list too.

Items in the cart or bought in the window, and the item the user is on, are never recommended.

>>> from operators.co_occurrence import RecommendRules, Touch, fold_signal, remember
>>> rules, table, popular, recent = RecommendRules(), {}, PopularItems(RecommendRules()), RecentItems()
>>> for item in ("a", "b", "c"):          # another user views a, b, c
...     for s in remember(recent, Touch(item, "books", 1.0, 0), rules):
...         fold_signal(table.setdefault(s.item, ItemNeighbours(s.item)), s, rules)
...         popular.add(s)
>>> mine = RecentItems()
>>> _ = remember(mine, Touch("a", "books", 1.0, 10), rules)
>>> [item for item, _ in personal_list(mine, table, popular, set(), 10, rules)]
['b', 'c']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any, Protocol

from operators.co_occurrence import ItemSignal, RecommendRules, add_decayed, decayed
from operators.item_table import table_from_published
from operators.list_rules import NO_LIST_RULES, ListRules
from state.item_state import ItemNeighbours, RecentItem, RecentItems

TOP_PER_CATEGORY = 50
CATEGORIES_CONSIDERED = 3


class PopularItems:
    """Decayed item weights per category, with each category's best items cached until it has changed enough.

    The cache is how a front-end would see a published list: a little behind the stream, never wrong by more than
    ``refresh_every`` signals of its category.
    """

    def __init__(self, rules: RecommendRules, refresh_every: int = 200) -> None:
        self.rules, self.refresh_every = rules, refresh_every
        self.weights: dict[str, dict[str, tuple[float, int]]] = {}
        self.changes: dict[str, int] = {}
        self.cached: dict[str, list[tuple[str, float, int]]] = {}
        self.latest = 0

    def add(self, signal: ItemSignal) -> None:
        if signal.other:
            return
        items = self.weights.setdefault(signal.category, {})
        value, at = items.get(signal.item, (0.0, signal.t))
        items[signal.item] = add_decayed(value, at, signal.amount, signal.t, self.rules.half_life_ms)
        self.changes[signal.category] = self.changes.get(signal.category, 0) + 1
        self.latest = max(self.latest, signal.t)
        if self.changes[signal.category] >= self.refresh_every or signal.category not in self.cached:
            self._refresh(signal.category)

    def top(self, category: str, now: int) -> list[tuple[str, float]]:
        """The category's best items as of ``now``, best first."""
        return [(item, decayed(value, at, now, self.rules.half_life_ms)) for item, value, at in self.cached.get(category, ())]

    def overall(self, now: int, n: int) -> list[tuple[str, float]]:
        best = heapq.merge(*(self.top(category, now) for category in sorted(self.cached)), key=lambda p: (-p[1], p[0]))
        return list(best)[:n]

    def _refresh(self, category: str) -> None:
        now, half_life = self.latest, self.rules.half_life_ms
        scored = ((decayed(value, at, now, half_life), item, value, at) for item, (value, at) in self.weights[category].items())
        best = heapq.nsmallest(TOP_PER_CATEGORY, scored, key=lambda s: (-s[0], s[1]))
        self.cached[category] = [(item, value, at) for _, item, value, at in best]
        self.changes[category] = 0


class Popularity(Protocol):
    """Where a list's content-based and popular candidates come from: ``PopularItems`` in the stream, or the
    published weights (``PublishedPopularity``)."""

    def top(self, category: str, now: int) -> list[tuple[str, float]]: ...

    def overall(self, now: int, n: int) -> list[tuple[str, float]]: ...


class PublishedPopularity:
    """The best items as Redis holds them (``state.item_store``): sorted by ``log2(weight) + at / half_life``.

    A list uses popularity only relative to the best item of the same ranking, so the weights given are
    ``2 ** (score - top)`` with ``top`` the highest score: the same ratios as the weights at any time, without
    ``2 ** -(years of half-lives)`` underflowing to 0 for a stranger scored at the wall clock.
    """

    def __init__(self, by_category: Mapping[str, list[tuple[str, float]]], everything: list[tuple[str, float]]) -> None:
        self._by_category, self._everything = by_category, everything
        self._top = max([score for ranked in (everything, *by_category.values()) for _, score in ranked[:1]], default=0.0)

    def _weights(self, scored: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return [(item, float(2.0 ** (score - self._top))) for item, score in scored]

    def top(self, category: str, now: int) -> list[tuple[str, float]]:
        return self._weights(self._by_category.get(category, []))

    def overall(self, now: int, n: int) -> list[tuple[str, float]]:
        return self._weights(self._everything[:n])


def personal_list(recent: RecentItems, table: Mapping[str, ItemNeighbours], popular: Popularity,
                  exclude: set[str], now: int, rules: RecommendRules, list_rules: ListRules = NO_LIST_RULES,
                  categories: Mapping[str, str] | None = None) -> list[tuple[str, float]]:
    """The user's top ``rules.list_size`` items as of ``now``, best first, ties by item id, after the rule set's
    exclusions and boosts (``list_rules``). ``categories``: item -> category, for candidates whose category the
    table and the category rankings do not give."""
    scores: dict[str, float] = {}
    category_of: dict[str, str] = {}
    half_life = rules.half_life_ms
    newest = newest_touch(recent, now)
    for r in recent.items:
        anchor = table.get(r.item)
        if anchor is None or anchor.weight <= 0:
            continue
        say = say_of(r, newest, rules)
        w_anchor = decayed(anchor.weight, anchor.at, now, half_life)
        for other, (value, at) in anchor.neighbours.items():
            candidate = table.get(other)
            if candidate is None or candidate.weight <= 0:
                continue
            w_other = decayed(candidate.weight, candidate.at, now, half_life)
            scores[other] = scores.get(other, 0.0) + say * decayed(value, at, now, half_life) / math.sqrt(w_anchor * w_other)
    for category, share in _category_shares(recent) if rules.content_weight > 0 else ():
        best = popular.top(category, now)
        if list_rules.by_category:
            category_of.update((item, category) for item, _ in best)
        if best and best[0][1] > 0:
            for item, weight in best:
                scores[item] = scores.get(item, 0.0) + rules.content_weight * share * weight / best[0][1]
    overall = popular.overall(now, rules.list_size * 2) if rules.popularity_weight > 0 else []
    if overall and overall[0][1] > 0:
        for item, weight in overall:
            scores[item] = scores.get(item, 0.0) + rules.popularity_weight * weight / overall[0][1]
    skip = exclude | ({recent.items[-1].item} if recent.items else set())
    if not list_rules.empty:
        if list_rules.by_category:
            category_of.update(categories or {})
            category_of.update((item, table[item].category) for item in scores if item in table and table[item].category)
        return list_rules.adjust([p for p in scores.items() if p[0] not in skip], category_of, rules.list_size)
    ranked = heapq.nsmallest(rules.list_size + len(skip), scores.items(), key=lambda p: (-p[1], p[0]))
    return [(item, score) for item, score in ranked if item not in skip][:rules.list_size]


def served_list(recent: RecentItems, cart: set[str], records: Mapping[str, Mapping[str, Any]],
                scores: Mapping[str, float], by_category: Mapping[str, list[tuple[str, float]]],
                everything: list[tuple[str, float]], now: int, rules: RecommendRules,
                list_rules: ListRules = NO_LIST_RULES, categories: Mapping[str, str] | None = None
                ) -> list[tuple[str, float]]:
    """The list from what Redis holds (``state.item_store.read_list_inputs``): the anchors' published records,
    the candidates' weight scores, and the best items by category and overall, as of ``now``; then the rule set's
    exclusions and boosts, with the candidates' ``categories`` as Redis holds them."""
    table = table_from_published(records, scores, now, rules.half_life_ms)
    return personal_list(recent, table, PublishedPopularity(by_category, everything), never_listed(recent, cart, rules),
                         now, rules, list_rules, categories)


def say_of(recent: RecentItem, newest: int, rules: RecommendRules) -> float:
    """A recent item's say in the user's list: the user's weight for it, halving every ``recency_half_life_ms``
    that it is older than the user's newest touch (``newest_touch``): the order of what they looked at counts, not
    how long ago they left, so a returning user's list is still theirs.

    >>> say_of(RecentItem("a", "books", 3.0, 0), 60_000, RecommendRules())
    1.5
    """
    return recent.weight * float(2.0 ** (-max(newest - recent.t, 0) / rules.recency_half_life_ms))


def newest_touch(recent: RecentItems, now: int) -> int:
    """The event time of the user's newest recent item (``now`` for an empty window)."""
    return max((r.t for r in recent.items), default=now)


def never_listed(recent: RecentItems, cart: set[str], rules: RecommendRules) -> set[str]:
    """What a list must not show: the cart, what was bought within the window, and the item the user is on."""
    bought = {r.item for r in recent.items if r.weight >= rules.purchase_weight}
    return cart | bought | ({recent.items[-1].item} if recent.items else set())


def list_categories(recent: RecentItems) -> list[str]:
    """The categories whose best items a list considers (content-based candidates)."""
    return [category for category, _ in _category_shares(recent)]


def _category_shares(recent: RecentItems) -> list[tuple[str, float]]:
    """The user's recent categories by their share of the window's weight, at most ``CATEGORIES_CONSIDERED``."""
    totals: dict[str, float] = {}
    for r in recent.items:
        if r.category:
            totals[r.category] = totals.get(r.category, 0.0) + r.weight
    whole = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda p: (-p[1], p[0]))[:CATEGORIES_CONSIDERED]
    return [(category, total / whole) for category, total in ranked]
