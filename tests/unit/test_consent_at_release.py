"""Marketing consent is judged when a match is made and again when a quiet-hours deferral releases it."""

from __future__ import annotations

from datetime import UTC, datetime

from operators.events import Event
from operators.model_scoring import ServedModels
from operators.pattern_spec import load_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer
from operators.profile_fold import ProfileRules

CART = {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 1, "currency": "EUR"}


def at(hour: int, minute: int = 0, day: int = 2) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def run_night(withdraw_at: int | None) -> tuple[list[str], list[tuple[str, str]]]:
    """An add-to-cart at 21:50 UTC: abandoned at 22:20, inside quiet hours (22-8), released at 08:00."""
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5)
    served = ServedModels()
    ctx = {"device": "desktop", "timezone": "UTC"}
    step = core.on_event(None, Event("a1", "add_to_cart", "u1", at(21, 50), None, ctx, CART), served)
    state, timers = step.state, set(step.timers)
    if withdraw_at is not None:
        step = core.on_event(state, Event("c1", "consent", "u1", withdraw_at, None, ctx,
                                          {"granted": [], "withdrawn": ["marketing"]}), served)
        state, timers = step.state, timers | set(step.timers)
    sent: list[str] = []
    suppressed: list[tuple[str, str]] = []
    while timers:   # fire timers in order, as the watermark passes them
        t = min(timers)
        timers.discard(t)
        step = core.on_timer(state, "u1", t)
        assert not step.failed
        state = step.state
        timers |= {x for x in step.timers if x > t}
        sent += [f"{tr.pattern}@{tr.emitted_at}" for tr in step.triggers]
        suppressed += list(step.suppressed)
    return sent, suppressed


def test_a_deferred_trigger_is_released_at_the_end_of_quiet_hours() -> None:
    sent, suppressed = run_night(withdraw_at=None)
    assert sent == [f"cart_abandonment@{at(8, 0, day=3)}"] and suppressed == []


def test_consent_withdrawn_during_quiet_hours_stops_the_deferred_trigger() -> None:
    sent, suppressed = run_night(withdraw_at=at(23, 0))
    assert sent == [] and suppressed == [("cart_abandonment", "no_consent_at_release")]


def test_consent_withdrawn_after_the_release_does_not_recall_it() -> None:
    sent, _ = run_night(withdraw_at=at(8, 30, day=3))
    assert sent == [f"cart_abandonment@{at(8, 0, day=3)}"]


def test_a_purchase_during_quiet_hours_cancels_the_deferred_trigger() -> None:
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5)
    served = ServedModels()
    ctx = {"device": "desktop", "timezone": "UTC"}
    step = core.on_event(None, Event("a1", "add_to_cart", "u1", at(21, 50), None, ctx, CART), served)
    state = step.state
    step = core.on_timer(state, "u1", at(22, 20))           # abandoned inside quiet hours: deferred to 08:00
    assert step.triggers == [] and step.timers == [at(8, 0, day=3)]
    state = step.state
    purchase = {"order_id": "o1", "items": [{**CART}], "total_minor": 1250, "currency": "EUR"}
    step = core.on_event(state, Event("b1", "purchase", "u1", at(23, 30), None, ctx, purchase), served)
    assert ("cart_abandonment", "cancelled_before_release") in step.suppressed
    step = core.on_timer(step.state, "u1", at(8, 0, day=3))
    assert step.triggers == []


def test_a_purchase_after_the_release_does_not_recall_it() -> None:
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5)
    served = ServedModels()
    ctx = {"device": "desktop", "timezone": "UTC"}
    state = core.on_event(None, Event("a1", "add_to_cart", "u1", at(21, 50), None, ctx, CART), served).state
    state = core.on_timer(state, "u1", at(22, 20)).state
    released = core.on_timer(state, "u1", at(8, 0, day=3))
    assert [t.pattern for t in released.triggers] == ["cart_abandonment"]
    purchase = {"order_id": "o1", "items": [{**CART}], "total_minor": 1250, "currency": "EUR"}
    step = core.on_event(released.state, Event("b1", "purchase", "u1", at(8, 30, day=3), None, ctx, purchase), served)
    assert step.suppressed == []
