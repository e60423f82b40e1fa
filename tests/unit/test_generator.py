"""The synthetic shopper generator: determinism, malformation rates, bounded disorder."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from persona.generator.shoppers import generate
from persona.settings import load_generator_settings

N = 12_000


@pytest.fixture(scope="module")
def records():  # type: ignore[no-untyped-def]
    return list(generate(load_generator_settings({"users": 400, "seed": 5}), max_records=N))


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = [r.value for r in generate(load_generator_settings({"users": 50, "seed": 1}), max_records=2000)]
    b = [r.value for r in generate(load_generator_settings({"users": 50, "seed": 1}), max_records=2000)]
    c = [r.value for r in generate(load_generator_settings({"users": 50, "seed": 2}), max_records=2000)]
    assert a == b
    assert a != c


def _within(observed: int, n: int, p: float) -> bool:
    """Observed count within 5 standard deviations of the binomial mean (flake-free for fixed seeds too)."""
    return abs(observed - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_malformation_rates(records) -> None:  # type: ignore[no-untyped-def]
    settings = load_generator_settings()
    kinds = Counter(r.malformed for r in records if r.malformed)
    assert _within(sum(kinds.values()), N, settings.malformed_fraction)
    per_kind = settings.malformed_fraction / len(settings.malformed_kinds)
    assert set(kinds) == set(settings.malformed_kinds)
    for kind in settings.malformed_kinds:
        assert _within(kinds[kind], N, per_kind), (kind, kinds[kind])


def test_out_of_order_is_bounded_and_late_events_are_late_for_their_user(records) -> None:  # type: ignore[no-untyped-def]
    settings = load_generator_settings()
    bound = settings.max_out_of_orderness_ms
    newest = 0
    newest_of_user: dict[str, int] = {}
    lateness: dict[str, list[int]] = {"in_order": [], "out_of_order": []}
    late_by_user: list[int] = []
    for r in records:
        newest = max(newest, r.event_time_ms)
        user = r.key.decode() if r.key else None
        if r.delay == "late":
            if r.malformed:
                continue   # dead-lettered as malformed anyway; its key may be broken
            assert user is not None
            late_by_user.append(newest_of_user[user] - r.event_time_ms)
        else:
            lateness[r.delay].append(newest - r.event_time_ms)
            if user is not None:
                newest_of_user[user] = max(newest_of_user.get(user, 0), r.event_time_ms)
    assert max(lateness["out_of_order"]) <= bound
    assert max(lateness["in_order"]) <= bound
    # Traffic is sparse in event time, so only some delayed records overtake another; some must.
    assert sum(1 for x in lateness["out_of_order"] if x > 0) > 0.1 * len(lateness["out_of_order"])
    assert late_by_user and min(late_by_user) > settings.late_margin_ms
    # Held records of users who never come back are not emitted: at most the configured share arrives.
    assert len(late_by_user) <= N * settings.late_fraction + 5 * math.sqrt(N * settings.late_fraction)
    assert _within(len(lateness["out_of_order"]), N, settings.out_of_order_fraction)


def test_traffic_looks_like_shoppers(records) -> None:  # type: ignore[no-untyped-def]
    events = [r.event for r in records if r.event]
    types = Counter(e["event_type"] for e in events)
    assert types["page_view"] > types["add_to_cart"] > types["purchase"] > 0
    assert {"search", "remove_from_cart", "consent", "profile_update"} <= set(types)
    devices = Counter(e["context"]["device"] for e in events)
    assert devices["mobile"] > devices["desktop"] > devices["tablet"] > 0
    sessions_per_user = Counter(u for u, _ in {(e["user_id"], e["session_id"]) for e in events})
    assert sum(1 for n in sessions_per_user.values() if n >= 2) > 0.3 * len(sessions_per_user)  # repeat visitors
    purchases = [e for e in events if e["event_type"] == "purchase"]
    assert all(abs(sum(i["price"] * i["quantity"] for i in p["payload"]["items"]) - p["payload"]["total"]) < 0.01
               for p in purchases)


def test_malformed_records_keep_no_event_and_valid_ones_round_trip(records) -> None:  # type: ignore[no-untyped-def]
    for r in records[:2000]:
        if r.malformed:
            assert r.event is None and r.expected_reason
        else:
            assert json.loads(r.value) == r.event and r.key == r.event["user_id"].encode()


def test_the_noisier_stream_weakens_the_buying_signal() -> None:
    """Buyers read product pages longer: the signal of the default stream. ``signal_strength`` 0 removes it."""
    def dwell_gap(**knobs: float) -> float:
        records = list(generate(load_generator_settings({"users": 200, "seed": 9, "bot_fraction": 0.0, **knobs}),
                                max_records=20_000))
        buyers = {r.event["user_id"] for r in records if r.event and r.event["event_type"] == "purchase"}
        dwell: dict[bool, list[int]] = {True: [], False: []}
        for r in records:
            if r.event and r.event["event_type"] == "page_view" and r.event["payload"].get("page_type") == "product":
                dwell[r.event["user_id"] in buyers].append(r.event["payload"]["dwell_ms"])
        return sum(dwell[True]) / len(dwell[True]) - sum(dwell[False]) / len(dwell[False])
    strong, none = dwell_gap(), dwell_gap(signal_strength=0.0)
    assert strong > 20_000 and abs(none) < strong / 4
