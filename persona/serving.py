"""A user's personal list, read from Redis as a front-end would: ``persona recommend USER [--json]``.

The lookup (docs/recommendations.md "Serving"): the profile's ``recent_items`` and ``cart_products``; the records of
the recent items (their neighbours) and the best items of the user's categories and of the shop in one pipeline;
then the weight scores of every candidate. The list is scored by ``operators.recommendations.personal_list``,
the function the evaluation scores, as of the user's newest event (so the same Redis gives the same list), and the
exclusions and boosts of the rule set in force are applied (``ListRulesInForce``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from operators.co_occurrence import RecommendRules
from operators.list_rules import ListRules
from operators.recommendations import TOP_PER_CATEGORY, list_categories, served_list
from operators.rule_sets import book_of
from operators.runner import TriggerLists
from state.item_state import RecentItem, RecentItems
from state.item_store import read_list_inputs
from state.keys import RedisKeys
from state.profile_store import read_profile
from state.rule_registry import current_version, rule_set
from state.user_state import UserState


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    known: bool                          # the user has a profile
    as_of: int | None                    # event time the list is scored at (the user's newest event)
    items: list[tuple[str, float]]       # best first
    lookup_ms: float
    rules_version: int = 0               # the rule set whose list rules were applied (0: the pattern file's)

    def to_json(self) -> str:
        return json.dumps({"user_id": self.user_id, "known": self.known, "as_of": self.as_of,
                           "items": [{"item": i, "score": round(s, 6)} for i, s in self.items],
                           "lookup_ms": round(self.lookup_ms, 3), "rules_version": self.rules_version},
                          sort_keys=True)


class ListRulesInForce:
    """The list rules a lookup applies: those of the rule set in force in Redis (``persona rules publish`` /
    ``rollback``), or the pattern file's while none is published, as the job itself does.

    One GET per lookup; a rule set is read and compiled once per version, so a front-end keeps one of these.
    """

    def __init__(self, from_file: ListRules) -> None:
        self._from_file = from_file
        self._version, self._rules = 0, from_file

    def get(self, client: redis.Redis, keys: RedisKeys) -> tuple[int, ListRules]:
        version = current_version(client, keys)
        if version is None:
            return 0, self._from_file
        if version != self._version:
            published = rule_set(client, keys, version)
            self._version, self._rules = version, book_of(published).lists if published else self._from_file
        return self._version, self._rules


def recent_of(profile: dict[str, Any]) -> RecentItems:
    """The profile's ``recent_items`` field (as ``read_profile`` types it) as the recommender's window."""
    return RecentItems([RecentItem(*entry) for entry in profile.get("recent_items") or []])


def recommend(client: redis.Redis, keys: RedisKeys, user_id: str, rules: RecommendRules, now: int | None = None,
              in_force: ListRulesInForce | None = None) -> Recommendation:
    """``now``: the event time to score at; by default the user's newest event (the wall clock for a stranger).
    ``in_force``: where the list rules come from (none: no exclusions or boosts)."""
    start = time.perf_counter()
    rules_version, list_rules = in_force.get(client, keys) if in_force else (0, ListRules())
    profile = read_profile(client, keys, user_id) or {}
    if now is None:   # a stranger's list is the shop's best as of now
        newest = profile.get("last_event_time") or 0   # 0: a state with no event yet (a consent record)
        now = newest if newest > 0 else int(time.time() * 1000)
    items = list_for(client, keys, recent_of(profile), set(profile.get("cart_products") or ()), now, rules, list_rules)
    return Recommendation(user_id, bool(profile), now, items, (time.perf_counter() - start) * 1000, rules_version)


def redis_trigger_lists(client: redis.Redis, keys: RedisKeys, rules: RecommendRules) -> TriggerLists:
    """The lists that triggers carry (``Runner.trigger_lists``), read from Redis as of the trigger's send time: the
    same list the front-end shows the user then. A user without the personalization purpose has no window in
    their state, and gets the shop's best, as a stranger does."""
    def lists(state: UserState, now: int, list_rules: ListRules) -> list[tuple[str, float]]:
        return list_for(client, keys, state.recent_items or RecentItems(), set(state.cart), now, rules, list_rules)
    return lists


def list_for(client: redis.Redis, keys: RedisKeys, recent: RecentItems, cart: set[str], now: int,
             rules: RecommendRules, list_rules: ListRules) -> list[tuple[str, float]]:
    """A list from what Redis holds, for a user whose window and cart the caller has: the lookup of a front-end
    (from the profile) and of the job, for the triggers that carry a list (from the user's state)."""
    inputs = read_list_inputs(client, keys, [r.item for r in recent.items], list_categories(recent),
                              TOP_PER_CATEGORY, rules.list_size * 2, with_categories=list_rules.by_category)
    return served_list(recent, cart, inputs.records, inputs.scores, inputs.by_category, inputs.everything, now, rules,
                       list_rules, inputs.categories)
