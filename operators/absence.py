"""Absence patterns in event time: an anchor event, then no cancelling event within a deadline.

Cart abandonment is ``anchor = add_to_cart``, ``cancel = purchase or emptied cart``, ``within = 30 min``.
The core is pure: ``observe`` takes the state and an event's time and verdicts (anchor, cancel) and returns
the new state and a deadline to be woken at (``notify_at``); ``on_timer`` takes the state and the watermark and returns the matches. The Flink wrapper registers that deadline
as an event-time timer, so the match fires when the watermark passes it, even if the user is silent.

Semantics, in event time and independent of arrival order: an anchor ``a`` matches when no other
anchor and no cancelling event has a time in ``[a, a + within]`` (a later anchor supersedes it: the
newest cart counts). A match is released when the watermark reaches ``a + within``. Events up to the
watermark bound may arrive in any order; the result is the same, because every decision waits for the
watermark. The contract: arrival disorder stays below ``within`` (the job's lateness bound is seconds,
``within`` minutes). Anchor and cancel times are remembered for a while, so an event that overtakes another still counts.
The match id is derived from user, pattern and anchor event, so a replay yields the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from state.pattern_state import AbsenceState, Armed


@dataclass(frozen=True, slots=True)
class Match:
    match_id: str
    pattern: str
    user_id: str
    anchor_event_id: str
    anchor_time_ms: int
    deadline_ms: int


def match_id(user_id: str, pattern: str, anchor_event_id: str) -> str:
    """Deterministic id: consumers de-duplicate on it.

    >>> match_id("u1", "cart_abandonment", "e-7")
    '91284a9fd63190880b01d5f6'
    """
    return hashlib.sha256(f"{user_id}\x1f{pattern}\x1f{anchor_event_id}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class AbsencePattern:
    """The timing of one absence pattern. Whether an event anchors or cancels is decided by the caller
    (``PatternEngine``: steps of a pattern file, consent and rule state), and given to ``observe``."""

    name: str
    within_ms: int
    max_marks: int = 128   # blockers kept per user (limits.max_pattern_marks): the newest

    def observe(self, state: AbsenceState | None, event_id: str, t: int, is_anchor: bool,
                is_cancel: bool) -> tuple[AbsenceState, int | None]:
        """Account one event at ``t`` that anchors and/or cancels; returns the state and a deadline to be
        notified at (or None)."""
        st = state if state is not None else AbsenceState()
        if not (is_anchor or is_cancel):
            return st, None
        # Any anchor or cancel at t closes every open window that contains t (a newer cart supersedes).
        st.armed = [a for a in st.armed if not a.anchor_time_ms <= t <= a.deadline_ms]
        blocked = any(t <= b <= t + self.within_ms for b in st.blockers)
        # Bounded memory: only blockers that a not-yet-late anchor could still meet are kept.
        st.blockers = [b for b in st.blockers if b >= t - 2 * self.within_ms]
        st.blockers.append(t)
        if len(st.blockers) > self.max_marks:   # a click storm: the oldest marks go first
            st.blockers.sort()
            del st.blockers[:len(st.blockers) - self.max_marks]
        if is_anchor and not blocked:
            st.armed.append(Armed(event_id, t, t + self.within_ms))
            if len(st.armed) > 1:
                st.armed.sort(key=lambda a: a.anchor_time_ms)
            return st, t + self.within_ms
        return st, None

    def on_timer(self, state: AbsenceState | None, user_id: str, watermark_ms: int) -> tuple[AbsenceState | None, list[Match]]:
        """Release every open anchor whose deadline the watermark has reached; forget old cancels."""
        if state is None:
            return None, []
        due = [a for a in state.armed if a.deadline_ms <= watermark_ms]
        state.armed = [a for a in state.armed if a.deadline_ms > watermark_ms]
        # A blocker older than the oldest anchor that can still arrive (watermark - within) cannot matter.
        state.blockers = [b for b in state.blockers if b >= watermark_ms - self.within_ms]
        return (state if state.armed or state.blockers else None), [self._match(user_id, a) for a in due]

    def _match(self, user_id: str, armed: Armed) -> Match:
        return Match(match_id(user_id, self.name, armed.anchor_event_id), self.name, user_id,
                     armed.anchor_event_id, armed.anchor_time_ms, armed.deadline_ms)
