"""Planted item structure: what a recommender can find in the generated stream, and the knobs that turn it off.

Each category has ``ITEMS_PER_CATEGORY`` products. With every knob at 0 (the control stream), a product view
picks one of them uniformly, as the generator always did: there is nothing to learn beyond the category. With
the knobs on, four kinds of structure are planted, each its own knob:

- ``item_zipf``: popularity. Item ranks are a seeded permutation; the rank-r item weighs 1/r**zipf.
- ``item_styles``: latent factors (one-hot): each item has one of ``STYLES`` styles, each shopper a preferred style
  per category; this share of picks comes from the shopper's style (popularity-weighted within it).
- ``item_pairs``: bought together: after an add-to-cart, the next product view is the item's partner this often.
- ``item_sequences``: view sequences: after a product view, the next one is that item's successor this often.

Partners and successors stay in the item's category, so the category flow of the stream (and so every profile's
affinities) is the same with or without structure. Draws come from a generator of their own, so turning the
knobs changes only which product of the category is viewed.

>>> world = ItemWorld(seed=7, zipf=1.0, styles=0.5, pairs=0.3, sequences=0.3)
>>> world.partner("p-books-12") == world.partner("p-books-12"), world.partner("p-books-12").startswith("p-books-")
(True, True)
>>> ItemWorld(seed=7).structured
False
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any

ITEMS_PER_CATEGORY = 400
STYLES = 8


@dataclass
class ShopperTaste:
    """One shopper's item-level state in the walk: preferred style per category, last viewed and last carted item."""

    rng: random.Random
    styles: dict[str, int] = field(default_factory=dict)
    last_viewed: str | None = None
    last_carted: str | None = None

# The control stream of `persona evaluate --recommend`: no structure at all. No item structure (each product view uniform in its category: the
# generator's default), and no category focus (with it, the category a shopper views next is predictable, and every
# model, the batch ones too, found it: HR@20 0.017-0.019 against 0.005 for popularity).
CONTROL: dict[str, Any] = {"item_zipf": 0.0, "item_styles": 0.0, "item_pairs": 0.0, "item_sequences": 0.0,
                           "category_focus": 0.0}
# The planted structure of `persona evaluate --recommend` and `./dev demo`.
PLANTED: dict[str, Any] = {"item_zipf": 1.0, "item_styles": 0.5, "item_pairs": 0.3, "item_sequences": 0.3}


class ItemWorld:
    """The items of every category and the structure planted among them (seeded, immutable once built)."""

    def __init__(self, seed: int, zipf: float = 0.0, styles: float = 0.0, pairs: float = 0.0,
                 sequences: float = 0.0) -> None:
        self.seed, self.zipf, self.styles, self.pairs, self.sequences = seed, zipf, styles, pairs, sequences
        self._ranked: dict[str, list[int]] = {}          # category -> item numbers, most popular first
        self._cumulative: dict[str, list[float]] = {}    # category -> cumulative weights over _ranked
        self._by_style: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
        self._partner: dict[str, list[int]] = {}
        self._successor: dict[str, list[int]] = {}

    @property
    def structured(self) -> bool:
        return any((self.zipf, self.styles, self.pairs, self.sequences))

    def taste(self, user_idx: int) -> ShopperTaste:
        return ShopperTaste(random.Random(f"{self.seed}:items:{user_idx}"))

    def pick(self, category: str, taste: ShopperTaste) -> str:
        """The product a shopper views next in ``category``."""
        rng = taste.rng
        number: int | None = None
        if self.pairs and taste.last_carted and _category(taste.last_carted) == category and rng.random() < self.pairs:
            number = self._partner_of(category, _number(taste.last_carted))
        elif self.sequences and taste.last_viewed and _category(taste.last_viewed) == category \
                and rng.random() < self.sequences:
            number = self._successor_of(category, _number(taste.last_viewed))
        elif self.styles and rng.random() < self.styles:
            style = taste.styles.setdefault(category, rng.randrange(STYLES))
            ranked, cumulative = self._style_items(category, style)
            number = ranked[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        else:
            self._build(category)
            cumulative = self._cumulative[category]
            number = self._ranked[category][bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        item = f"p-{category}-{number}"
        taste.last_viewed = item
        return item

    def partner(self, item: str) -> str:
        category = _category(item)
        return f"p-{category}-{self._partner_of(category, _number(item))}"

    def successor(self, item: str) -> str:
        category = _category(item)
        return f"p-{category}-{self._successor_of(category, _number(item))}"

    def price(self, item: str, low: float, high: float) -> float:
        """An item's own price (fixed per item when the structure is on)."""
        return round(random.Random(f"{self.seed}:price:{item}").uniform(low, high), 2)

    def _build(self, category: str) -> None:
        if category in self._ranked:
            return
        rng = random.Random(f"{self.seed}:catalogue:{category}")
        ranked = list(range(1, ITEMS_PER_CATEGORY + 1))
        rng.shuffle(ranked)
        self._ranked[category] = ranked
        acc, cumulative = 0.0, []
        for r in range(1, len(ranked) + 1):
            acc += 1.0 / r ** self.zipf
            cumulative.append(acc)
        self._cumulative[category] = cumulative
        # Partners and successors: two more seeded permutations (no item is its own).
        self._partner[category] = _derangement(rng, ITEMS_PER_CATEGORY)
        self._successor[category] = _derangement(rng, ITEMS_PER_CATEGORY)

    def _style_items(self, category: str, style: int) -> tuple[list[int], list[float]]:
        key = (category, style)
        if key not in self._by_style:
            self._build(category)
            chosen, cumulative, acc = [], [], 0.0
            for r, number in enumerate(self._ranked[category], 1):
                if number % STYLES == style:
                    acc += 1.0 / r ** self.zipf
                    chosen.append(number)
                    cumulative.append(acc)
            self._by_style[key] = (chosen, cumulative)
        return self._by_style[key]

    def _partner_of(self, category: str, number: int) -> int:
        self._build(category)
        return self._partner[category][number - 1]

    def _successor_of(self, category: str, number: int) -> int:
        self._build(category)
        return self._successor[category][number - 1]


def _derangement(rng: random.Random, n: int) -> list[int]:
    """A seeded map of 1..n onto 1..n without fixed points: a random cycle through all items."""
    order = list(range(1, n + 1))
    rng.shuffle(order)
    image = [0] * n
    for k, number in enumerate(order):
        image[number - 1] = order[(k + 1) % n]
    return image


def _category(item: str) -> str:
    return item.split("-")[1]


def _number(item: str) -> int:
    return int(item.rsplit("-", 1)[1])
