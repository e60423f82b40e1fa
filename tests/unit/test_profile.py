"""The profile core: journey stages, lateness, erasure, consent, and order independence."""

from __future__ import annotations

import pickle
import random
from collections import defaultdict

import pytest

from operators.events import Event
from operators.model_scoring import ServedModels
from operators.pattern_spec import load_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer
from operators.profile_fold import ProfileRules, apply_event, consent_at, is_late, profile_view, redis_fields
from operators.validation import parse_event
from persona.generator.shoppers import generate
from persona.settings import load_generator_settings
from state.journey import JourneyFacts, journey_stage

RULES = ProfileRules()
MIN = 60_000


def ev(event_type: str, t: int, **payload: object) -> Event:
    return Event(f"e-{event_type}-{t}", event_type, "u1", t, None, {"device": "mobile", "timezone": "Europe/Berlin"},
                 dict(payload))


CART = {"product_id": "p1", "category": "shoes", "price_minor": 1000, "quantity": 2, "currency": "EUR"}
BUY = {"order_id": "o1", "items": [{"product_id": "p1", "category": "shoes", "price_minor": 1000, "quantity": 2}],
       "total_minor": 2000, "currency": "EUR"}


@pytest.mark.parametrize(("facts", "stage"), [
    (JourneyFacts(3, 10, 20, 30, 1, 1), "loyal"),
    (JourneyFacts(1, 20, 20, None, 0, 0), "purchased"),
    (JourneyFacts(1, 10, 20, 30, 1, 0), "cart_abandoned"),
    (JourneyFacts(1, 30, 20, 25, 0, 0), "purchased"),
    (JourneyFacts(0, None, 20, None, 1, 0), "considering"),
    (JourneyFacts(0, None, None, None, 0, 2), "considering"),
    (JourneyFacts(0, None, None, None, 0, 0), "browsing"),
])
def test_journey_rules(facts: JourneyFacts, stage: str) -> None:
    assert journey_stage(facts, loyal_min_purchases=3) == stage


def test_stage_walk_and_cart_value() -> None:
    s = apply_event(None, ev("page_view", 0, page_type="home"), RULES)
    assert profile_view("u1", s, RULES)["stage"] == "browsing"
    s = apply_event(s, ev("add_to_cart", MIN, **CART), RULES)
    view = profile_view("u1", s, RULES)
    assert (view["stage"], view["cart_items"], view["cart_value_minor"]) == ("considering", 1, 2000)
    s = apply_event(s, ev("purchase", 2 * MIN, **BUY), RULES)
    view = profile_view("u1", s, RULES)
    assert (view["stage"], view["cart_items"], view["rfm"]["monetary_30d"]) == ("purchased", 0, 2000)
    for i in range(2):
        s = apply_event(s, ev("purchase", (3 + i) * MIN, **BUY), RULES)
    assert profile_view("u1", s, RULES)["stage"] == "loyal"


def test_lateness_is_per_user_and_exact_at_the_bound() -> None:
    s = apply_event(None, ev("page_view", 10 * MIN, page_type="home"), RULES)
    assert not is_late(s, ev("search", 10 * MIN - RULES.allowed_lateness_ms, query="x"), RULES)
    assert is_late(s, ev("search", 10 * MIN - RULES.allowed_lateness_ms - 1, query="x"), RULES)
    assert not is_late(None, ev("search", 0, query="x"), RULES)


def test_erasure_forgets_everything_and_consent_toggles() -> None:
    s = apply_event(None, ev("profile_update", 0, attributes={"age_band": "25-34"}), RULES)
    s = apply_event(s, ev("consent", 1, granted=[], withdrawn=["marketing"]), RULES)
    assert not consent_at(s, 1, RULES) and consent_at(s, 0, RULES) and s.demographics == {"age_band": "25-34"}
    s = apply_event(s, ev("consent", 2, granted=["marketing"], withdrawn=[]), RULES)
    assert consent_at(s, 2, RULES)
    core = Personalizer(RULES, DEFAULT_MODEL_RULES, load_patterns(), segments=5)
    s = core.on_event(s, ev("erasure_request", 3), ServedModels()).state
    assert s.version == 0 and s.demographics == {} and s.totals == {} and s.consents == []


def test_redis_fields_are_strings() -> None:
    s = apply_event(None, ev("add_to_cart", 0, **CART), RULES)
    fields = redis_fields(profile_view("u1", s, RULES), updated_at_ms=5)
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["profile_version"] == "1" and fields["marketing_consent"] == "true"
    assert pickle.loads(pickle.dumps(s)).version == 1


def test_profile_is_the_same_under_bounded_disorder() -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for rec in generate(load_generator_settings({"users": 40, "seed": 9, "malformed_fraction": 0.0,
                                                 "late_fraction": 0.0, "out_of_order_fraction": 0.0}),
                        max_records=4000):
        parsed = parse_event(rec.value)
        assert isinstance(parsed, Event)
        by_user[parsed.user_id].append(parsed)
    rng = random.Random(2)
    for user, events in by_user.items():
        shuffled = sorted(events, key=lambda e: e.event_time_ms + rng.randrange(4000))
        views = []
        for order in (events, shuffled):
            s = None
            for e in order:
                assert not is_late(s, e, RULES)
                s = apply_event(s, e, RULES)
            assert s is not None
            views.append(profile_view(user, s, RULES))
        for v in views:   # affinities are floats: compare them approximately
            v["affinities"] = {c: round(x, 6) for c, x in v["affinities"].items()}
        assert views[0] == views[1], user
