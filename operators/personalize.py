"""The per-event core: one user's state and one event (or timer) in, a typed ``Step`` out.

Every caller runs the same sequence through this class: the Flink function in ``jobs/personalization.py``
(which only loads and saves state, registers timers and emits), the logic-only loop and the plain-Python
baseline of the benchmark (``persona/replay.py``), and ``persona evaluate``. Nothing here does I/O or reads
a clock: time comes in with the event and the timer.

Per event: lateness (a ``late_event`` dead letter), the profile fold, the models (scores at decision
points, delayed-label examples), the patterns (triggers through the gate). Per timer: label deadlines
and pattern releases.

>>> from operators.events import Event
>>> from operators.model_scoring import ServedModels
>>> from operators.pattern_spec import load_patterns
>>> core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5)
>>> step = core.on_event(None, Event("e1", "add_to_cart", "u1", 1_793_620_800_000, None, {"device": "desktop"},
...     {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 1, "currency": "EUR"}), ServedModels())
>>> step.state.version, step.write_profile, sorted(step.timers)[0] - 1_793_620_800_000
(1, True, 1800000)
>>> release = core.on_timer(step.state, "u1", 1_793_620_800_000 + 1_800_000)
>>> [t.pattern for t in release.triggers], release.write_profile
(['cart_abandonment'], True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from operators.audit import AuditEntry
from operators.co_occurrence import ItemSignal, RecommendRules, remember, touches
from operators.consent import ANALYTICS, PERSONALIZATION, PURPOSES
from operators.events import Event, Rejection
from operators.experiments import ExperimentOutcome
from operators.model_scoring import Example, ModelRules, ModelStep, ServedModels, bot_tally
from operators.pattern_engine import PatternEngine, Trigger
from operators.pattern_spec import PatternBook
from operators.profile_fold import (
    ProfileRules,
    ProfileView,
    apply_event,
    consent_log_of,
    has_consent,
    is_late,
    profile_record,
    profile_sets,
)
from operators.reasons import Dropped, RejectReason, SuppressReason
from state.item_state import RecentItems
from state.model_state import ModelOutputs
from state.user_state import UserState

DEFAULT_MODEL_RULES = ModelRules(label_window_ms=1_800_000, max_pending=20, bot_threshold=0.95,
                                 bot_rule_events_per_min=30, bot_rule_min_events=20, bot_min_events=10,
                                 score_every=5)


@dataclass(slots=True)
class Step:
    """What one event or timer did to one user, for the caller to carry out."""

    state: UserState | None                 # the user's state after the step
    store: bool = False                     # the state changed: write it back
    write_profile: bool = False             # the profile changed: queue a Redis write of this version
    erase: bool = False                     # erasure: delete the user's Redis profile and memberships first
    dead_letter: Rejection | None = None    # the event was refused (late); the state is unchanged
    examples: Sequence[Example] = ()
    triggers: Sequence[Trigger] = ()
    timers: Sequence[int] = ()                       # event times to be woken at
    suppressed: Sequence[tuple[str, SuppressReason]] = ()   # (pattern, reason)
    bot_flagged: bool = False                        # the user became a bot at this step
    bot_counts: Sequence[tuple[str, str]] = ()       # live bot counters to move, (group, name): ``bot_tally``
    duplicate: bool = False                          # an event id (or order id) seen before: nothing changed
    dropped: Sequence[Dropped] = ()                  # what a limit kept out (docs/contract.md "Limits"), for counting
    audit: AuditEntry | None = None                  # a consent change or an erasure, for the audit topic
    experiments: Sequence[ExperimentOutcome] = ()    # resolved exposures of experiments (docs/behaviour.md "Experiments")
    item_signals: Sequence[ItemSignal] = ()          # for the item operator (operators/co_occurrence.py)
    failed: bool = False                             # an exception: ``state`` is None and the caller's copy may be
                                                     # half-updated, so it reloads the last stored state


def id_hash(text: str) -> int:
    """A stable 64-bit hash of an id (Python's ``hash`` changes with every process), for de-duplication."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _remember(seen: list[int], h: int, keep: int) -> None:
    seen.append(h)
    if len(seen) > keep:
        del seen[:len(seen) - keep]


class Personalizer:
    def __init__(self, profile_rules: ProfileRules, model_rules: ModelRules, book: PatternBook, segments: int,
                 recommend: RecommendRules | None = None, history_before_ms: int = 0, history_out: bool = False) -> None:
        """``recommend``: the recommender's rules; None learns no item signals. ``history_before_ms``: matches decided
        at an event time before it are history (loaded by ``persona backfill``), suppressed and never sent;
        ``history_out``: they still come out as triggers marked ``history``, for the dry-run topic."""
        self.rules = profile_rules
        self.recommend = recommend
        self.models = ModelStep(model_rules)
        self.engine = PatternEngine(book, profile_rules.max_pattern_marks, profile_rules, history_before_ms, history_out)
        self.memberships_known = profile_sets(segments)   # every Redis set a user can be in

    def use_rules(self, book: PatternBook) -> None:
        """Switch to another rule set (docs/behaviour.md "Rules at runtime"): each user's pattern state is reconciled with
        it at their next event or timer (``PatternEngine.reconcile``)."""
        stats = self.engine.experiment_stats
        self.engine = PatternEngine(book, self.rules.max_pattern_marks, self.rules, self.engine.gate.history_before_ms,
                                    self.engine.history_out)
        self.engine.experiment_stats = stats

    def on_event(self, state: UserState | None, event: Event, served: ServedModels) -> Step:
        """Never raises: an exception becomes a ``processing_error`` dead letter (a bug must not stop the stream)."""
        try:
            return self._on_event(state, event, served)
        except Exception as e:   # noqa: BLE001 - containment is the point; the class and message travel on
            return _failed(e)

    def on_timer(self, state: UserState | None, user_id: str, timestamp_ms: int) -> Step:
        """The watermark reached ``timestamp_ms``: label deadlines pass, absence matches and deferred triggers release.

        Never raises: a failed timer returns ``failed`` with a ``processing_error`` rejection for the caller to count.
        """
        try:
            return self._on_timer(state, user_id, timestamp_ms)
        except Exception as e:   # noqa: BLE001 - as on_event
            return _failed(e)

    def _on_event(self, state: UserState | None, event: Event, served: ServedModels) -> Step:
        rules = self.rules
        event_hash = id_hash(event.event_id)
        order_hash = id_hash(event.payload["order_id"]) if event.event_type == "purchase" else None
        if state is not None and (event_hash in state.seen_events or order_hash in state.seen_orders):
            return Step(state, duplicate=True)
        # An erasure request is never late: whatever its event time, it is applied when it arrives.
        if event.event_type != "erasure_request" and is_late(state, event, rules):
            assert state is not None
            return Step(state, dead_letter=Rejection(
                RejectReason.LATE_EVENT, f"event_time {event.event_time_ms} is more than {self.rules.allowed_lateness_ms} ms "
                f"older than the user's newest event ({state.newest_event_ms})", "event_time"))
        kind = event.event_type
        if kind == "erasure_request":
            return self._erase(state, event, event_hash)
        before = pending_counts(state) if kind == "consent" and state is not None else None
        drops: list[Dropped] = []
        state = apply_event(state, event, rules, drops)
        _remember(state.seen_events, event_hash, rules.dedup_event_ids)
        if order_hash is not None:
            _remember(state.seen_orders, order_hash, rules.dedup_order_ids)
        audit = self._consent_audit(state, event, before) if kind == "consent" else None
        now = state.newest_event_ms
        if not has_consent(state, ANALYTICS, now, rules):   # the fold kept the consent record only
            return Step(state, store=True, write_profile=True, audit=audit, dropped=drops)
        view = ProfileView(event.user_id, state, rules)
        was_bot, was_ruled, was_judged = state.models.bot, state.models.bot_by == "rule", state.models.model_judged_bot
        signals: Sequence[ItemSignal] = ()
        if has_consent(state, PERSONALIZATION, now, rules):
            examples, timers = self.models.on_event(state, event, view, served)
            if self.recommend is not None:
                signals = self._item_signals(state, event, self.recommend)
        else:   # no scoring, no segment, no training example, no item signal; what was learnt about the user goes
            examples, timers = [], []
            if state.models != _NO_MODELS:
                state.models = ModelOutputs()
            state.recent_items = None
        outcome = self.engine.on_event(state, event, view)
        if outcome.timers:
            timers += outcome.timers
        return Step(state, store=True, write_profile=True, examples=examples, triggers=outcome.triggers,
                    timers=timers, suppressed=outcome.suppressed, bot_flagged=state.models.bot and not was_bot,
                    bot_counts=self._bot_counts(state, was_bot, was_ruled, was_judged),
                    dropped=drops, audit=audit, experiments=outcome.experiments, item_signals=signals)

    @staticmethod
    def _item_signals(state: UserState, event: Event, rules: RecommendRules) -> list[ItemSignal]:
        event_touches = touches(event.event_type, event.payload, event.event_time_ms, rules)
        if not event_touches:
            return []
        if state.recent_items is None:
            state.recent_items = RecentItems()
        signals: list[ItemSignal] = []
        for touch in event_touches:
            signals += remember(state.recent_items, touch, rules)
        return signals

    @staticmethod
    def _bot_counts(state: UserState, was_bot: bool, was_ruled: bool, was_judged: bool) -> Sequence[tuple[str, str]]:
        """What changed in the bot verdicts at this step, as live counters (docs/models.md: bots)."""
        m = state.models
        flagged, ruled, judged = m.bot and not was_bot, m.bot_by == "rule" and not was_ruled, m.model_judged_bot and not was_judged
        return bot_tally(m, flagged, ruled, judged) if flagged or ruled or judged else ()

    def _erase(self, state: UserState | None, event: Event, event_hash: int) -> Step:
        """Forget everything about the user, the consent record too, and say what went (docs/privacy.md).

        The request takes effect at its event time, like every other event: what was due by then (an
        abandonment whose deadline passed, a trigger deferred to a release time that passed) is released
        first, as the watermark would have, whether or not the watermark got there yet. Everything due later
        is dropped and counted. That makes the outcome the same however far the watermark lags.
        """
        triggers: Sequence[Trigger] = ()
        suppressed: Sequence[tuple[str, SuppressReason]] = ()
        outcomes: Sequence[ExperimentOutcome] = ()
        counts = (0, 0, 0)
        if state is not None:
            due = self.engine.on_timer(state, event.user_id, event.event_time_ms)
            triggers, suppressed, outcomes = due.triggers, due.suppressed, due.experiments
            counts = pending_counts(state)
        fresh = UserState()
        _remember(fresh.seen_events, event_hash, self.rules.dedup_event_ids)   # a redelivery stays a duplicate
        outcome: dict[str, dict[str, Any]] = {
            "flink_state": {"status": "cleared"},
            "released_before_erasure": {"status": "sent", "count": len(triggers)},
            "pending_triggers": {"status": "dropped", "count": counts[0]},
            "pending_matches": {"status": "dropped", "count": counts[1]},
            "pending_labels": {"status": "dropped", "count": counts[2]}}
        return Step(fresh, store=True, erase=True, triggers=triggers, suppressed=suppressed,
                    audit=AuditEntry("erasure", outcome), experiments=outcomes)

    def _consent_audit(self, state: UserState, event: Event, before: tuple[int, int, int] | None) -> AuditEntry:
        in_force = {p: has_consent(state, p, state.newest_event_ms, self.rules) for p in PURPOSES}
        outcome: dict[str, dict[str, Any]] = {"flink_state": {"status": "consent_recorded"}}
        if before is not None and not in_force[ANALYTICS]:
            triggers, matches, labels = before
            outcome["flink_state"] = {"status": "profile_cleared"}
            outcome |= {"pending_triggers": {"status": "dropped", "count": triggers},
                        "pending_matches": {"status": "dropped", "count": matches},
                        "pending_labels": {"status": "dropped", "count": labels}}
        elif before is not None and not in_force[PERSONALIZATION]:
            outcome["pending_labels"] = {"status": "dropped", "count": before[2]}
        return AuditEntry("consent_change", outcome, {
            "granted": event.payload["granted"], "withdrawn": event.payload["withdrawn"], "in_force": in_force,
            "history": [list(c) for c in consent_log_of(state)]})

    def _on_timer(self, state: UserState | None, user_id: str, timestamp_ms: int) -> Step:
        if state is None:
            return Step(None)
        version = state.version
        examples = self.models.on_timer(state, user_id, timestamp_ms)
        outcome = self.engine.on_timer(state, user_id, timestamp_ms)
        released = state.version != version   # a released match changed the profile (stage, abandonment time)
        # A timer that only pruned expired entries need not be stored: the next write persists that, and
        # restoring the unpruned value gives the same results (the entries were expired).
        store = released or bool(examples or outcome.triggers or outcome.timers or outcome.suppressed
                                 or outcome.experiments)
        return Step(state, store=store, write_profile=released, examples=examples, triggers=outcome.triggers,
                    timers=outcome.timers, suppressed=outcome.suppressed, experiments=outcome.experiments)

    def deadlines(self, state: UserState) -> list[int]:
        """Every event time a timer must wake the user at, read from the state alone: the timers of a state restored
        without them (an upgrade from the layout with one Flink timer per user, docs/operations.md "Failures and upgrades").
        A test checks it against the timers the runner armed over a replay."""
        step = self.models.rules.label_timer_resolution_ms
        window = self.models.rules.label_window_ms
        out = {-(-(p.t_ms + window) // step) * step for p in state.models.labels.pending}
        out.update(self.engine.deadlines(state.patterns))
        return sorted(out)

    def profile(self, user_id: str, state: UserState, now_ms: int) -> tuple[dict[str, str], tuple[str, ...]]:
        """The Redis hash fields and the sets the user belongs to (stage, segment), computed when written."""
        return profile_record(user_id, state, self.rules, now_ms)


_NO_MODELS = ModelOutputs()


def pending_counts(state: UserState) -> tuple[int, int, int]:
    """(deferred triggers, armed absence matches, examples waiting for their label) held for the user."""
    return (len(state.patterns.deferred), sum(len(a.armed) for a in state.patterns.absence.values()),
            len(state.models.labels.pending))


def _failed(e: Exception) -> Step:
    detail = f"{type(e).__name__}: {e}"
    return Step(None, failed=True, dead_letter=Rejection(RejectReason.PROCESSING_ERROR, detail[:1000]))
