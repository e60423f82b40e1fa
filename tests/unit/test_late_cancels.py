"""The late-cancel count behind the default watermark bound (docs/behaviour.md "Event time and lateness")."""

from __future__ import annotations

from collections import Counter

from bench.late_cancels import Arrival, generated_arrivals, late_cancels


def _stream(purchase_at: int) -> list[Arrival]:
    """An add to cart at 0 (deadline 10 s); other traffic moves both partitions to 13 s; then a purchase."""
    return [Arrival("u", "add_to_cart", 0, "in_order", 0), Arrival("x", "page_view", 0, "in_order", 1),
            Arrival("x", "page_view", 13_000, "in_order", 1), Arrival("u", "page_view", 13_000, "in_order", 0),
            Arrival("u", "purchase", purchase_at, "out_of_order", 0)]


def test_a_cancel_behind_the_watermark_misses_its_deadline_only_under_a_small_bound() -> None:
    late, total = late_cancels(_stream(9_000), bound_ms=1_000, within_ms=10_000)
    assert late == Counter({"out_of_order": 1}) and total == Counter({"out_of_order": 1})
    assert late_cancels(_stream(9_000), bound_ms=5_000, within_ms=10_000)[0] == Counter()   # watermark 8 s: in time
    assert late_cancels(_stream(11_000), bound_ms=1_000, within_ms=10_000)[0] == Counter()  # after the deadline: no cancel


def test_the_generated_stream_loses_no_cancel_at_the_default_bound() -> None:
    late, total = late_cancels(generated_arrivals(20_000, 300, seed=42), bound_ms=500, within_ms=30 * 60_000)
    assert total["in_order"] > 300 and total["out_of_order"] > 10
    assert late["in_order"] == 0 and late["out_of_order"] == 0
