"""Exponentially decayed category affinities, order-independent.

Each category keeps ``score`` valid at a reference time ``ref_ms``. Adding weight ``w`` at time ``t``:
if ``t >= ref``, decay the score to ``t`` and add ``w`` (the reference moves to ``t``); if ``t < ref``
(an out-of-order event), add ``w * 2**(-(ref - t) / half_life)``. Both give the same result as if
events had arrived in time order, up to float rounding. The half-life is a setting, passed in.

>>> a = Affinities()
>>> a.add("shoes", 4.0, 0, half_life_ms=1000); a.add("shoes", 0.0, 1000, half_life_ms=1000)
>>> a.scores(1000, half_life_ms=1000)
{'shoes': 2.0}
>>> b = Affinities()
>>> b.add("shoes", 0.0, 1000, half_life_ms=1000); b.add("shoes", 4.0, 0, half_life_ms=1000)   # other arrival order
>>> b.scores(1000, half_life_ms=1000)
{'shoes': 2.0}
"""

from __future__ import annotations

import msgspec


def _decay(score: float, dt_ms: int, half_life_ms: int) -> float:
    return score * float(2.0 ** (-dt_ms / half_life_ms))


class Affinities(msgspec.Struct, omit_defaults=True, rename={"entries": "e"}):
    entries: dict[str, tuple[float, int]] = {}   # category -> (score, ref_ms)

    def add(self, category: str, weight: float, t_ms: int, half_life_ms: int) -> None:
        score, ref = self.entries.get(category, (0.0, t_ms))
        if t_ms >= ref:
            self.entries[category] = (_decay(score, t_ms - ref, half_life_ms) + weight, t_ms)
        else:
            self.entries[category] = (score + _decay(weight, ref - t_ms, half_life_ms), ref)

    def scores(self, now_ms: int, half_life_ms: int) -> dict[str, float]:
        """Scores decayed to ``now_ms`` (never grown: an entry newer than ``now_ms`` is reported as is)."""
        return {c: _decay(s, max(0, now_ms - ref), half_life_ms) for c, (s, ref) in self.entries.items()}

    def top(self, now_ms: int, n: int, half_life_ms: int) -> list[tuple[str, float]]:
        return sorted(self.scores(now_ms, half_life_ms).items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def prune(self, now_ms: int, min_score: float, keep: int, half_life_ms: int) -> None:
        """Bound memory: keep the ``keep`` strongest categories whose decayed score is at least ``min_score``."""
        kept = [c for c, score in self.top(now_ms, keep, half_life_ms) if score >= min_score]
        if len(kept) != len(self.entries):
            self.entries = {c: self.entries[c] for c in kept}
