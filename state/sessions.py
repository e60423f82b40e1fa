"""Sessions from inactivity gaps, with the last N sessions summarised.

A new session starts when an event comes more than ``gap_ms`` after the newest event of the current
session. An out-of-order event within ``gap_ms`` before the current session's start extends it
backwards; one older than that belongs to a session already closed and only counts in totals.

>>> s = Sessions(gap_ms=1_800_000, keep=3)
>>> opened = [s.observe(t) for t in (0, 60_000, 1_860_000, 3_660_001)]
>>> opened   # a gap of exactly 30 min keeps the session; 1 ms more starts a new one
[True, False, False, True]
>>> s.count, s.current_start_ms, [x.events for x in s.recent]
(2, 3660001, [3])
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from state.compact import compact, rows, unrows


@compact
@dataclass(frozen=True, slots=True)
class SessionSummary:
    start_ms: int
    end_ms: int
    events: int

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms


@compact
@dataclass(slots=True)
class Sessions:
    gap_ms: int
    keep: int
    count: int = 0
    current_start_ms: int | None = None
    current_end_ms: int | None = None
    current_events: int = 0
    recent: deque[SessionSummary] = field(default_factory=deque)

    def flat(self) -> tuple[Any, ...]:
        """Builtins only, for the owner's pickling (``Sessions.from_flat`` rebuilds it)."""
        return (self.gap_ms, self.keep, self.count, self.current_start_ms, self.current_end_ms,
                self.current_events, rows(list(self.recent)))

    @classmethod
    def from_flat(cls, flat: tuple[Any, ...]) -> Sessions:
        *head, recent = flat
        return cls(*head, deque(unrows(SessionSummary, recent)))

    def observe(self, t_ms: int) -> bool:
        """Account one event; True if it opened a new session."""
        if self.current_end_ms is None or t_ms - self.current_end_ms > self.gap_ms:
            if self.current_start_ms is not None and self.current_end_ms is not None:
                self.recent.append(SessionSummary(self.current_start_ms, self.current_end_ms, self.current_events))
                while len(self.recent) > self.keep:
                    self.recent.popleft()
            self.count += 1
            self.current_start_ms, self.current_end_ms, self.current_events = t_ms, t_ms, 1
            return True
        assert self.current_start_ms is not None
        if t_ms >= self.current_start_ms - self.gap_ms:
            self.current_start_ms = min(self.current_start_ms, t_ms)
            self.current_end_ms = max(self.current_end_ms, t_ms)
            self.current_events += 1
        return False

    def current_length_ms(self) -> int:
        if self.current_start_ms is None or self.current_end_ms is None:
            return 0
        return self.current_end_ms - self.current_start_ms

    def is_open(self, now_ms: int) -> bool:
        """Whether the current session is still open at ``now_ms`` (watermark)."""
        return self.current_end_ms is not None and now_ms - self.current_end_ms <= self.gap_ms
