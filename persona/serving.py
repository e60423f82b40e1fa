"""A user's personal list, read from Redis as a front-end would: ``persona recommend USER [--json]``.

The lookup (docs/recommendations.md "Serving"): the profile's ``recent_items`` and ``cart_products``; the records of
the recent items (their neighbours) and the best items of the user's categories and of the shop in one pipeline;
then the weight scores of every candidate. The list is scored by ``operators.recommendations.personal_list``,
the function the evaluation scores, as of the user's newest event (so the same Redis gives the same list).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from operators.co_occurrence import RecommendRules
from operators.recommendations import TOP_PER_CATEGORY, list_categories, served_list
from state.item_state import RecentItem, RecentItems
from state.item_store import read_list_inputs
from state.keys import RedisKeys
from state.profile_store import read_profile


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    known: bool                          # the user has a profile
    as_of: int | None                    # event time the list is scored at (the user's newest event)
    items: list[tuple[str, float]]       # best first
    lookup_ms: float

    def to_json(self) -> str:
        return json.dumps({"user_id": self.user_id, "known": self.known, "as_of": self.as_of,
                           "items": [{"item": i, "score": round(s, 6)} for i, s in self.items],
                           "lookup_ms": round(self.lookup_ms, 3)}, sort_keys=True)


def recent_of(profile: dict[str, Any]) -> RecentItems:
    """The profile's ``recent_items`` field (as ``read_profile`` types it) as the recommender's window."""
    return RecentItems([RecentItem(*entry) for entry in profile.get("recent_items") or []])


def recommend(client: redis.Redis, keys: RedisKeys, user_id: str, rules: RecommendRules, now: int | None = None
              ) -> Recommendation:
    """``now``: the event time to score at; by default the user's newest event (the wall clock for a stranger)."""
    start = time.perf_counter()
    profile = read_profile(client, keys, user_id) or {}
    recent = recent_of(profile)
    inputs = read_list_inputs(client, keys, [r.item for r in recent.items], list_categories(recent),
                              TOP_PER_CATEGORY, rules.list_size * 2)
    if now is None:   # a stranger's list is the shop's best as of now
        newest = profile.get("last_event_time") or 0   # 0: a state with no event yet (a consent record)
        now = newest if newest > 0 else int(time.time() * 1000)
    items = served_list(recent, set(profile.get("cart_products") or ()), inputs.records, inputs.scores,
                        inputs.by_category, inputs.everything, now, rules)
    return Recommendation(user_id, bool(profile), now, items, (time.perf_counter() - start) * 1000)

