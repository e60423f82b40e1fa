"""Run the compiled patterns over one user's events and timers, and gate the resulting triggers.

Pure: the Flink wrapper passes the user's state, the event (or the watermark) and the profile view;
the engine returns trigger records and the event times it wants to be woken at. Its own state is the
typed part ``UserState.patterns`` (``state/pattern_state.py``), so the user still has one state value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.absence import AbsencePattern, Match, match_id
from operators.events import Event
from operators.experiments import ExperimentOutcome, ExperimentSpec, assign
from operators.label_join import LabelJoin, LabelledExample
from operators.pattern_spec import PatternBook, PatternSpec, Step
from operators.profile_fold import ProfileRules, consent_at
from operators.reasons import SuppressReason
from operators.trigger_gate import TriggerGate
from state.pattern_state import TRIGGER_SCHEMA_VERSION, AnchorInfo, ExperimentState, PatternState, Trigger, anchor_key
from state.user_state import UserState

__all__ = ["TRIGGER_SCHEMA_VERSION", "Outcome", "PatternEngine", "PatternState", "Trigger"]

CANCEL_MEMORY_MS = 86_400_000   # cancel marks older than this (quiet hours are shorter) cannot matter any more
MAX_PENDING_EXPOSURES = 20      # per user and experiment (the frequency cap keeps far fewer)


@dataclass(frozen=True, slots=True)
class Outcome:
    triggers: list[Trigger]
    timers: list[int]
    suppressed: list[tuple[str, SuppressReason]]   # (pattern, reason)
    experiments: list[ExperimentOutcome] = field(default_factory=list)   # exposures whose outcome is now known


def _cart_rows(state: UserState) -> AnchorInfo:
    """The cart now, as the anchor keeps it (session start filled in by the caller)."""
    rows = sorted((pid, i.category, i.price_minor, i.quantity) for pid, i in state.cart.items())
    return AnchorInfo(state.sessions.current_start_ms or 0, rows, next((i.currency for i in state.cart.values()), None))


def _cart_snapshot(state: UserState) -> dict[str, Any]:
    return _cart_rows(state).cart_doc()


class PatternEngine:
    def __init__(self, book: PatternBook, max_marks: int = 128, rules: ProfileRules | None = None,
                 history_before_ms: int = 0, history_out: bool = False) -> None:
        """``history_before_ms``: matches decided at an event time before it are history, never sent (the gate).
        ``history_out``: such a match is still made a trigger, marked ``history``, for the dry-run topic."""
        self.book = book
        self.history_out = history_out
        self.rules = rules or ProfileRules()   # consent defaults (judged at match time and at release)
        self.gate = TriggerGate(book.gate.frequency_cap, book.gate.frequency_window_ms,
                                book.gate.quiet_start_hour, book.gate.quiet_end_hour,
                                book.gate.user_cap, book.gate.user_cap_window_ms, history_before_ms)
        # Patterns are evaluated, and their matches gated, in the gate's priority order, then in file order.
        rank = {name: i for i, name in enumerate(book.gate.priority)}
        self._ordered = sorted(book.patterns, key=lambda p: rank.get(p.name, len(rank)))
        self._absence = {p.name: AbsencePattern(p.name, p.within_ms, max_marks)
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
        self._specs = {p.name: p for p in book.patterns}
        self._experiments: dict[str, ExperimentSpec] = {p.experiment.name: p.experiment for p in book.patterns
                                                        if p.experiment is not None}
        self._joins = {name: LabelJoin(x.window_ms, MAX_PENDING_EXPOSURES) for name, x in self._experiments.items()}
        self._outcome_types = {x.outcome.event_type for x in self._experiments.values()}
        # Experiment -> variant -> (exposed, converted) so far, for Thompson sampling: set by the caller (the job
        # reads the tallies from Redis as it reads the served models).
        self.experiment_stats: dict[str, dict[str, tuple[int, int]]] = {}

    def on_event(self, user: UserState, event: Event, view: Mapping[str, Any]) -> Outcome:
        """After ``event`` was applied to ``user`` (``view`` is the profile now)."""
        ps = user.patterns
        triggers: list[Trigger] = []
        timers: list[int] = []
        outcomes: list[ExperimentOutcome] = []
        suppressed = self.reconcile(ps) if ps.rules_version != self.book.version else []
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
                    self._gate(user, event.user_id, ps, spec, tid, event.event_time_ms, cart, triggers, timers, suppressed,
                               outcomes)
        self._mark_cancels(ps, event, view, suppressed)
        if event.event_type in self._outcome_types:
            outcomes += self._converted(ps, event, view)
        return Outcome(triggers, timers, suppressed, outcomes)

    def _converted(self, ps: PatternState, event: Event, view: Mapping[str, Any]) -> list[ExperimentOutcome]:
        """An outcome event converts the exposures whose window holds it, and is remembered for one window: the
        watermark may release a match after the events that followed it were read (an exposure opened later
        looks back)."""
        out: list[ExperimentOutcome] = []
        for name, spec in self._experiments.items():
            if spec.outcome.matches(event, view):
                xs = ps.experiments.get(name)
                if xs is None:   # not assigned yet: the variant is drawn at the first trigger
                    xs = ps.experiments[name] = ExperimentState("")
                out += [_outcome(name, x) for x in self._joins[name].purchase(xs.outcomes, event.event_time_ms)]
        return out

    def _mark_cancels(self, ps: PatternState, event: Event, view: Mapping[str, Any],
                      suppressed: list[tuple[str, SuppressReason]]) -> None:
        """Remember when a cancel step happened, and drop the deferred triggers it cancels."""
        t = event.event_time_ms
        for name, steps in self._cancels_by_type.get(event.event_type, ()):
            if any(c.matches(event, view) for c in steps):
                marks = [m for m in ps.cancel_marks.get(name, ()) if m > t - CANCEL_MEMORY_MS] + [t]
                ps.cancel_marks[name] = marks[-self._max_marks:]
        if ps.deferred:
            self._cancel_deferred(ps, event, view, suppressed)

    def _cancel_deferred(self, ps: PatternState, event: Event, view: Mapping[str, Any],
                         suppressed: list[tuple[str, SuppressReason]]) -> None:
        """A deferred trigger whose pattern's cancel step happens between its match and its release is dropped
        (e.g. a purchase during quiet hours): its frequency-cap slot stays taken, as for a consent withdrawal."""
        t = event.event_time_ms
        kept = []
        for trigger in ps.deferred:
            steps = self._cancels.get(trigger.pattern, ())
            if steps and trigger.event_time <= t < trigger.emitted_at and any(c.matches(event, view) for c in steps):
                suppressed.append((trigger.pattern, SuppressReason.CANCELLED_BEFORE_RELEASE))
            else:
                kept.append(trigger)
        if len(kept) != len(ps.deferred):
            ps.deferred = kept

    def on_timer(self, user: UserState, user_id: str, watermark_ms: int) -> Outcome:
        ps = user.patterns
        triggers: list[Trigger] = []
        timers: list[int] = []
        outcomes: list[ExperimentOutcome] = []
        suppressed = self.reconcile(ps) if ps.rules_version != self.book.version else []
        released = []
        for name, pattern in self._absence.items():
            state, matches = pattern.on_timer(ps.absence.get(name), user_id, watermark_ms)
            if state is None:
                ps.absence.pop(name, None)
            else:
                ps.absence[name] = state
            if matches:
                user.version += 1   # the profile changed (stage, abandonment time) without an event
                released.append((name, matches))
        # Decided once every version step is taken: the triggers name the version this timer writes.
        for name, matches in released:
            for m in matches:
                self._released(user, ps, self._specs[name], m, triggers, timers, suppressed, outcomes)
        due = [t for t in ps.deferred if t.emitted_at <= watermark_ms]
        ps.deferred = [t for t in ps.deferred if t.emitted_at > watermark_ms]
        for t in due:
            # Consent is judged again at release: a withdrawal during quiet hours stops the deferred trigger
            # (its frequency-cap slot stays taken, as the gate decided at match time). So is consent at the match
            # time, with what arrived since: a withdrawal of the same instant may have come just after the match.
            if consent_at(user, t.event_time, self.rules) and consent_at(user, t.emitted_at, self.rules):
                self._emit(ps, t, triggers, timers, suppressed, outcomes)
            else:
                suppressed.append((t.pattern, SuppressReason.NO_CONSENT_AT_RELEASE))
        self._forget_anchors(ps)
        if ps.experiments:
            self._resolve(ps, watermark_ms, outcomes)
        return Outcome(triggers, timers, suppressed, outcomes)

    def _resolve(self, ps: PatternState, watermark_ms: int, outcomes: list[ExperimentOutcome]) -> None:
        """Exposures whose outcome window closed without the outcome: not converted."""
        for name, xs in ps.experiments.items():
            join = self._joins.get(name)
            if join is None:   # the experiment left the rule set: its pending exposures are not judged
                xs.outcomes.pending, xs.outcomes.purchases = [], []
                continue
            if xs.outcomes.pending or xs.outcomes.purchases:
                outcomes += [_outcome(name, x) for x in join.release(xs.outcomes, watermark_ms)]

    def _released(self, user: UserState, ps: PatternState, spec: PatternSpec, m: Match, triggers: list[Trigger],
                  timers: list[int], suppressed: list[tuple[str, SuppressReason]], outcomes: list[ExperimentOutcome]) -> None:
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
                   triggers, timers, suppressed, outcomes)

    def _gate(self, user: UserState, user_id: str, ps: PatternState, spec: PatternSpec, trigger_id: str, at_ms: int,
              cart: dict[str, Any] | None, triggers: list[Trigger], timers: list[int],
              suppressed: list[tuple[str, SuppressReason]], outcomes: list[ExperimentOutcome]) -> None:
        # Consent as of the match time: a timer may fire after later consent events were applied.
        ps.gate.marketing_consent = consent_at(user, at_ms, self.rules)
        if user.models.bot:
            # A user flagged as a bot (rule or model) gets no trigger, whatever produced the match.
            suppressed.append((spec.name, SuppressReason.BOT))
            return
        decision = self.gate.decide(ps.gate, spec.name, at_ms, user.timezone)
        if decision.outcome == "suppressed":
            suppressed.append((spec.name, decision.reason or SuppressReason.NO_CONSENT))
            if decision.reason is SuppressReason.HISTORY and self.history_out:
                # What history would have sent had it been live: before consent and caps, as the gate judged it.
                triggers.append(Trigger(trigger_id, spec.name, spec.reason, user_id, at_ms, at_ms, cart,
                                        self.book.version, spec.version, profile_version=user.version, history=True))
            return
        experiment, variant = None, None
        if spec.experiment is not None:
            experiment, variant = spec.experiment.name, self._variant(ps, user_id, spec.experiment)
        trigger = Trigger(trigger_id, spec.name, spec.reason, user_id, at_ms, decision.release_at_ms, cart,
                          self.book.version, spec.version, experiment, variant, profile_version=user.version)
        if decision.outcome == "send":
            self._emit(ps, trigger, triggers, timers, suppressed, outcomes)
            return
        # Deferred: a cancel step already seen between the match and the release drops it now (its cap slot stays
        # taken, as when it is cancelled later). It may have been read before the watermark made this match.
        marks = ps.cancel_marks.get(self._marks_of.get(spec.name, spec.name), ())
        if any(at_ms <= m < decision.release_at_ms for m in marks):
            suppressed.append((spec.name, SuppressReason.CANCELLED_BEFORE_RELEASE))
            return
        ps.deferred.append(trigger)
        timers.append(decision.release_at_ms)

    def experiment(self, name: str) -> ExperimentSpec | None:
        return self._experiments.get(name)

    def thompson_experiments(self) -> list[str]:
        return [name for name, x in self._experiments.items() if x.policy == "thompson"]

    def _variant(self, ps: PatternState, user_id: str, spec: ExperimentSpec) -> str:
        """The user's variant: assigned at their first trigger of the experiment, then kept (sticky)."""
        xs = ps.experiments.get(spec.name)
        if xs is None or xs.variant not in {v for v, _ in spec.variants}:   # new, or the variant left the rule set
            variant = assign(spec, user_id, self.experiment_stats.get(spec.name, {}))
            xs = ps.experiments[spec.name] = ExperimentState(variant, xs.outcomes) if xs else ExperimentState(variant)
        return xs.variant

    def _emit(self, ps: PatternState, trigger: Trigger, triggers: list[Trigger], timers: list[int],
              suppressed: list[tuple[str, SuppressReason]], outcomes: list[ExperimentOutcome]) -> None:
        """A trigger goes out now (or, for an experiment's holdout, is counted as if it had) and its outcome
        window opens: the delayed-label join, with the trigger id as the example id."""
        if trigger.experiment is not None and trigger.experiment in self._joins:
            xs = ps.experiments[trigger.experiment]
            done, deadline = self._joins[trigger.experiment].snapshot(
                xs.outcomes, trigger.trigger_id, trigger.emitted_at, (trigger.variant,), 0.0, trigger.rules_version)
            outcomes += [_outcome(trigger.experiment, x) for x in done]
            if deadline is not None:
                timers.append(deadline)
            spec = self._experiments[trigger.experiment]
            if trigger.variant == spec.holdout:
                suppressed.append((trigger.pattern, SuppressReason.EXPERIMENT_HOLDOUT))
                return
        triggers.append(trigger)

    def deadlines(self, ps: PatternState) -> list[int]:
        """Every time a timer must wake the user for the patterns: open absence matches, deferred triggers and the
        experiments' outcome windows (``Personalizer.deadlines``)."""
        out = [a.deadline_ms for st in ps.absence.values() for a in st.armed]
        out += [t.emitted_at for t in ps.deferred]
        for name, xs in ps.experiments.items():
            join = self._joins.get(name)
            if join is not None:
                out += [p.t_ms + join.window_ms for p in xs.outcomes.pending]
        return out

    def reconcile(self, ps: PatternState) -> list[tuple[str, SuppressReason]]:
        """Bring a user's pattern state, built under an older rule set, up to this one (docs/behaviour.md "Rules at runtime").

        The state of a removed pattern goes, and so does that of a pattern whose state-defining part changed since
        (its ``state_version`` is newer than the state's rule set); each pending match dropped is returned as
        ``(pattern, "pattern_removed" | "pattern_reset")`` for counting. Triggers already deferred by quiet hours
        passed the gate and are still released. The frequency-cap history of a pattern that stays is kept: it
        records messages sent. A state from before the registry (version 0) loses only removed patterns.
        """
        since = ps.rules_version
        dropped: list[tuple[str, SuppressReason]] = []
        names = ps.absence.keys() | ps.threshold_on.keys() | ps.escalations.keys() | ps.cancel_marks.keys()
        for name in names | ps.gate.sent.keys():
            spec = self._specs.get(name)
            if spec is None:
                reason = SuppressReason.PATTERN_REMOVED
                ps.gate.sent.pop(name, None)
            elif since and spec.state_version > since and name in names:
                reason = SuppressReason.PATTERN_RESET
            else:
                continue
            absence = ps.absence.pop(name, None)
            if absence is not None:
                dropped += [(name, reason)] * len(absence.armed)
            ps.threshold_on.pop(name, None)
            ps.escalations.pop(name, None)
            ps.cancel_marks.pop(name, None)
        ps.rules_version = self.book.version
        if dropped:
            self._forget_anchors(ps)
        return dropped

    @staticmethod
    def _forget_anchors(ps: PatternState) -> None:
        if ps.anchors:
            live = {anchor_key(name, a.anchor_event_id) for name, st in ps.absence.items() for a in st.armed}
            if live != ps.anchors.keys():
                ps.anchors = {k: v for k, v in ps.anchors.items() if k in live}


def _outcome(experiment: str, x: LabelledExample) -> ExperimentOutcome:
    return ExperimentOutcome(experiment, str(x.features[0]), x.example_id, x.t_ms, x.label)
