"""Run the compiled patterns over one user's events and timers, and gate the resulting triggers.

Pure: the Flink wrapper passes the user's state, the event (or the watermark) and the profile view;
the engine returns trigger records and the event times it wants to be woken at. Its own state is the
typed part ``UserState.patterns`` (``state/pattern_state.py``), so the user still has one state value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from operators.absence import AbsencePattern, Match, match_id
from operators.events import Event
from operators.pattern_spec import PatternBook, PatternSpec, Step
from operators.profile_fold import ProfileRules, consent_at
from operators.trigger_gate import TriggerGate
from state.pattern_state import TRIGGER_SCHEMA_VERSION, AnchorInfo, PatternState, Trigger, anchor_key
from state.user_state import UserState

__all__ = ["TRIGGER_SCHEMA_VERSION", "Outcome", "PatternEngine", "PatternState", "Trigger"]

CANCEL_MEMORY_MS = 86_400_000   # cancel marks older than this (quiet hours are shorter) cannot matter any more


@dataclass(frozen=True, slots=True)
class Outcome:
    triggers: list[Trigger]
    timers: list[int]
    suppressed: list[tuple[str, str]]   # (pattern, reason)


def _cart_rows(state: UserState) -> AnchorInfo:
    """The cart now, as the anchor keeps it (session start filled in by the caller)."""
    rows = sorted((pid, i.category, i.price_minor, i.quantity) for pid, i in state.cart.items())
    return AnchorInfo(state.sessions.current_start_ms or 0, rows, next((i.currency for i in state.cart.values()), None))


def _cart_snapshot(state: UserState) -> dict[str, Any]:
    return _cart_rows(state).cart_doc()


class PatternEngine:
    def __init__(self, book: PatternBook, max_marks: int = 128, rules: ProfileRules | None = None) -> None:
        self.book = book
        self.rules = rules or ProfileRules()   # consent defaults (judged at match time and at release)
        self.gate = TriggerGate(book.gate.frequency_cap, book.gate.frequency_window_ms,
                                book.gate.quiet_start_hour, book.gate.quiet_end_hour,
                                book.gate.user_cap, book.gate.user_cap_window_ms)
        # Patterns are evaluated, and their matches gated, in the gate's priority order, then in file order.
        rank = {name: i for i, name in enumerate(book.gate.priority)}
        self._ordered = sorted(book.patterns, key=lambda p: rank.get(p.name, len(rank)))
        self._absence = {p.name: AbsencePattern(p.name, lambda e: False, lambda e: False, p.within_ms,
                                                   max_marks)
                         for p in self._ordered if p.kind == "absence"}
        self._escalation_of = {p.of: p for p in book.patterns if p.kind == "escalation"}
        # What drops a trigger deferred by quiet hours before its release: the pattern's cancel steps (an
        # escalation's are those of the pattern it escalates).
        self._own_cancels = {p.name: p.cancel for p in book.patterns if p.cancel}
        self._cancels = dict(self._own_cancels)
        self._cancels |= {p.name: self._cancels[p.of] for p in book.patterns
                          if p.kind == "escalation" and p.of in self._cancels}
        self._marks_of = {p.name: p.of if p.kind == "escalation" and p.of else p.name for p in book.patterns}
        # Per event type, the patterns one of whose cancel steps it could be (most events cancel nothing).
        self._cancels_by_type: dict[str, list[tuple[str, tuple[Step, ...]]]] = {}
        for name, steps in self._own_cancels.items():
            for event_type in {c.event_type for c in steps}:
                self._cancels_by_type.setdefault(event_type, []).append((name, steps))
        self._max_marks = max_marks

    @staticmethod
    def state_of(user: UserState) -> PatternState:
        return user.patterns

    def on_event(self, user: UserState, event: Event, view: Mapping[str, Any]) -> Outcome:
        """After ``event`` was applied to ``user`` (``view`` is the profile now)."""
        ps = user.patterns
        triggers: list[Trigger] = []
        timers: list[int] = []
        suppressed: list[tuple[str, str]] = []
        for spec in self._ordered:
            if spec.kind == "absence":
                assert spec.anchor is not None
                is_anchor = spec.anchor.matches(event, view)
                is_cancel = any(c.matches(event, view) for c in spec.cancel)
                ps.absence[spec.name], deadline = self._absence[spec.name].observe(
                    ps.absence.get(spec.name), event.event_id, event.event_time_ms, is_anchor, is_cancel)
                if deadline is not None:
                    # The new anchor closed the open window it fell in: that anchor's cart goes with it (600
                    # slow add-to-carts once kept 600 cart copies until the timers fired).
                    self._forget_anchors(ps)
                    ps.anchors[anchor_key(spec.name, event.event_id)] = _cart_rows(user)
                    timers.append(deadline)
            elif spec.kind == "threshold":
                assert spec.on is not None
                if not spec.on.matches(event, view):
                    continue
                now_on = all(c.holds(event, view) for c in spec.when)
                was_on = ps.threshold_on.get(spec.name, False)
                ps.threshold_on[spec.name] = now_on
                if now_on and not was_on:
                    tid = match_id(event.user_id, spec.name, event.event_id)
                    cart = _cart_snapshot(user) if spec.include_cart else None
                    self._gate(user, event.user_id, ps, spec, tid, event.event_time_ms, cart, triggers, timers, suppressed)
        self._mark_cancels(ps, event, view, suppressed)
        return Outcome(triggers, timers, suppressed)

    def _mark_cancels(self, ps: PatternState, event: Event, view: Mapping[str, Any],
                      suppressed: list[tuple[str, str]]) -> None:
        """Remember when a cancel step happened, and drop the deferred triggers it cancels."""
        t = event.event_time_ms
        for name, steps in self._cancels_by_type.get(event.event_type, ()):
            if any(c.matches(event, view) for c in steps):
                marks = [m for m in ps.cancel_marks.get(name, ()) if m > t - CANCEL_MEMORY_MS] + [t]
                ps.cancel_marks[name] = marks[-self._max_marks:]
        if ps.deferred:
            self._cancel_deferred(ps, event, view, suppressed)

    def _cancel_deferred(self, ps: PatternState, event: Event, view: Mapping[str, Any],
                         suppressed: list[tuple[str, str]]) -> None:
        """A deferred trigger whose pattern's cancel step happens between its match and its release is dropped
        (e.g. a purchase during quiet hours): its frequency-cap slot stays taken, as for a consent withdrawal."""
        t = event.event_time_ms
        kept = []
        for trigger in ps.deferred:
            steps = self._cancels.get(trigger.pattern, ())
            if steps and trigger.event_time <= t < trigger.emitted_at and any(c.matches(event, view) for c in steps):
                suppressed.append((trigger.pattern, "cancelled_before_release"))
            else:
                kept.append(trigger)
        if len(kept) != len(ps.deferred):
            ps.deferred = kept

    def on_timer(self, user: UserState, user_id: str, watermark_ms: int) -> Outcome:
        ps = user.patterns
        triggers: list[Trigger] = []
        timers: list[int] = []
        suppressed: list[tuple[str, str]] = []
        for name, pattern in self._absence.items():
            state, matches = pattern.on_timer(ps.absence.get(name), user_id, watermark_ms)
            if state is None:
                ps.absence.pop(name, None)
            else:
                ps.absence[name] = state
            for m in matches:
                self._released(user, ps, self.book.by_name(name), m, triggers, timers, suppressed)
            if matches:
                user.version += 1   # the profile changed (stage, abandonment time) without an event
        due = [t for t in ps.deferred if t.emitted_at <= watermark_ms]
        ps.deferred = [t for t in ps.deferred if t.emitted_at > watermark_ms]
        for t in due:
            # Consent is judged again at release: a withdrawal during quiet hours stops the deferred trigger
            # (its frequency-cap slot stays taken, as the gate decided at match time). So is consent at the match
            # time, with what arrived since: a withdrawal of the same instant may have come just after the match.
            if consent_at(user, t.event_time, self.rules) and consent_at(user, t.emitted_at, self.rules):
                triggers.append(t)
            else:
                suppressed.append((t.pattern, "no_consent_at_release"))
        self._forget_anchors(ps)
        return Outcome(triggers, timers, suppressed)

    def _released(self, user: UserState, ps: PatternState, spec: PatternSpec, m: Match, triggers: list[Trigger],
                  timers: list[int], suppressed: list[tuple[str, str]]) -> None:
        info = ps.anchors.pop(anchor_key(spec.name, m.anchor_event_id), None)
        session, cart = (info.session_start_ms, info.cart_doc()) if info is not None else (0, None)
        if spec.include_cart:
            user.last_abandon_ms = max(user.last_abandon_ms or m.deadline_ms, m.deadline_ms)
        escalation = self._escalation_of.get(spec.name)
        if escalation is not None:
            counts = ps.escalations.setdefault(spec.name, {})
            counts[session] = counts.get(session, 0) + 1
            for old in sorted(counts)[:-3]:   # bounded: the last few sessions
                del counts[old]
            if counts[session] == escalation.count:
                spec = escalation
                m = Match(match_id(m.user_id, spec.name, m.anchor_event_id), spec.name, m.user_id,
                          m.anchor_event_id, m.anchor_time_ms, m.deadline_ms)
        self._gate(user, m.user_id, ps, spec, m.match_id, m.deadline_ms, cart if spec.include_cart else None,
                   triggers, timers, suppressed)

    def _gate(self, user: UserState, user_id: str, ps: PatternState, spec: PatternSpec, trigger_id: str, at_ms: int,
              cart: dict[str, Any] | None, triggers: list[Trigger], timers: list[int],
              suppressed: list[tuple[str, str]]) -> None:
        # Consent as of the match time: a timer may fire after later consent events were applied.
        ps.gate.marketing_consent = consent_at(user, at_ms, self.rules)
        if user.models.bot:
            # A user flagged as a bot (rule or model) gets no trigger, whatever produced the match.
            suppressed.append((spec.name, "bot"))
            return
        decision = self.gate.decide(ps.gate, spec.name, at_ms, user.timezone)
        if decision.outcome == "suppressed":
            suppressed.append((spec.name, decision.reason or "suppressed"))
            return
        trigger = Trigger(trigger_id, spec.name, spec.reason, user_id, at_ms, decision.release_at_ms, cart)
        if decision.outcome == "send":
            triggers.append(trigger)
            return
        # Deferred: a cancel step already seen between the match and the release drops it now (its cap slot stays
        # taken, as when it is cancelled later). It may have been read before the watermark made this match.
        marks = ps.cancel_marks.get(self._marks_of.get(spec.name, spec.name), ())
        if any(at_ms <= m < decision.release_at_ms for m in marks):
            suppressed.append((spec.name, "cancelled_before_release"))
            return
        ps.deferred.append(trigger)
        timers.append(decision.release_at_ms)

    @staticmethod
    def _forget_anchors(ps: PatternState) -> None:
        if ps.anchors:
            live = {anchor_key(name, a.anchor_event_id) for name, st in ps.absence.items() for a in st.armed}
            if live != ps.anchors.keys():
                ps.anchors = {k: v for k, v in ps.anchors.items() if k in live}
