"""The delayed-label join of purchase propensity: a snapshot now, its label up to N minutes later.

At a decision point the job snapshots the user's features (and the score the serving model gave them).
The label is 1 if the user purchases within ``window_ms`` after the snapshot, 0 otherwise:

- a purchase at ``t_p`` labels every pending snapshot with ``t <= t_p <= t + window_ms`` at once;
- a snapshot whose window passed without one is labelled 0 when the watermark reaches its deadline;
- out of order is fine: purchases of the last window are remembered, so a snapshot that arrives after
  its purchase is labelled 1 immediately;
- an erasure request drops everything pending (the examples are personal data).

Pure and time-injected: the Flink wrapper registers a timer at every returned deadline.

>>> j = LabelJoin(window_ms=1_000, max_pending=10)
>>> st = PendingLabels()
>>> j.snapshot(st, "x1", 0, (1.0,), 0.2, 3)
([], 1000)
>>> [(e.example_id, e.label) for e in j.purchase(st, 500)]
[('x1', True)]
>>> j.snapshot(st, "x2", 2_000, (0.0,), 0.1, 3)
([], 3000)
>>> [(e.example_id, e.label) for e in j.release(st, watermark_ms=3_000)]
[('x2', False)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from state.model_state import Pending, PendingLabels


@dataclass(frozen=True, slots=True)
class LabelledExample:
    example_id: str
    t_ms: int
    features: Any
    score: float
    model_version: int
    label: bool
    labelled_at_ms: int


@dataclass(frozen=True, slots=True)
class LabelJoin:
    window_ms: int
    max_pending: int

    def snapshot(self, st: PendingLabels, example_id: str, t_ms: int, features: Any, score: float,
                 model_version: int) -> tuple[list[LabelledExample], int | None]:
        """Add a snapshot. Returns (examples labelled now, deadline to arm a timer for, or None)."""
        if st.purchases and any(t_ms <= p <= t_ms + self.window_ms for p in st.purchases):
            return [LabelledExample(example_id, t_ms, features, score, model_version, True, t_ms)], None
        if len(st.pending) >= self.max_pending:
            # A user in a long session makes many decision points; the oldest snapshots carry the
            # least new information. Dropping is counted, never silent.
            st.pending.pop(0)
            st.dropped += 1
        st.pending.append(Pending(example_id, t_ms, features, score, model_version))
        return [], t_ms + self.window_ms

    def purchase(self, st: PendingLabels, t_ms: int) -> list[LabelledExample]:
        """A purchase at ``t_ms``: positive labels for the snapshots whose window holds it."""
        st.purchases = [p for p in st.purchases if p >= t_ms - self.window_ms] + [t_ms]
        done = [p for p in st.pending if p.t_ms <= t_ms <= p.t_ms + self.window_ms]
        if done:
            st.pending = [p for p in st.pending if not (p.t_ms <= t_ms <= p.t_ms + self.window_ms)]
        return [LabelledExample(p.example_id, p.t_ms, p.features, p.score, p.model_version, True, t_ms) for p in done]

    def release(self, st: PendingLabels, watermark_ms: int) -> list[LabelledExample]:
        """Negative labels for the snapshots whose window closed at or before the watermark."""
        due = [p for p in st.pending if p.t_ms + self.window_ms <= watermark_ms]
        if due:
            st.pending = [p for p in st.pending if p.t_ms + self.window_ms > watermark_ms]
        st.purchases = [p for p in st.purchases if p >= watermark_ms - self.window_ms]
        return [LabelledExample(p.example_id, p.t_ms, p.features, p.score, p.model_version, False, p.t_ms + self.window_ms)
                for p in due]

    @staticmethod
    def erase(st: PendingLabels) -> int:
        """Forget all pending examples (erasure request); returns how many were dropped."""
        n = len(st.pending)
        st.pending.clear()
        st.purchases.clear()
        return n
