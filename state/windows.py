"""Bucketed sliding windows over event time: bounded memory, exact at bucket granularity.

A window of length ``W`` with buckets of width ``g`` covers the bucket holding ``now`` and the
``W/g - 1`` buckets before it: "the last 10 minutes" with 1-minute buckets is the current minute plus
the nine before. Events are added to their own bucket, so out-of-order events land where they belong;
an event older than the window when it arrives no longer counts in it.

The state is the buckets (``{bucket index: [measures]}``, index = start // width, which MessagePack stores
in 5 bytes where an epoch-ms start takes 9) and, beside them, their running sums; the geometry is a
``WindowSpec``, the same for every user, so it is not stored per user.

>>> w, buckets = WindowSpec(length_ms=600_000, bucket_ms=60_000), {}
>>> [w.add(buckets, t, v) for t, v in [(0, (1, 0, 0, 0, 0, 0)), (59_999, (1, 0, 0, 0, 0, 0)), (60_000, (0, 0, 1, 900, 0, 0))]]
[True, True, True]
>>> w.totals(buckets, now_ms=60_000)
(2, 0, 1, 900, 0, 0)
>>> w.totals(buckets, now_ms=600_000)   # the bucket [0, 60 s) has left the window
(0, 0, 1, 900, 0, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

# Order of the measures in every bucket.
MEASURES = ("views", "product_dwell_ms", "carts", "cart_value_minor", "purchases", "revenue_minor")
ZERO = (0,) * len(MEASURES)

Buckets = dict[int, list[int]]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    length_ms: int
    bucket_ms: int

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.length_ms <= 0 or self.length_ms % self.bucket_ms:
            raise ValueError("window length must be a positive multiple of a positive bucket width")

    def _oldest(self, now_ms: int) -> int:
        """Index of the oldest bucket still in the window at ``now_ms``."""
        return now_ms // self.bucket_ms - self.length_ms // self.bucket_ms + 1

    def add(self, buckets: Buckets, t_ms: int, values: tuple[int, ...], now_ms: int | None = None) -> bool:
        """Add measures at event time ``t_ms``; False (ignored) if it is already outside the window at ``now_ms``."""
        start = t_ms // self.bucket_ms
        if now_ms is not None and start < self._oldest(now_ms):
            return False
        bucket = buckets.get(start)
        if bucket is None:
            buckets[start] = list(values)
        else:
            for i, v in enumerate(values):
                if v:
                    bucket[i] += v
        return True

    def evict(self, buckets: Buckets, now_ms: int) -> list[list[int]]:
        """Drop buckets that can no longer be in the window (memory stays bounded by length/bucket); returns them."""
        oldest = self._oldest(now_ms)
        gone = [s for s in buckets if s < oldest]
        return [buckets.pop(start) for start in gone]

    def totals(self, buckets: Buckets, now_ms: int) -> tuple[int, ...]:
        oldest, newest = self._oldest(now_ms), now_ms // self.bucket_ms
        rows = [values for start, values in buckets.items() if oldest <= start <= newest]
        if not rows:
            return ZERO
        return tuple(map(sum, zip(*rows, strict=True)))


def add_into(sums: list[int], values: tuple[int, ...] | list[int], sign: int = 1) -> None:
    for i, v in enumerate(values):
        if v:
            sums[i] += sign * v


def measures_of(event_type: str, payload: dict[str, object]) -> tuple[int, ...] | None:
    """What one normalised event adds to the window measures, or None if it adds nothing.

    >>> measures_of("add_to_cart", {"price_minor": 1250, "quantity": 2})
    (0, 0, 1, 2500, 0, 0)
    """
    if event_type == "page_view":
        dwell = payload.get("dwell_ms", 0) if payload.get("page_type") == "product" else 0
        return (1, int(dwell), 0, 0, 0, 0)  # type: ignore[call-overload]
    if event_type == "add_to_cart":
        return (0, 0, 1, int(payload["price_minor"]) * int(payload["quantity"]), 0, 0)  # type: ignore[call-overload]
    if event_type == "purchase":
        return (0, 0, 0, 0, 1, int(payload["total_minor"]))  # type: ignore[call-overload]
    return None
