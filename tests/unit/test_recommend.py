"""The recommender's core: co-occurrence signals, the per-item fold, personal lists, and the planted item structure.

Expected values are worked out by hand from the definitions in docs/recommendations.md, not by the code.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest

from operators.co_occurrence import (
    ItemSignal,
    RecommendRules,
    Touch,
    decayed,
    fold_signal,
    remember,
    top_neighbours,
    touches,
)
from operators.events import Event
from operators.item_table import decode_signals, signal_batches, weight_at, weight_score
from operators.model_scoring import ServedModels
from operators.recommendations import PopularItems, PublishedPopularity, personal_list
from operators.shards import java_string_hash
from persona.generator.items import PLANTED
from persona.generator.shoppers import generate
from persona.rules import personalizer, recommend_rules
from persona.settings import load_generator_settings, load_job_settings
from state.item_state import ItemNeighbours, RecentItems

H = 1_000   # a half-life of one second keeps the arithmetic readable
RULES = RecommendRules(half_life_ms=H, pair_window_ms=10_000, recent_items=3, pair_items=2, neighbours_per_item=2,
                       recency_half_life_ms=H)


def _signals(recent: RecentItems, *steps: tuple[str, float, int]) -> list[tuple[str, str, float]]:
    out = []
    for item, weight, t in steps:
        out += [(s.item, s.other, s.amount) for s in remember(recent, Touch(item, "c", weight, t), RULES)]
    return out


def test_settings_are_the_rules_with_the_same_defaults() -> None:
    assert recommend_rules(load_job_settings()) == RecommendRules()


def test_touches_of_each_event_type() -> None:
    r = RecommendRules()
    assert touches("page_view", {"page_type": "home"}, 1, r) == []
    assert touches("add_to_cart", {"product_id": "p", "category": "c"}, 2, r) == [Touch("p", "c", 3.0, 2)]
    bought = touches("purchase", {"items": [{"product_id": "a", "category": "x"}, {"product_id": "b", "category": "y"}]}, 3, r)
    assert bought == [Touch("a", "x", 5.0, 3), Touch("b", "y", 5.0, 3)]
    assert touches("search", {"query": "q"}, 4, r) == []


def test_a_pair_counts_the_product_of_the_highest_weights_once_per_user() -> None:
    recent = RecentItems()
    assert _signals(recent, ("a", 1.0, 0), ("b", 1.0, 100)) == [("a", "", 1.0), ("b", "", 1.0), ("b", "a", 1.0), ("a", "b", 1.0)]
    assert _signals(recent, ("a", 1.0, 200), ("b", 1.0, 300)) == []             # bouncing between them adds nothing
    # a goes into the cart: its weight 1 -> 3, so the pair grows by (3 - 1) * 1, to 3 * 1 in all
    assert _signals(recent, ("a", 3.0, 400)) == [("a", "", 2.0), ("a", "b", 2.0), ("b", "a", 2.0)]


def test_the_window_caps_pairs_and_forgets_old_items() -> None:
    recent = RecentItems()
    _signals(recent, ("a", 1.0, 0), ("b", 1.0, 1), ("c", 1.0, 2))
    # pair_items=2: d pairs with the two newest (b, c), not with a
    assert [o for i, o, _ in _signals(recent, ("d", 1.0, 3)) if i == "d" and o] == ["b", "c"]
    assert [r.item for r in recent.items] == ["b", "c", "d"]                      # recent_items=3: a is gone
    # pair_window_ms=10 s: at t=20 s every item is forgotten, so b counts anew and pairs with nothing
    assert _signals(recent, ("b", 1.0, 20_000)) == [("b", "", 1.0)]


def test_the_fold_is_the_decayed_sum_in_any_order() -> None:
    signals = [ItemSignal("x", "c", "y", 1.0, 0), ItemSignal("x", "c", "y", 2.0, 1_000), ItemSignal("x", "c", "y", 4.0, 3_000),
               ItemSignal("x", "c", "", 1.0, 500)]
    # At t = 3 s: 1 * 2^-3 + 2 * 2^-2 + 4 = 4.625; the weight 1 * 2^-2.5
    for order in itertools.permutations(signals):
        state = ItemNeighbours("x")
        for s in order:
            fold_signal(state, s, RULES)
        value, at = state.neighbours["y"]
        assert decayed(value, at, 3_000, H) == pytest.approx(4.625, rel=1e-12)
        assert decayed(state.weight, state.at, 3_000, H) == pytest.approx(2 ** -2.5, rel=1e-12)


def test_a_full_item_evicts_its_weakest_neighbour() -> None:
    state = ItemNeighbours("x")
    for s in (ItemSignal("x", "c", "a", 4.0, 0), ItemSignal("x", "c", "b", 1.0, 0), ItemSignal("x", "c", "d", 1.0, 1_000)):
        fold_signal(state, s, RULES)
    # At 1 s: a = 2, b = 0.5, d = 1 -> b goes (neighbours_per_item=2)
    assert sorted(state.neighbours) == ["a", "d"]
    assert top_neighbours(state, 1_000, 5, RULES) == [("a", 2.0), ("d", 1.0)]


def test_a_tie_is_broken_by_item_id() -> None:
    state = ItemNeighbours("x")
    for other in ("b", "a"):
        fold_signal(state, ItemSignal("x", "c", other, 1.0, 0), RULES)
    assert top_neighbours(state, 0, 2, RULES) == [("a", 1.0), ("b", 1.0)]


def _table(*users: list[str]) -> tuple[dict[str, ItemNeighbours], PopularItems]:
    rules = RecommendRules()
    table: dict[str, ItemNeighbours] = {}
    popular = PopularItems(rules, refresh_every=1)
    for items in users:
        recent = RecentItems()
        for item in items:
            for s in remember(recent, Touch(item, "books", 1.0, 0), rules):
                fold_signal(table.setdefault(s.item, ItemNeighbours(s.item)), s, rules)
                popular.add(s)
    return table, popular


def test_the_list_ranks_by_cosine_then_popularity() -> None:
    # Users: {a, b}, {a, c}, {c, d}, {c, e}: weights a=2, b=1, c=3; s(a,b)=1, s(a,c)=1.
    table, popular = _table(["a", "b"], ["a", "c"], ["c", "d"], ["c", "e"])
    rules = RecommendRules(content_weight=0.0, popularity_weight=0.0)
    mine = RecentItems()
    remember(mine, Touch("a", "books", 1.0, 0), rules)
    listed = personal_list(mine, table, popular, set(), 0, rules)
    # cos(a,b) = 1/sqrt(2*1) = 0.707 beats cos(a,c) = 1/sqrt(2*3) = 0.408, though c is the more popular
    assert [(i, round(s, 3)) for i, s in listed] == [("b", 0.707), ("c", 0.408)]


def test_cart_bought_and_current_items_are_never_listed_and_a_new_user_gets_the_popular_ones() -> None:
    table, popular = _table(["a", "b"], ["a", "c"], ["c", "d"], ["c", "e"])
    rules = RecommendRules()
    assert [i for i, _ in personal_list(RecentItems(), table, popular, set(), 0, rules)][:2] == ["c", "a"]
    mine = RecentItems()
    remember(mine, Touch("a", "books", 1.0, 0), rules)
    listed = [i for i, _ in personal_list(mine, table, popular, {"b"}, 0, rules)]
    assert "a" not in listed and "b" not in listed and listed[0] == "c"


def _decoded(settings_overrides: dict[str, float]) -> list[dict]:
    s = load_generator_settings({"users": 60, "span_hours": 24, "malformed_fraction": 0.0, **PLANTED, **settings_overrides})
    return [json.loads(r.value) for r in generate(s)]


def test_planted_structure_changes_only_which_product_is_viewed() -> None:
    control = _decoded({"item_zipf": 0, "item_styles": 0, "item_pairs": 0, "item_sequences": 0})
    planted = _decoded({})
    assert len(control) == len(planted) > 1_000
    products = 0
    for a, b in zip(control, planted, strict=True):
        pa, pb = a.pop("payload"), b.pop("payload")
        assert a == b
        if "product_id" in pa:
            products += 1
            assert pa["category"] == pb["category"] and pa["product_id"].rsplit("-", 1)[0] == pb["product_id"].rsplit("-", 1)[0]
        else:
            assert pa.keys() == pb.keys()
    assert products > 500


def test_planted_structure_is_there_and_the_control_has_none() -> None:
    def shares(events: list[dict]) -> tuple[float, float]:
        views = [e["payload"]["product_id"] for e in events if e["payload"].get("page_type") == "product"]
        top = max(views.count(v) for v in set(views)) / len(views)
        return top, len(set(views)) / len(views)
    planted_top, planted_distinct = shares(_decoded({"item_pairs": 0.0, "item_sequences": 0.0}))
    control_top, control_distinct = shares(_decoded({"item_zipf": 0, "item_styles": 0, "item_pairs": 0, "item_sequences": 0}))
    # Zipf(1) over 400 items puts ~15% of a category's views on its first item (1.5% of all views), uniform 0.25%
    # (0.025%), though in a short stream a few items of the control stream are viewed 3-4 times by chance.
    assert planted_top > 3 * control_top
    assert planted_distinct < 0.7 * control_distinct


def test_without_category_focus_a_product_view_tells_nothing_of_the_next_ones_category() -> None:
    """The control of ``persona evaluate --recommend``: with focus, consecutive product views of a user stay in one
    category most of the time; without it, as often as two uniform draws of the 10 categories agree (1/10)."""
    def same_category_share(events: list[dict]) -> float:
        last: dict[str, str] = {}
        same = pairs = 0
        for e in events:
            if e["payload"].get("page_type") == "product":
                previous = last.get(e["user_id"])
                if previous is not None:
                    pairs += 1
                    same += previous == e["payload"]["category"]
                last[e["user_id"]] = e["payload"]["category"]
        return same / pairs
    control = {"item_zipf": 0, "item_styles": 0, "item_pairs": 0, "item_sequences": 0}
    assert _decoded({**control, "category_focus": 1.0}) == _decoded(control)   # 1 is the stream as it was
    assert same_category_share(_decoded(control)) > 0.5
    assert abs(same_category_share(_decoded({**control, "category_focus": 0.0})) - 1 / 10) < 0.03


def test_bought_together_partners_follow_add_to_cart() -> None:
    from persona.generator.items import ItemWorld
    events = _decoded({"item_pairs": 1.0, "item_sequences": 0.0})
    world = ItemWorld(42, 1.0, 0.5, 1.0, 0.0)
    followed = total = 0
    by_user: dict[str, list[dict]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    for seq in by_user.values():
        for e, nxt in itertools.pairwise(seq):
            if e["event_type"] == "add_to_cart" and nxt["payload"].get("page_type") == "product" \
                    and nxt["payload"]["category"] == e["payload"]["category"]:
                total += 1
                followed += nxt["payload"]["product_id"] == world.partner(e["payload"]["product_id"])
    assert total > 20 and followed == total


def test_decay_is_exponential_in_event_time() -> None:
    assert decayed(1.0, 0, 3 * H, H) == 0.125
    assert math.isclose(decayed(1.0, 3 * H, 0, H), 8.0)


def test_signals_go_to_the_item_shard_java_would_key_them_by() -> None:
    signals = [ItemSignal(item, "c", "", 1.0, t) for t, item in enumerate(["p1", "p2", "p1", "Ωmega", "p3"])]
    batches = signal_batches(signals, 4)
    assert set(batches) == {java_string_hash(s.item) % 4 for s in signals}   # Java's floorMod(hashCode, 4)
    regrouped = [s for data in batches.values() for s in decode_signals(data)]
    assert sorted(regrouped, key=lambda s: s.t) == signals
    assert [s.item for s in decode_signals(batches[java_string_hash("p1") % 4]) if s.item == "p1"] == ["p1", "p1"]


def _event(kind: str, payload: dict, t: int, n: int, user: str = "u1") -> Event:  # type: ignore[type-arg]
    return Event(f"e{n}", kind, user, t, None, {}, payload)


def test_the_core_sends_item_signals_only_with_the_personalization_purpose() -> None:
    core = personalizer(load_job_settings({"recommend.enabled": True}))
    view = {"url": "/p", "page_type": "product", "product_id": "p1", "category": "toys"}
    step = core.on_event(None, _event("page_view", view, 1_000, 1), ServedModels())
    assert [(s.item, s.other) for s in step.item_signals] == [("p1", "")]
    step = core.on_event(step.state, _event("page_view", {**view, "product_id": "p2"}, 2_000, 2), ServedModels())
    assert [(s.item, s.other) for s in step.item_signals] == [("p2", ""), ("p2", "p1"), ("p1", "p2")]
    assert step.state is not None and [r.item for r in step.state.recent_items.items] == ["p1", "p2"]
    step = core.on_event(step.state, _event("consent", {"granted": [], "withdrawn": ["personalization"]}, 3_000, 3),
                         ServedModels())
    assert step.state is not None and step.state.recent_items is None    # the window goes with the purpose
    step = core.on_event(step.state, _event("page_view", {**view, "product_id": "p3"}, 4_000, 4), ServedModels())
    assert step.item_signals == () and step.state is not None and step.state.recent_items is None
    off = personalizer(load_job_settings({"recommend.enabled": False}))
    assert off.on_event(None, _event("page_view", view, 1_000, 1), ServedModels()).item_signals == ()


def test_published_popularity_gives_the_ratios_of_the_weights_at_any_time() -> None:
    rules = RecommendRules(half_life_ms=H)
    states = [ItemNeighbours("a", "x", 4.0, 0), ItemNeighbours("b", "x", 4.0, 2 * H), ItemNeighbours("c", "y", 1.0, 0)]
    scored = sorted(((s.item, weight_score(s, H)) for s in states), key=lambda p: -p[1])
    popular = PublishedPopularity({"x": [p for p in scored if p[0] != "c"]}, scored)
    # At any time b weighs 4 times a (two half-lives younger) and 16 times c.
    assert popular.overall(10**13, 3) == [("b", 1.0), ("a", 0.25), ("c", 0.0625)]
    assert popular.top("x", 0) == [("b", 1.0), ("a", 0.25)] and popular.top("z", 0) == []
    assert weight_at(weight_score(states[1], H), 3 * H, H) == pytest.approx(2.0) and rules.half_life_ms == H
