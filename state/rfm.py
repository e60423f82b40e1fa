"""Recency, frequency and monetary value over 30 and 90 days, from purchases kept per UTC day.

Purchases are aggregated into day buckets (at most 90 kept), so memory is bounded whatever a user buys.
"The last 30 days" at ``now`` are the day of ``now`` and the 29 before it. Each of R, F and M scores 1..5
against thresholds (config); the RFM score is their sum (3..15).

>>> r = Rfm()
>>> r.add_purchase(0, 5_000); r.add_purchase(86_400_000 * 40, 2_000)
>>> v = r.values(now_ms=86_400_000 * 45)
>>> v.recency_days, v.frequency_30d, v.frequency_90d, v.monetary_90d
(5, 1, 2, 7000)
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class RfmValues:
    recency_days: int | None      # whole days since the last purchase; None if none in 90 days
    frequency_30d: int
    frequency_90d: int
    monetary_30d: int              # minor units
    monetary_90d: int


@dataclass(frozen=True, slots=True)
class RfmThresholds:
    """Ascending cut points: a value at or past the i-th cut scores i+2 (recency: at or below)."""

    recency_days: tuple[int, int, int, int] = (60, 30, 14, 3)
    frequency_90d: tuple[int, int, int, int] = (1, 2, 4, 8)
    monetary_90d: tuple[int, int, int, int] = (2_000, 10_000, 50_000, 200_000)


class Rfm(msgspec.Struct, omit_defaults=True, rename={"days": "d"}):
    days: dict[int, list[int]] = {}  # UTC day number -> [count, revenue_minor]

    def add_purchase(self, t_ms: int, revenue_minor: int) -> None:
        day = t_ms // DAY_MS
        entry = self.days.setdefault(day, [0, 0])
        entry[0] += 1
        entry[1] += revenue_minor
        newest = max(self.days)
        for old in [d for d in self.days if d <= newest - 90]:
            del self.days[old]

    def values(self, now_ms: int) -> RfmValues:
        today = now_ms // DAY_MS
        f30 = f90 = m30 = m90 = 0
        last: int | None = None
        for day, (count, revenue) in self.days.items():
            if today - 90 < day <= today:
                f90, m90 = f90 + count, m90 + revenue
                last = day if last is None else max(last, day)
                if day > today - 30:
                    f30, m30 = f30 + count, m30 + revenue
        return RfmValues(None if last is None else today - last, f30, f90, m30, m90)


def _grade(value: int, cuts: tuple[int, ...], lower_is_better: bool = False) -> int:
    if lower_is_better:
        return 1 + sum(1 for c in cuts if value <= c)
    return 1 + sum(1 for c in cuts if value >= c)


def rfm_score(v: RfmValues, t: RfmThresholds) -> tuple[int, int, int, int]:
    """(R, F, M, R+F+M); a user with no purchase in 90 days scores (1, 1, 1, 3).

    >>> rfm_score(RfmValues(2, 3, 9, 10, 250_000), RfmThresholds())
    (5, 5, 5, 15)
    """
    r = 1 if v.recency_days is None else _grade(v.recency_days, t.recency_days, lower_is_better=True)
    f = _grade(v.frequency_90d, t.frequency_90d)
    m = _grade(v.monetary_90d, t.monetary_90d)
    return r, f, m, r + f + m
