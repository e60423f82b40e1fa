"""The job's per-event path as a plain Python loop: the benchmark baseline and the model evaluation share it.

Same functions as ``jobs/personalization.py`` (parse, profile, models, patterns), in one process, with
no fault tolerance. Model snapshots are "published" to the scorer every ``publish_every`` examples, as
the job's trainer does.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.personalization import check_patterns, model_rules, profile_rules
from operators.events import Event
from operators.model_scoring import Example, ModelStep, ServedModels
from operators.online_models import MODEL_NAMES, ModelTrainer
from operators.pattern_engine import PatternEngine, Trigger
from operators.validation import parse_event
from persona.settings import JobSettings
from state.profile import UserState, apply_event, is_late, profile_view


@dataclass
class Replay:
    settings: JobSettings
    on_example: Callable[[Example], None] | None = None
    on_trigger: Callable[[Trigger], None] | None = None
    states: dict[str, UserState] = field(default_factory=dict)
    timers: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rules = profile_rules(self.settings)
        self.engine = PatternEngine(check_patterns(self.settings))
        self.step = ModelStep(model_rules(self.settings))
        self.served = ServedModels()
        m = self.settings.models
        self.trainers = {n: ModelTrainer.new(n, m.seed, m.segments) for n in MODEL_NAMES}
        self.watermark = 0
        self.triggers = 0

    def process(self, raw: bytes) -> tuple[str, UserState, dict[str, Any]] | None:
        """One record; returns (user, state, view) for a processed event, None for a rejected or late one."""
        e = parse_event(raw)
        if not isinstance(e, Event):
            return None
        s = self.states.get(e.user_id)
        if is_late(s, e, self.rules):
            return None
        s = apply_event(s, e, self.rules)
        self.states[e.user_id] = s
        view = profile_view(e.user_id, s, self.rules)
        examples, deadlines = self.step.on_event(s, e, view, self.served)
        self._learn(examples)
        out = self.engine.on_event(s, e, view)
        self._emit(out.triggers)
        for d in (*deadlines, *out.timers):
            heapq.heappush(self.timers, (d, e.user_id))
        # Label timers fire as the watermark (newest event time less the disorder bound) passes them.
        self.watermark = max(self.watermark, e.event_time_ms - self.settings.source.max_out_of_orderness_ms)
        while self.timers and self.timers[0][0] <= self.watermark:
            due, user = heapq.heappop(self.timers)
            if user in self.states:
                self._on_timer(user, due)
        return e.user_id, s, view

    def _on_timer(self, user: str, due: int) -> None:
        s = self.states[user]
        self._learn(self.step.on_timer(s, due))
        out = self.engine.on_timer(s, user, due)
        self._emit(out.triggers)
        for d in out.timers:
            heapq.heappush(self.timers, (d, user))

    def advance(self, watermark_ms: int) -> None:
        """Move the watermark without an event (a silent stream), firing the timers it passes."""
        self.watermark = max(self.watermark, watermark_ms)
        while self.timers and self.timers[0][0] <= self.watermark:
            due, user = heapq.heappop(self.timers)
            if user in self.states:
                self._on_timer(user, due)

    def _emit(self, triggers: list[Trigger]) -> None:
        self.triggers += len(triggers)
        if self.on_trigger is not None:
            for t in triggers:
                self.on_trigger(t)

    def _learn(self, examples: list[Example]) -> None:
        every = self.settings.models.publish_every_examples
        for ex in examples:
            if self.on_example is not None:
                self.on_example(ex)
            t = self.trainers[ex.model]
            t.learn(ex.x, ex.label, ex.score, ex.previous)
            if t.since_snapshot >= every:
                self.served.apply(t.snapshot(0).to_record())
