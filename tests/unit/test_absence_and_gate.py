"""Absence patterns (cart abandonment) and the trigger gate, at exact boundaries and with disorder."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from operators.absence import AbsencePattern, AbsenceState
from operators.events import Event
from operators.trigger_gate import GateState, TriggerGate

MIN = 60_000
WITHIN = 30 * MIN
CART = AbsencePattern("cart_abandonment", within_ms=WITHIN)


def feed(state: AbsenceState | None, e: Event) -> tuple[AbsenceState, int | None]:
    """Cart abandonment's verdicts: an add to cart anchors, a purchase cancels."""
    return CART.observe(state, e.event_id, e.event_time_ms, e.event_type == "add_to_cart", e.event_type == "purchase")


def ev(event_type: str, t: int, n: int = 0) -> Event:
    return Event(f"e{n}-{t}", event_type, "u1", t)


def run(events: list[Event], watermark: int) -> list[str]:
    """Drive the core like the Flink wrapper: events in arrival order, then the timer at the watermark."""
    state: AbsenceState | None = None
    for e in events:
        state, _ = feed(state, e)
    _, matches = CART.on_timer(state, "u1", watermark)
    return sorted(m.anchor_event_id for m in matches)


def oracle(events: list[Event]) -> list[str]:
    """The definition, directly: anchors with no other add and no purchase in [t, t + 30 min]."""
    out = []
    for a in events:
        if a.event_type != "add_to_cart":
            continue
        end = a.event_time_ms + WITHIN
        if not any(e is not a and e.event_type in ("add_to_cart", "purchase") and a.event_time_ms <= e.event_time_ms <= end
                   for e in events):
            out.append(a.event_id)
    return sorted(out)


def test_fires_exactly_at_the_deadline_with_no_further_events() -> None:
    state, notify_at = feed(None, ev("add_to_cart", 1000))
    assert notify_at == 1000 + WITHIN
    state, early = CART.on_timer(state, "u1", 1000 + WITHIN - 1)
    assert early == []
    state, matches = CART.on_timer(state, "u1", 1000 + WITHIN)
    assert [m.deadline_ms for m in matches] == [1000 + WITHIN]
    assert matches[0].match_id == "92eb6fe9ddd9286c8168c085"   # sha256 of "u1", "cart_abandonment", "e0-1000" joined by \x1f, 24 hex digits
    assert CART.on_timer(state, "u1", 10 * WITHIN)[1] == []   # released once


@pytest.mark.parametrize(("purchase_t", "fires"), [
    (1000, False),               # at the anchor's own time: cancels
    (1000 + WITHIN, False),      # exactly at the deadline: still "within"
    (1000 + WITHIN + 1, True),   # one ms late: the cart was abandoned
    (999, True),                 # before the add: does not cancel this cart
])
def test_purchase_cancellation_boundaries(purchase_t: int, fires: bool) -> None:
    events = [ev("add_to_cart", 1000), ev("purchase", purchase_t, 1)]
    assert run(events, watermark=10 * WITHIN) == (["e0-1000"] if fires else [])
    assert run(events[::-1], watermark=10 * WITHIN) == (["e0-1000"] if fires else [])   # purchase overtook the add


def test_newest_anchor_supersedes_in_any_order() -> None:
    adds = [ev("add_to_cart", 0), ev("add_to_cart", 10 * MIN, 1), ev("add_to_cart", 5 * MIN, 2)]
    for order in (adds, adds[::-1], [adds[1], adds[0], adds[2]]):
        assert run(order, watermark=10 * WITHIN) == ["e1-600000"]


def test_two_separate_carts_both_fire() -> None:
    events = [ev("add_to_cart", 0), ev("add_to_cart", WITHIN + 1, 1)]
    assert run(events, watermark=10 * WITHIN) == ["e0-0", "e1-1800001"]


def test_outcome_is_the_definition_for_any_bounded_disorder() -> None:
    rng = random.Random(4)
    for _ in range(1000):
        times = rng.sample(range(0, 4 * WITHIN, 1000), 7)
        events = [ev(rng.choice(("add_to_cart", "purchase", "page_view")), t, i) for i, t in enumerate(times)]
        # Arrival = event time + a delay below `within` (the job dead-letters anything later than seconds).
        arrival = sorted(events, key=lambda e: e.event_time_ms + rng.randrange(WITHIN))
        assert run(arrival, watermark=10 * WITHIN) == oracle(events), arrival


