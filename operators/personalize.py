"""The per-event core: one user's state and one event (or timer) in, a typed ``Step`` out.

Every caller runs the same sequence through this class: the Flink function in ``jobs/personalization.py``
(which only loads and saves state, registers timers and emits), the logic-only loop and the plain-Python
baseline of the benchmark (``bench/replay.py``), and ``persona evaluate``. Nothing here does I/O or reads
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from operators.events import Event, Rejection
from operators.model_scoring import Example, ModelRules, ModelStep, ServedModels
from operators.pattern_engine import PatternEngine, Trigger
from operators.pattern_spec import PatternBook
from operators.profile_fold import ProfileRules, ProfileView, apply_event, is_late, redis_fields
from state.journey import STAGES
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
    suppressed: Sequence[tuple[str, str]] = ()       # (pattern, reason)
    bot_flagged: bool = False                        # the user became a bot at this step


class Personalizer:
    def __init__(self, profile_rules: ProfileRules, model_rules: ModelRules, book: PatternBook, segments: int) -> None:
        self.rules = profile_rules
        self.models = ModelStep(model_rules)
        self.engine = PatternEngine(book)
        self.segment_names = tuple(f"seg{i}" for i in range(segments))
        self.memberships_known = STAGES + self.segment_names   # every Redis set a user can be in

    def on_event(self, state: UserState | None, event: Event, served: ServedModels) -> Step:
        if is_late(state, event, self.rules):
            assert state is not None
            return Step(state, dead_letter=Rejection(
                "late_event", f"event_time {event.event_time_ms} is more than {self.rules.allowed_lateness_ms} ms "
                f"older than the user's newest event ({state.newest_event_ms})", "event_time"))
        state = apply_event(state, event, self.rules)
        view = ProfileView(event.user_id, state, self.rules)
        was_bot = state.models.bot
        examples, timers = self.models.on_event(state, event, view, served)
        outcome = self.engine.on_event(state, event, view)
        if outcome.timers:
            timers += outcome.timers
        return Step(state, store=True, write_profile=state.version > 0, erase=event.event_type == "erasure_request",
                    examples=examples, triggers=outcome.triggers, timers=timers, suppressed=outcome.suppressed,
                    bot_flagged=state.models.bot and not was_bot)

    def on_timer(self, state: UserState | None, user_id: str, timestamp_ms: int) -> Step:
        """The watermark reached ``timestamp_ms``: label deadlines pass, absence matches and deferred triggers release."""
        if state is None:
            return Step(None)
        version = state.version
        examples = self.models.on_timer(state, timestamp_ms)
        outcome = self.engine.on_timer(state, user_id, timestamp_ms)
        released = state.version != version   # a released match changed the profile (stage, abandonment time)
        # A timer that only pruned expired entries need not be stored: the next write persists that, and
        # restoring the unpruned value gives the same results (the entries were expired).
        store = released or bool(examples or outcome.triggers or outcome.timers or outcome.suppressed)
        return Step(state, store=store, write_profile=released, examples=examples, triggers=outcome.triggers,
                    timers=outcome.timers, suppressed=outcome.suppressed)

    def profile(self, user_id: str, state: UserState, now_ms: int) -> tuple[dict[str, str], tuple[str, ...]]:
        """The Redis hash fields and the sets the user belongs to (stage, segment), computed when written."""
        view: Mapping[str, object] = ProfileView(user_id, state, self.rules)
        segment = view["segment"]
        memberships = (str(view["stage"]), str(segment)) if segment else (str(view["stage"]),)
        return redis_fields(view, now_ms), memberships
