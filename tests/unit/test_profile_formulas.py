"""Windows, sessions, RFM and decayed affinities: exact boundaries, out-of-order input, bounded memory.

Each expectation is computed here by a direct formula over the raw event times, never by the code under test.
"""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from state.affinity import Affinities
from state.rfm import DAY_MS, Rfm, RfmThresholds, RfmValues, rfm_score
from state.sessions import Sessions
from state.windows import MEASURES, WindowSpec, measures_of

MIN = 60_000
ONE_VIEW = (1, 0, 0, 0, 0, 0)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize(("event_t", "now", "counted"), [
    (0, 9 * MIN + 59_999, True),       # bucket [0, 1 min) is the oldest of the 10 at 9:59.999
    (0, 10 * MIN, False),              # ...and leaves exactly when the 11th minute starts
    (10 * MIN - 1, 10 * MIN, True),
    (5 * MIN, 5 * MIN, True),          # the current bucket counts
    (6 * MIN, 5 * MIN, False),         # a bucket after "now" does not
])
def test_window_boundaries(event_t: int, now: int, counted: bool) -> None:
    w, b = WindowSpec(10 * MIN, MIN), {}
    w.add(b, event_t, ONE_VIEW)
    assert w.totals(b, now)[0] == (1 if counted else 0)


