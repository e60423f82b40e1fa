"""Sessions from inactivity gaps, with the last N sessions summarised.

A new session starts when an event comes more than ``gap_ms`` after the newest event of the current
session. An out-of-order event within ``gap_ms`` before the current session's start extends it
backwards; one older than that belongs to a session already closed and only counts in totals.
The gap and the number of summaries kept are settings, passed in (not stored per user).

>>> s = Sessions()
>>> opened = [s.observe(t, gap_ms=1_800_000, keep=3) for t in (0, 60_000, 1_860_000, 3_660_001)]
>>> opened   # a gap of exactly 30 min keeps the session; 1 ms more starts a new one
[True, False, False, True]
>>> s.count, s.current_start_ms, [events for _, _, events in s.recent]
(2, 3660001, [3])
"""

from __future__ import annotations

import msgspec


class Sessions(msgspec.Struct, omit_defaults=True,
               rename={"count": "n", "current_start_ms": "s", "current_end_ms": "e", "current_events": "k",
                       "recent": "r"}):
    count: int = 0
    current_start_ms: int | None = None
    current_end_ms: int | None = None
    current_events: int = 0
    recent: list[tuple[int, int, int]] = []    # (start, end, events) of the last closed sessions, oldest first

    def observe(self, t_ms: int, gap_ms: int, keep: int) -> bool:
        """Account one event; True if it opened a new session."""
        if self.current_end_ms is None or t_ms - self.current_end_ms > gap_ms:
            if self.current_start_ms is not None and self.current_end_ms is not None:
                self.recent.append((self.current_start_ms, self.current_end_ms, self.current_events))
                if len(self.recent) > keep:
                    del self.recent[:len(self.recent) - keep]
            self.count += 1
            self.current_start_ms, self.current_end_ms, self.current_events = t_ms, t_ms, 1
            return True
        assert self.current_start_ms is not None
        if t_ms >= self.current_start_ms - gap_ms:
            if t_ms < self.current_start_ms:
                self.current_start_ms = t_ms
            if t_ms > self.current_end_ms:
                self.current_end_ms = t_ms
            self.current_events += 1
        return False

    def current_length_ms(self) -> int:
        if self.current_start_ms is None or self.current_end_ms is None:
            return 0
        return self.current_end_ms - self.current_start_ms

    def is_open(self, now_ms: int, gap_ms: int) -> bool:
        """Whether the current session is still open at ``now_ms`` (watermark)."""
        return self.current_end_ms is not None and now_ms - self.current_end_ms <= gap_ms
