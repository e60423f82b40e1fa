"""Per-user model step: score with the served models, snapshot decision points, join labels, flag bots.

Layering (also stated in conf/patterns.yaml): models only produce profile fields (``propensity``,
``segment``, ``bot_score``); rules decide. A pattern's conditions may read those fields, the bot
rule overrides the bot model, and the trigger gate refuses every trigger for a user flagged as a bot,
whatever produced the flag. Flagged users' examples are not sent for training.

The served models are replicas of published snapshots (``ServedModels``); the trainers learn from the
examples this step returns, so serving never waits for learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from operators.events import Event
from operators.label_join import LabelJoin, LabelledExample
from operators.model_features import (
    BOT_LIMITS,
    SessionSequence,
    propensity_features,
    segment_features,
    session_rate_features,
)
from operators.online_models import MODEL_SCHEMA, SEGMENT_MARGIN, CompiledLogistic, ModelSnapshot, restore
from state.model_state import ModelOutputs
from state.user_state import UserState

# The weight of a product page's dwell in the recency-weighted reading time falls by this much per later page
# (about the last ten pages count).
DWELL_DECAY = 0.8

__all__ = ["Example", "ExampleBatch", "ModelOutputs", "ModelRules", "ModelStep", "ServedModels", "bot_verdict"]


def compile_model(name: str, model: Any) -> Any:
    """A restored snapshot ready to serve (segments and bots snapshots are compiled already)."""
    return CompiledLogistic.of(model) if name == "propensity" else model


@dataclass(frozen=True, slots=True)
class ModelRules:
    label_window_ms: int
    max_pending: int
    bot_threshold: float           # model score at or above which a session is a bot's
    bot_rule_events_per_min: float  # rule: this fast ...
    bot_rule_min_events: int        # ... over at least this many events is a bot, whatever the model says
    bot_min_events: int            # sessions shorter than this are not judged by the model
    score_every: int               # segment and bot scoring every N events of a session
    label_timer_resolution_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class Example:
    """A training example for one trainer (keyed by ``model``)."""

    model: str
    user_id: str
    x: Any                         # propensity: the packed feature tuple; segments, bots: a dict
    label: bool | None = None
    score: float | None = None
    previous: int | None = None    # segments: the user's segment before this session (churn)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled to cross to the trainer: one constructor call over builtins (no per-field slot state).
        return Example, (self.model, self.user_id, self.x, self.label, self.score, self.previous)


@dataclass(frozen=True, slots=True)
class ExampleBatch:
    """Examples of one model, sent to its trainer together: one record crosses instead of one per example."""

    model: str
    examples: tuple[Example, ...]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return ExampleBatch, (self.model, self.examples)


def _propensity_example(user_id: str, e: LabelledExample) -> Example:
    return Example("propensity", user_id, e.features, e.label, e.score)


def bot_verdict(rate: dict[str, float], events: int, score: float | None, rules: ModelRules) -> tuple[bool, str | None]:
    """The rule first: it overrides the model in both directions it covers.

    >>> r = ModelRules(1, 1, bot_threshold=0.9, bot_rule_events_per_min=30, bot_rule_min_events=20, bot_min_events=10,
    ...                score_every=5)
    >>> bot_verdict({"events_per_min": 40.0}, events=25, score=0.1, rules=r)   # model says human, rule says bot
    (True, 'rule')
    >>> bot_verdict({"events_per_min": 3.0}, events=5, score=0.99, rules=r)    # too short for the model to judge
    (False, None)
    >>> bot_verdict({"events_per_min": 3.0}, events=12, score=0.95, rules=r)
    (True, 'model')
    """
    if events >= rules.bot_rule_min_events and rate["events_per_min"] >= rules.bot_rule_events_per_min:
        return True, "rule"
    if score is not None and events >= rules.bot_min_events and score >= rules.bot_threshold:
        return True, "model"
    return False, None


def bot_tally(out: ModelOutputs, flagged: bool, ruled: bool, judged: bool) -> list[tuple[str, str]]:
    """The live bot counters (group, name) one step moves, given what changed at it: ``flagged`` the user became a
    bot, ``ruled`` the rule flagged it (also a user the model had flagged), ``judged`` the model judged it a bot
    for the first time. Live traffic has no ground truth, so the model is measured against the rule:
    ``bot_model.agreed / bot_model.verdicts`` is its precision, ``bot_model.agreed / bot_flags_by.rule`` its
    recall (docs/models.md).

    >>> bot_tally(ModelOutputs(bot=True, bot_by="rule", model_judged_bot=True), flagged=True, ruled=True, judged=False)
    [('bot_flags_by', 'rule'), ('bot_model', 'agreed')]
    >>> bot_tally(ModelOutputs(bot=True, bot_by="model", model_judged_bot=True), flagged=True, ruled=False, judged=True)
    [('bot_flags_by', 'model'), ('bot_model', 'verdicts')]
    """
    counts: list[tuple[str, str]] = []
    if ruled:
        counts.append(("bot_flags_by", "rule"))
    elif flagged and out.bot_by:
        counts.append(("bot_flags_by", out.bot_by))
    if judged:
        counts.append(("bot_model", "verdicts"))
    # Agreement counts once per user, at the step of the later of the two verdicts (or of both).
    if out.bot_by == "rule" and out.model_judged_bot and (ruled or judged):
        counts.append(("bot_model", "agreed"))
    return counts


class ServedModels:
    """The snapshots a scoring operator serves: the latest of each model, unless a version is pinned."""

    def __init__(self) -> None:
        self.latest: dict[str, ModelSnapshot] = {}
        self.pinned: dict[str, ModelSnapshot] = {}
        # The checked, compiled model of each, made once when the snapshot is applied: (version, model).
        self._latest_models: dict[str, tuple[int, Any]] = {}
        self._pinned_models: dict[str, tuple[int, Any]] = {}
        self.refused = 0                               # records refused as malformed (the caller logs them)
        self.last_refusal = ""
        self._refused: set[tuple[str, int]] = set()   # not fetched again (nor logged again) at every refresh

    def refused_before(self, name: str, version: int) -> bool:
        """This version was refused as malformed: not fetched again, nor logged again, at every refresh."""
        return (name, version) in self._refused

    def apply(self, record: dict[str, Any]) -> bool:
        """A models-topic record: ``snapshot``, ``pin`` (with the pinned snapshot) or ``unpin``.

        The blob is JSON numbers, checked here (``online_models.restore``). A malformed record, or one of
        another feature schema, is refused (False; ``refused`` counts the malformed ones) and whatever was
        served goes on being served.
        """
        try:
            name, kind = str(record["model"]), str(record["kind"])
            if kind == "unpin":
                self.pinned.pop(name, None)
                self._pinned_models.pop(name, None)
                return True
            snap = ModelSnapshot.from_record(record)
            if snap.schema != MODEL_SCHEMA.get(name) or kind not in ("snapshot", "pin"):
                return False   # made by another feature schema: cannot serve it
            model = compile_model(name, restore(name, snap.blob))
        except (ValueError, KeyError, TypeError) as e:   # binascii.Error and msgspec's errors are ValueErrors
            self.refused += 1
            if isinstance(record.get("version"), (int, str)) and str(record.get("version")).isdigit():
                self._refused.add((str(record.get("model")), int(record["version"])))
            self.last_refusal = f"{record.get('model')!r} v{record.get('version')!r}: {type(e).__name__}: {e}"[:500]
            return False
        if kind == "pin":
            self.pinned[name], self._pinned_models[name] = snap, (snap.version, model)
        elif name not in self.latest or snap.version > self.latest[name].version:
            self.latest[name], self._latest_models[name] = snap, (snap.version, model)
        return True

    def get(self, name: str) -> tuple[int, Any] | None:
        """(version, model) served for ``name``, or None before the first snapshot.

        Every model is served compiled to its numbers (``CompiledLogistic``, ``CompiledKMeans``,
        ``CompiledHalfSpaceTrees``): the same answers as the trained models, a few µs each.
        """
        return self._pinned_models.get(name) or self._latest_models.get(name)


class ModelStep:
    def __init__(self, rules: ModelRules) -> None:
        self.rules = rules
        self.join = LabelJoin(rules.label_window_ms, rules.max_pending)

    @staticmethod
    def outputs(user: UserState) -> ModelOutputs:
        return user.models

    def on_event(self, user: UserState, event: Event, view: Mapping[str, Any], served: ServedModels
                 ) -> tuple[list[Example], list[int]]:
        """After the event was applied (``view`` is the profile now; it reads the model fields live).

        Returns (examples for the trainers, event-time deadlines to arm timers for).
        """
        out = user.models
        examples: list[Example] = []
        timers: list[int] = []
        sessions = user.sessions
        if out.session_start_ms != sessions.current_start_ms:
            # A new session: the previous one ended. Learn its segment vector (and its rate features).
            if out.session_start_ms is not None and sessions.recent and not out.bot:
                last_events = sessions.recent[-1][2]
                ended = segment_features(view, last_events)
                examples.append(Example("segments", event.user_id, ended, previous=out.segment))
                # A segment describes a kind of shopper: judged once per session, on the session that just ended
                # (the vector the trainer learns), with hysteresis (docs/models.md: stable segments).
                self._segment(out, ended, served)
                # One rate vector per whole session, never a bot's (flagged sessions are not learnt).
                if out.session_rate is not None and last_events >= self.rules.bot_min_events:
                    examples.append(Example("bots", event.user_id, dict(zip(BOT_LIMITS, out.session_rate, strict=True))))
            out.session_start_ms, out.session_page_views, out.session_rate = sessions.current_start_ms, 0, None
        if event.event_type == "page_view":
            out.session_page_views += 1
        n = sessions.current_events
        if n == 1 or n % self.rules.score_every == 0:
            self._bots(out, user, n, served)
        if out.segment is None and not out.bot and served.get("segments"):
            # A first segment as soon as a model exists; a bot gets none, so this must not run for bots on
            # every event (bots are few users but many events).
            self._segment(out, segment_features(view, n), served)

        t = event.event_time_ms
        labelled: list[LabelledExample] = []
        product_view = event.event_type == "page_view" and event.payload.get("page_type") == "product"
        if product_view:
            out.dwell_weighted_ms = round(out.dwell_weighted_ms * DWELL_DECAY + int(event.payload.get("dwell_ms", 0)))
            out.dwell_weight = round(out.dwell_weight * DWELL_DECAY + 1000)   # in thousandths
        if event.event_type == "purchase":
            labelled = self.join.purchase(out.labels, t)
        elif event.event_type == "add_to_cart" or product_view:
            sequence = SessionSequence(user.session_product_views, user.session_product_dwell_ms, user.last_add_ms,
                                       out.dwell_weighted_ms / out.dwell_weight if out.dwell_weight else 0.0)
            x = propensity_features(view, event.event_type, sequence)
            model = served.get("propensity")
            score = model[1].score(x) if model else 0.5
            out.propensity, out.propensity_version = score, model[0] if model else 0
            if not out.bot:
                # Pending snapshots live in the user's state, stored on every event: values only, no keys.
                labelled, deadline = self.join.snapshot(out.labels, event.event_id, t, x, score,
                                                        out.propensity_version)
                if deadline is not None:
                    # Coalesced: one timer per user and resolution step (labels may come that much later).
                    step = self.rules.label_timer_resolution_ms
                    timers.append(-(-deadline // step) * step)
        if labelled and not out.bot:
            examples += [_propensity_example(event.user_id, e) for e in labelled]
        return examples, timers

    def on_timer(self, user: UserState, user_id: str, watermark_ms: int) -> list[Example]:
        """Examples whose label window passed, tagged with their user: an erasure purges them while they wait for
        their batch, so a timer-released example must carry the user as one released by an event does."""
        out = self.outputs(user)
        labelled = self.join.release(out.labels, watermark_ms)
        return [] if out.bot else [_propensity_example(user_id, e) for e in labelled]

    def _segment(self, out: ModelOutputs, features: dict[str, float], served: ServedModels) -> None:
        model = served.get("segments")
        if model is not None and not out.bot:
            # Hysteresis: the user stays in their segment unless another is clearly nearer (docs/models.md).
            segment = model[1].assign(features, out.segment, SEGMENT_MARGIN)
            out.segment, out.segment_version = int(segment), model[0]

    def _bots(self, out: ModelOutputs, user: UserState, events: int, served: ServedModels) -> None:
        s = user.sessions
        rate = session_rate_features(events, s.current_length_ms(), user.session_product_views,
                                     user.session_product_dwell_ms, out.session_page_views)
        model = served.get("bots")
        out.bot_score = float(model[1].score_one(rate)) if model is not None else None
        if out.bot_by != "rule":   # a rule's verdict sticks to the user; the model's is re-judged every session
            out.bot, out.bot_by = bot_verdict(rate, events, out.bot_score, self.rules)
        if (not out.model_judged_bot and out.bot_score is not None and events >= self.rules.bot_min_events
                and out.bot_score >= self.rules.bot_threshold):
            out.model_judged_bot = True
        if out.bot:
            out.labels.pending.clear()   # a bot's examples never reach training
            # Nor does a bot stay in a segment set that campaigns target (it may have had one before the flag).
            out.segment, out.segment_version = None, 0
        out.session_rate = tuple(rate.values())
