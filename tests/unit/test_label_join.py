"""The delayed-label join: each case is worked out by hand from the definition in operators/label_join.py."""

from __future__ import annotations

from operators.label_join import LabelJoin, PendingLabels

W = 30 * 60_000
join = LabelJoin(window_ms=W, max_pending=3)


def snap(st: PendingLabels, eid: str, t: int) -> tuple[list, int | None]:
    return join.snapshot(st, eid, t, {"f": 1.0}, 0.4, 7)


def test_purchase_before_the_deadline_labels_every_open_snapshot_positive() -> None:
    st = PendingLabels()
    assert snap(st, "a", 0) == ([], W)
    assert snap(st, "b", 60_000) == ([], 60_000 + W)
    got = join.purchase(st, 120_000)
    assert [(e.example_id, e.label, e.labelled_at_ms) for e in got] == [("a", True, 120_000), ("b", True, 120_000)]
    assert st.pending == []
    assert join.release(st, watermark_ms=10 * W) == []   # nothing left to label negative


def test_purchase_exactly_at_the_deadline_counts_and_one_after_does_not() -> None:
    st = PendingLabels()
    snap(st, "a", 0)
    snap(st, "b", 1)
    got = join.purchase(st, W)   # a: 0 <= W <= W; b: 1 <= W <= W + 1
    assert {e.example_id for e in got} == {"a", "b"}
    st = PendingLabels()
    snap(st, "a", 0)
    assert join.purchase(st, W + 1) == []
    assert [(e.example_id, e.label) for e in join.release(st, watermark_ms=W + 1)] == [("a", False)]


def test_timer_releases_only_windows_that_closed() -> None:
    st = PendingLabels()
    snap(st, "a", 0)
    snap(st, "b", 10_000)
    assert join.release(st, watermark_ms=W - 1) == []
    assert [e.example_id for e in join.release(st, watermark_ms=W)] == ["a"]
    assert [e.labelled_at_ms for e in join.release(st, watermark_ms=W + 10_000)] == [W + 10_000]


def test_snapshot_arriving_after_its_purchase_is_labelled_at_once() -> None:
    st = PendingLabels()
    join.purchase(st, 50_000)            # out of order: the purchase came first
    got, deadline = snap(st, "late-snapshot", 40_000)
    assert deadline is None and [(e.example_id, e.label) for e in got] == [("late-snapshot", True)]
    got, deadline = snap(st, "after", 60_000)   # after the purchase: needs a later one
    assert got == [] and deadline == 60_000 + W


def test_purchase_before_the_snapshot_does_not_count() -> None:
    st = PendingLabels()
    join.purchase(st, 0)
    got, _ = snap(st, "a", 1)
    assert got == []
    assert [e.label for e in join.release(st, watermark_ms=1 + W)] == [False]


def test_erasure_drops_pending_examples_and_remembered_purchases() -> None:
    st = PendingLabels()
    snap(st, "a", 0)
    snap(st, "b", 1)
    join.purchase(st, 5 * W)   # remembered purchase
    assert LabelJoin.erase(st) == 2
    assert st.pending == [] and st.purchases == []
    assert join.release(st, watermark_ms=100 * W) == []


def test_pending_is_bounded_and_drops_are_counted() -> None:
    st = PendingLabels()
    for i in range(5):
        snap(st, f"e{i}", i)
    assert [p.example_id for p in st.pending] == ["e2", "e3", "e4"] and st.dropped == 2