def test_window_matches_direct_count_for_any_arrival_order() -> None:
    rng = random.Random(1)
    times = sorted(rng.randrange(0, 3 * 3_600_000) for _ in range(500))
    shuffled = times[:]
    for i in range(0, len(shuffled) - 5, 5):  # bounded disorder: shuffle within runs of 5
        chunk = shuffled[i:i + 5]
        rng.shuffle(chunk)
        shuffled[i:i + 5] = chunk
    w, b = WindowSpec(3_600_000, 5 * MIN), {}
    for t in shuffled:
        w.add(b, t, ONE_VIEW)
    for now in range(0, 3 * 3_600_000, 7 * MIN + 13):
        first_bucket = (now // (5 * MIN)) * 5 * MIN - 3_600_000 + 5 * MIN
        direct = sum(1 for t in times if first_bucket <= t < (now // (5 * MIN) + 1) * 5 * MIN)
        assert w.totals(b, now)[0] == direct, now


def test_window_evicts_and_refuses_too_old_events() -> None:
    w, b = WindowSpec(24 * 60 * MIN, 60 * MIN), {}
    for h in range(72):
        w.add(b, h * 60 * MIN, ONE_VIEW)
        w.evict(b, h * 60 * MIN)
        assert len(b) <= 24
    assert w.add(b, 0, ONE_VIEW, now_ms=72 * 60 * MIN) is False
    assert w.totals(b, 72 * 60 * MIN - 1)[0] == 24


def test_window_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError):
        WindowSpec(10 * MIN, 3 * MIN)


def test_measures_of_events() -> None:
    assert measures_of("page_view", {"page_type": "product", "dwell_ms": 1500}) == (1, 1500, 0, 0, 0, 0)
    assert measures_of("page_view", {"page_type": "home", "dwell_ms": 1500}) == ONE_VIEW
    assert measures_of("purchase", {"total_minor": 999, "items": []}) == (0, 0, 0, 0, 1, 999)
    assert measures_of("search", {"query": "x"}) is None
    assert len(MEASURES) == 6


# ----------------------------------------------------------------------------- sessions
GAP = 30 * MIN


def test_session_gap_boundary_is_inclusive() -> None:
    s = Sessions()
    assert s.observe(0, GAP, 5) is True
    assert s.observe(GAP, GAP, 5) is False           # exactly the gap: same session
    assert s.observe(2 * GAP + 1, GAP, 5) is True    # 1 ms more than the gap: new session
    assert s.count == 2
    assert s.recent == [(0, GAP, 2)]


def test_out_of_order_event_extends_current_session_backwards() -> None:
    s = Sessions()
    s.observe(10 * GAP, GAP, 5)
    s.observe(10 * GAP - GAP, GAP, 5)    # within the gap before the start: same session
    assert (s.current_start_ms, s.current_events, s.count) == (9 * GAP, 2, 1)
    s.observe(5 * GAP, GAP, 5)           # far older: a closed session's event, not this one
    assert (s.current_start_ms, s.current_events, s.count) == (9 * GAP, 2, 1)
    assert s.current_length_ms() == GAP


def test_session_summaries_are_bounded_and_open_state_follows_watermark() -> None:
    s = Sessions()
    for i in range(10):
        s.observe(i * 2 * GAP, GAP, 3)
    assert s.count == 10 and len(s.recent) == 3
    assert [start for start, _, _ in s.recent] == [6 * 2 * GAP, 7 * 2 * GAP, 8 * 2 * GAP]
    assert s.is_open(18 * GAP + GAP, GAP) and not s.is_open(18 * GAP + GAP + 1, GAP)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=Sessions) == s


# ----------------------------------------------------------------------------- RFM
def test_rfm_day_boundaries() -> None:
    r = Rfm()
    r.add_purchase(0, 100)                        # day 0
    r.add_purchase(29 * DAY_MS + 5, 200)          # day 29
    at_day_29 = r.values(29 * DAY_MS + DAY_MS - 1)
    assert (at_day_29.frequency_30d, at_day_29.monetary_30d, at_day_29.recency_days) == (2, 300, 0)
    at_day_30 = r.values(30 * DAY_MS)             # day 0 has left the 30-day window...
    assert (at_day_30.frequency_30d, at_day_30.frequency_90d) == (1, 2)
    at_day_90 = r.values(90 * DAY_MS)             # ...and the 90-day one at day 90
    assert (at_day_90.frequency_90d, at_day_90.monetary_90d, at_day_90.recency_days) == (1, 200, 61)


def test_rfm_out_of_order_and_memory_bound() -> None:
    forward, backward = Rfm(), Rfm()
    purchases = [(d * DAY_MS, 100 + d) for d in range(0, 200, 3)]
    for t, m in purchases:
        forward.add_purchase(t, m)
    for t, m in reversed(purchases):
        backward.add_purchase(t, m)
    now = 199 * DAY_MS
    assert forward.values(now) == backward.values(now)
    assert len(forward.days) <= 90 and len(backward.days) <= 90
    assert forward.values(now).frequency_90d == sum(1 for t, _ in purchases if t // DAY_MS > 199 - 90)


@pytest.mark.parametrize(("values", "expected"), [
    (RfmValues(None, 0, 0, 0, 0), (1, 1, 1, 3)),
    (RfmValues(61, 0, 1, 0, 1_999), (1, 2, 1, 4)),
    (RfmValues(60, 0, 1, 0, 2_000), (2, 2, 2, 6)),
    (RfmValues(3, 1, 8, 0, 200_000), (5, 5, 5, 15)),
    (RfmValues(4, 1, 7, 0, 199_999), (4, 4, 4, 12)),
])
def test_rfm_score_thresholds(values: RfmValues, expected: tuple[int, int, int, int]) -> None:
    assert rfm_score(values, RfmThresholds()) == expected


# ----------------------------------------------------------------------------- affinities
def test_affinity_half_life_and_order_independence() -> None:
    hl = 3_600_000
    events = [("shoes", 1.0, 0), ("books", 3.0, 1000), ("shoes", 5.0, 7_200_000), ("shoes", 2.0, 3_600_000)]
    now = 10_800_000
    direct = {c: sum(w * 0.5 ** ((now - t) / hl) for cc, w, t in events if cc == c) for c in ("shoes", "books")}
    for order in (events, list(reversed(events)), sorted(events, key=lambda e: e[2])):
        a = Affinities()
        for c, w, t in order:
            a.add(c, w, t, hl)
        for c, value in a.scores(now, hl).items():
            assert math.isclose(value, direct[c], rel_tol=1e-12)


def test_affinity_prune_keeps_strongest() -> None:
    a = Affinities()
    for i, c in enumerate("abcdef"):
        a.add(c, float(i + 1), 0, 1000)
    a.prune(0, min_score=1.5, keep=3, half_life_ms=1000)
    assert sorted(a.entries) == ["d", "e", "f"]
    a.prune(4000, min_score=0.3, keep=3, half_life_ms=1000)    # decayed by 2^-4: d 4/16, e 5/16, f 6/16
    assert sorted(a.entries) == ["e", "f"]
