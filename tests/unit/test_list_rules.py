"""The rule set's list rules: exclusions and boosts in the pattern file's ``recommend:`` section, compiled,
diffed and published with the patterns, and applied to a personal list before its top N is cut.

Expected lists are worked out by hand from the scores of ``test_recommend`` (cosines of decayed co-occurrence).
"""

from __future__ import annotations

import pytest
import yaml

from operators.co_occurrence import RecommendRules, Touch, fold_signal, remember
from operators.config_files import ConfigError
from operators.list_rules import ListRules, compile_list_rules
from operators.pattern_spec import compile_patterns
from operators.recommendations import PopularItems, personal_list
from operators.rule_sets import book_of, next_rule_set
from state.item_state import ItemNeighbours, RecentItems

PATTERNS = """version: 1
gate: {frequency_cap: {max: 1, per: 24h}, quiet_hours: {start: 22, end: 8}}
patterns: {p: {kind: absence, anchor: {event: add_to_cart}, cancel: [{event: purchase}], within: 30m}}
"""


def _world() -> tuple[dict[str, ItemNeighbours], PopularItems, RecentItems]:
    """Users {a, b}, {a, c}, {c, d}, {c, e}, with b in "toys" and the rest in "books"; the asking user is on a."""
    rules = RecommendRules(content_weight=0.0, popularity_weight=0.0)
    table: dict[str, ItemNeighbours] = {}
    popular = PopularItems(rules, refresh_every=1)
    for items in (["a", "b"], ["a", "c"], ["c", "d"], ["c", "e"]):
        recent = RecentItems()
        for item in items:
            for s in remember(recent, Touch(item, "toys" if item == "b" else "books", 1.0, 0), rules):
                fold_signal(table.setdefault(s.item, ItemNeighbours(s.item)), s, rules)
                popular.add(s)
    mine = RecentItems()
    remember(mine, Touch("a", "books", 1.0, 0), rules)
    return table, popular, mine


def test_without_rules_the_list_is_the_plain_ranking() -> None:
    table, popular, mine = _world()
    rules = RecommendRules(content_weight=0.0, popularity_weight=0.0)
    # cos(a,b) = 1/sqrt(2*1) = 0.707, cos(a,c) = 1/sqrt(2*3) = 0.408
    assert [i for i, _ in personal_list(mine, table, popular, set(), 0, rules)] == ["b", "c"]


def test_an_excluded_category_or_item_is_never_listed_and_the_list_fills_from_the_rest() -> None:
    table, popular, mine = _world()
    rules = RecommendRules(content_weight=0.0, popularity_weight=0.0, list_size=1)
    no_toys = compile_list_rules({"exclude": {"categories": ["toys"]}})
    assert [i for i, _ in personal_list(mine, table, popular, set(), 0, rules, no_toys)] == ["c"]
    no_b = compile_list_rules({"exclude": {"items": ["b"]}})
    assert [i for i, _ in personal_list(mine, table, popular, set(), 0, rules, no_b)] == ["c"]


def test_a_boost_multiplies_the_score_and_can_reorder_the_list() -> None:
    table, popular, mine = _world()
    rules = RecommendRules(content_weight=0.0, popularity_weight=0.0)
    books = compile_list_rules({"boost": {"categories": {"books": 2}}})
    listed = personal_list(mine, table, popular, set(), 0, rules, books)
    # c: 0.408 * 2 = 0.816 now beats b: 0.707
    assert [(i, round(s, 3)) for i, s in listed] == [("c", 0.816), ("b", 0.707)]
    both = compile_list_rules({"boost": {"categories": {"books": 2}, "items": {"b": 0.5}}})
    assert [(i, round(s, 3)) for i, s in personal_list(mine, table, popular, set(), 0, rules, both)] == \
        [("c", 0.816), ("b", 0.354)]


def test_a_category_the_lookup_could_not_read_gets_no_category_rule() -> None:
    rules = ListRules(excluded_categories=frozenset({"toys"}), category_boosts={"books": 3.0})
    assert rules.adjust([("x", 1.0), ("y", 0.5)], {"y": "books"}, 10) == [("y", 1.5), ("x", 1.0)]


@pytest.mark.parametrize(("section", "message"), [
    ({"exclude": {"brands": ["x"]}}, "recommend.exclude: unknown field 'brands'"),
    ({"exclude": {"items": "x"}}, "recommend.exclude.items: expected a list of ids"),
    ({"boost": {"items": {"x": -1}}}, "recommend.boost.items.x: expected a positive number, got -1"),
    ({"boost": {"categories": {"x": True}}}, "recommend.boost.categories.x: expected a positive number, got True"),
    ({"boost": []}, "recommend.boost: expected a mapping"),
    ({"rank": 1}, "recommend: unknown field 'rank'"),
])
def test_a_broken_section_is_one_error_naming_its_key(section: dict, message: str) -> None:  # type: ignore[type-arg]
    doc = yaml.safe_load(PATTERNS) | {"recommend": section}
    with pytest.raises(ConfigError) as e:
        compile_patterns(doc, "conf/patterns.yaml")
    assert str(e.value).startswith(f"conf/patterns.yaml: {message}")


def test_list_rules_are_published_diffed_and_rolled_back_with_the_rule_set() -> None:
    v1 = next_rule_set(None, PATTERNS, "ana", 0)
    v2 = next_rule_set(v1, PATTERNS + "recommend: {exclude: {categories: [toys]}, boost: {items: {b: 2}}}\n", "ana", 1)
    assert book_of(v1).lists.empty
    assert book_of(v2).lists == ListRules(excluded_categories=frozenset({"toys"}), item_boosts={"b": 2.0})
    assert v2.diff == ["+ recommend.boost.items.b: 2", "+ recommend.exclude.categories.0: toys"]
    v3 = next_rule_set(v2, v1.source, "ana", 2, rollback_of=1)   # a rollback publishes the old source again
    assert book_of(v3).lists.empty and v3.diff == ["- recommend.boost.items.b: 2", "- recommend.exclude.categories.0: toys"]
    assert v3.patterns == v2.patterns     # list rules never touch a pattern's version or its state
