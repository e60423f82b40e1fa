"""Merchandising rules for personal lists: items and categories never listed, and boosts, as part of the rule set.

They live in the pattern file's ``recommend:`` section, so they are published, diffed and rolled back with
``persona rules`` like the patterns (docs/recommendations.md "Rules"). The lookup applies the set in force
(``persona.serving``); nothing in the stream depends on them, so a switch needs no state change and no restart.

- ``exclude``: ``items`` and ``categories`` that no list shows (out of stock, age-restricted, a recall);
- ``boost``: a factor per item or per category (a campaign), multiplied into a candidate's score before the top
  N is cut. A factor below 1 demotes. An item's factor and its category's multiply.

>>> rules = compile_list_rules({"exclude": {"categories": ["alcohol"]}, "boost": {"items": {"b": 2}}}, "recommend")
>>> rules.adjust([("a", 1.0), ("b", 0.6), ("c", 0.9)], {"c": "alcohol"}, 10)
[('b', 1.2), ('a', 1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.config_files import ConfigError, mapping, only_fields


@dataclass(frozen=True, slots=True)
class ListRules:
    excluded_items: frozenset[str] = frozenset()
    excluded_categories: frozenset[str] = frozenset()
    item_boosts: Mapping[str, float] = field(default_factory=dict)
    category_boosts: Mapping[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.excluded_items or self.excluded_categories or self.item_boosts or self.category_boosts)

    @property
    def by_category(self) -> bool:
        """The rules need each candidate's category (the lookup then reads it)."""
        return bool(self.excluded_categories or self.category_boosts)

    def adjust(self, scored: list[tuple[str, float]], category_of: Mapping[str, str], size: int
               ) -> list[tuple[str, float]]:
        """The best ``size`` of ``scored`` after the rules, best first, ties by item id. A candidate whose
        category is not known gets no category rule."""
        kept = []
        for item, score in scored:
            category = category_of.get(item, "")
            if item in self.excluded_items or (category and category in self.excluded_categories):
                continue
            kept.append((item, score * self.item_boosts.get(item, 1.0) * self.category_boosts.get(category, 1.0)))
        kept.sort(key=lambda p: (-p[1], p[0]))
        return kept[:size]


NO_LIST_RULES = ListRules()


def compile_list_rules(doc: Any, where: str = "recommend") -> ListRules:
    """The ``recommend:`` section of a pattern file; every error names its key.

    >>> compile_list_rules({"boost": {"categories": {"toys": 0}}})
    Traceback (most recent call last):
    ...
    operators.config_files.ConfigError: recommend.boost.categories.toys: expected a positive number, got 0
    """
    if doc is None:
        return NO_LIST_RULES
    section = mapping(doc, where)
    only_fields(section, {"exclude", "boost"}, where)
    exclude = mapping(_or_empty(section.get("exclude")), f"{where}.exclude")
    only_fields(exclude, {"items", "categories"}, f"{where}.exclude")
    boost = mapping(_or_empty(section.get("boost")), f"{where}.boost")
    only_fields(boost, {"items", "categories"}, f"{where}.boost")
    return ListRules(_names(exclude.get("items"), f"{where}.exclude.items"),
                     _names(exclude.get("categories"), f"{where}.exclude.categories"),
                     _factors(boost.get("items"), f"{where}.boost.items"),
                     _factors(boost.get("categories"), f"{where}.boost.categories"))


def _or_empty(value: Any) -> Any:
    """An absent or empty (``exclude:``) subsection is none; anything else is checked as given."""
    return {} if value is None else value


def _names(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of ids")
    return frozenset(str(v) for v in value)


def _factors(value: Any, where: str) -> dict[str, float]:
    out = {}
    for name, factor in mapping(_or_empty(value), where).items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise ConfigError(f"{where}.{name}: expected a positive number, got {factor!r}")
        out[str(name)] = float(factor)
    return out