def test_watermark_releases_only_due_anchors_and_memory_is_bounded() -> None:
    state: AbsenceState | None = None
    for i in range(200):
        state, _ = feed(state, ev("purchase", i * MIN, i))
    assert state is not None and len(state.blockers) <= 2 * WITHIN // MIN + 1
    state, _ = feed(state, ev("add_to_cart", 300 * MIN, 999))
    state, released = CART.on_timer(state, "u1", 300 * MIN + WITHIN - 1)
    assert released == [] and state is not None and len(state.armed) == 1


# ----------------------------------------------------------------------------- gate
GATE = TriggerGate(cap=2, cap_window_ms=24 * 60 * MIN, quiet_start_hour=22, quiet_end_hour=8)


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_consent_suppresses() -> None:
    d = GATE.decide(GateState(marketing_consent=False), "p", utc_ms(2026, 11, 2, 12), "UTC")
    assert (d.outcome, d.reason) == ("suppressed", "no_consent")


def test_history_is_suppressed_before_consent_and_caps_and_counts_towards_no_cap() -> None:
    from dataclasses import replace
    t0 = utc_ms(2026, 11, 2, 12)
    gate, s = replace(GATE, history_before_ms=t0), GateState()
    decided = [gate.decide(s, "p", t0 - (3 - i) * MIN, "UTC") for i in range(3)]   # three matches just before
    assert [(d.outcome, d.reason) for d in decided] == [("suppressed", "history")] * 3
    assert gate.decide(GateState(marketing_consent=False), "p", t0 - 1, "UTC").reason == "history"
    # The cap (2 a day here) starts afresh at the boundary: history reached nobody.
    assert [gate.decide(s, "p", t0 + i * MIN, "UTC").outcome for i in range(3)] == ["send", "send", "suppressed"]


def test_frequency_cap_per_pattern_with_sliding_window() -> None:
    s = GateState()
    t0 = utc_ms(2026, 11, 2, 12)
    assert [GATE.decide(s, "p", t0 + i * MIN, "UTC").outcome for i in range(3)] == ["send", "send", "suppressed"]
    assert GATE.decide(s, "other", t0, "UTC").outcome == "send"
    assert GATE.decide(s, "p", t0 + 24 * 60 * MIN - 1, "UTC").outcome == "suppressed"
    assert GATE.decide(s, "p", t0 + 24 * 60 * MIN, "UTC").outcome == "send"


@pytest.mark.parametrize(("at", "tz", "release"), [
    (utc_ms(2026, 11, 2, 21, 59, 59), "UTC", utc_ms(2026, 11, 2, 21, 59, 59)),   # just before quiet hours
    (utc_ms(2026, 11, 2, 22), "UTC", utc_ms(2026, 11, 3, 8)),                     # quiet starts at 22:00
    (utc_ms(2026, 11, 3, 7, 59), "UTC", utc_ms(2026, 11, 3, 8)),                  # after midnight
    (utc_ms(2026, 11, 3, 8), "UTC", utc_ms(2026, 11, 3, 8)),                      # quiet ends at 08:00
    (utc_ms(2026, 11, 2, 13), "Asia/Tokyo", utc_ms(2026, 11, 2, 23)),             # 22:00 in Tokyo -> 08:00 JST
    (utc_ms(2026, 3, 29, 0, 30), "Europe/Berlin", utc_ms(2026, 3, 29, 6)),       # across the DST change: 08:00 CEST
    (utc_ms(2026, 11, 2, 23), "Not/AZone", utc_ms(2026, 11, 3, 8)),               # unknown zone: UTC
])
def test_quiet_hours_defer_to_local_end(at: int, tz: str, release: int) -> None:
    d = GATE.decide(GateState(), "p", at, tz)
    assert d.release_at_ms == release
    assert d.outcome == ("send" if release == at else "deferred")


def test_equal_quiet_start_and_end_means_no_quiet_hours() -> None:
    gate = TriggerGate(cap=5, cap_window_ms=MIN, quiet_start_hour=0, quiet_end_hour=0)
    for hour in (0, 3, 12, 23):
        d = gate.decide(GateState(), "p", at_ms=utc_ms(2026, 11, 2, hour), timezone="UTC")
        assert (d.outcome, d.release_at_ms) == ("send", utc_ms(2026, 11, 2, hour))
