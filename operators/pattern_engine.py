"""Run the compiled patterns over one user's events and timers, and gate the resulting triggers.

Pure: the Flink wrapper passes the user's state, the event (or the watermark) and the profile view;
the engine returns trigger records and the event times it wants to be woken at. Its own state lives
in ``UserState.extra["patterns"]`` so the user still has one state value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from operators.absence import AbsencePattern, AbsenceState, Armed, Match, match_id
from operators.events import Event
from operators.pattern_spec import PatternBook, PatternSpec
from operators.trigger_gate import GateState, TriggerGate
from state.compact import compact, row, rows, unrows
from state.profile import UserState, consent_at, owned

TRIGGER_SCHEMA_VERSION = 1


@compact
@dataclass(frozen=True, slots=True)
class Trigger:
    trigger_id: str
    pattern: str
    reason: str
    user_id: str
    event_time: int
    emitted_at: int
    cart: dict[str, Any] | None = None

    def to_json(self) -> str:
        doc: dict[str, Any] = {"schema_version": TRIGGER_SCHEMA_VERSION, "trigger_id": self.trigger_id,
                               "pattern": self.pattern, "reason": self.reason, "user_id": self.user_id,
                               "event_time": self.event_time, "emitted_at": self.emitted_at}
        if self.cart is not None:
            doc["cart"] = self.cart
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


@dataclass(slots=True)
class PatternState:
    absence: dict[str, AbsenceState] = field(default_factory=dict)
    threshold_on: dict[str, bool] = field(default_factory=dict)
    anchor_info: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)  # (pattern, anchor id) -> (session, cart)
    escalations: dict[str, dict[int, int]] = field(default_factory=dict)  # pattern -> session start -> matches
    gate: GateState = field(default_factory=GateState)
    deferred: list[Trigger] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled with the user's state on every event: builtins only (see state/compact.py).
        absence = {name: (rows(a.armed), a.blockers) for name, a in self.absence.items()}
        return _pattern_state, (absence, self.threshold_on, self.anchor_info, self.escalations, row(self.gate),
                                rows(self.deferred))


def _pattern_state(absence: dict[str, tuple[list[tuple[Any, ...]], list[int]]], threshold_on: dict[str, bool],
                   anchor_info: dict[tuple[str, str], tuple[int, dict[str, Any]]],
                   escalations: dict[str, dict[int, int]], gate: tuple[Any, ...],
                   deferred: list[tuple[Any, ...]]) -> PatternState:
    return PatternState({name: AbsenceState(unrows(Armed, armed), blockers) for name, (armed, blockers) in absence.items()},
                        threshold_on, anchor_info, escalations, GateState(*gate), unrows(Trigger, deferred))


@compact
@dataclass(frozen=True, slots=True)
class Outcome:
    triggers: list[Trigger]
    timers: list[int]
    suppressed: list[tuple[str, str]]   # (pattern, reason)


def _cart_snapshot(state: UserState) -> dict[str, Any]:
    items = [{k: i[k] for k in ("product_id", "category", "price_minor", "quantity")} for i in state.cart.values()]
    currency = next((i["currency"] for i in state.cart.values()), None)
    return {"items": sorted(items, key=lambda i: i["product_id"]),
            "value_minor": sum(i["price_minor"] * i["quantity"] for i in items), "currency": currency}


class PatternEngine:
    def __init__(self, book: PatternBook) -> None:
        self.book = book
        self.gate = TriggerGate(book.gate.frequency_cap, book.gate.frequency_window_ms,
                                book.gate.quiet_start_hour, book.gate.quiet_end_hour)
        self._absence = {p.name: AbsencePattern(p.name, lambda e: False, lambda e: False, p.within_ms)
                         for p in book.patterns if p.kind == "absence"}
        self._escalation_of = {p.of: p for p in book.patterns if p.kind == "escalation"}

    @staticmethod
    def state_of(user: UserState) -> PatternState:
        return owned(user, "patterns", PatternState)

    def on_event(self, user: UserState, event: Event, view: dict[str, Any]) -> Outcome:
        """After ``event`` was applied to ``user`` (``view`` is the profile now)."""
        ps = self.state_of(user)
        triggers: list[Trigger] = []
        timers: list[int] = []
        suppressed: list[tuple[str, str]] = []
        for spec in self.book.patterns:
            if spec.kind == "absence":
                assert spec.anchor is not None
                is_anchor = spec.anchor.matches(event, view)
                is_cancel = any(c.matches(event, view) for c in spec.cancel)
                ps.absence[spec.name], deadline = self._absence[spec.name].observe(
                    ps.absence.get(spec.name), event.event_id, event.event_time_ms, is_anchor, is_cancel)
                if deadline is not None:
                    assert user.sessions is not None
                    ps.anchor_info[(spec.name, event.event_id)] = (user.sessions.current_start_ms or 0, _cart_snapshot(user))
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
        return Outcome(triggers, timers, suppressed)

    def on_timer(self, user: UserState, user_id: str, watermark_ms: int) -> Outcome:
        ps = self.state_of(user)
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
        triggers.extend(due)
        self._forget_anchors(ps)
        return Outcome(triggers, timers, suppressed)

    def _released(self, user: UserState, ps: PatternState, spec: PatternSpec, m: Match, triggers: list[Trigger],
                  timers: list[int], suppressed: list[tuple[str, str]]) -> None:
        session, cart = ps.anchor_info.pop((spec.name, m.anchor_event_id), (0, None))
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
        ps.gate.marketing_consent = consent_at(user, at_ms)
        if getattr(user.extra.get("models"), "bot", False):
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
        else:
            ps.deferred.append(trigger)
            timers.append(decision.release_at_ms)

    @staticmethod
    def _forget_anchors(ps: PatternState) -> None:
        live = {(name, a.anchor_event_id) for name, st in ps.absence.items() for a in st.armed}
        ps.anchor_info = {k: v for k, v in ps.anchor_info.items() if k in live}
