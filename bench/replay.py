"""The per-event core as a plain Python loop: the benchmark's logic-only run and baseline, and ``persona evaluate``.

It calls the same ``Personalizer`` as the Flink job, in one process and with no fault tolerance. What
Flink does around the core is done here by hand: a heap of event-time timers fired as a watermark
(newest event time less the out-of-orderness bound) passes them, and trainers that learn the examples
in line and "publish" a snapshot to the scorer every ``publish_every_examples`` examples, as the job's
trainer does.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

from operators.events import Event
from operators.model_scoring import Example, ServedModels
from operators.online_models import MODEL_NAMES, ModelTrainer
from operators.pattern_engine import Trigger
from operators.personalize import Personalizer, Step
from operators.validation import parse_event
from persona.rules import personalizer
from persona.settings import JobSettings
from state.profile_store import ProfileWriter
from state.user_state import UserState


class InlineModels:
    """Trainers that learn each example as it comes and "publish" to the served models every
    ``models.publish_every_examples`` examples, as the job's trainer does (in one process, no Flink)."""

    def __init__(self, settings: JobSettings) -> None:
        m = settings.models
        self.every = m.publish_every_examples
        self.served = ServedModels()
        self.trainers = {n: ModelTrainer.new(n, m.seed, m.segments) for n in MODEL_NAMES}

    def learn(self, examples: Iterable[Example]) -> None:
        for ex in examples:
            t = self.trainers[ex.model]
            t.learn(ex.x, ex.label, ex.score, ex.previous)
            if t.since_snapshot >= self.every:
                self.served.apply(t.snapshot(0).to_record())


def write_step(writer: ProfileWriter, core: Personalizer, user: str, step: Step, now_ms: int) -> None:
    """The job's Redis writes for one step: an erasure first, then the profile, encoded at the flush."""
    if step.erase:
        writer.erase(user, now_ms)
    if step.write_profile and step.state is not None:
        writer.put(user, step.state.version, partial(core.profile, user, step.state, now_ms), now_ms)


@dataclass
class Replay:
    settings: JobSettings
    on_example: Callable[[Example], None] | None = None
    on_trigger: Callable[[Trigger], None] | None = None
    on_step: Callable[[str, Step], None] | None = None   # every step of an event or timer (e.g. to write Redis)
    states: dict[str, UserState] = field(default_factory=dict)
    timers: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = personalizer(self.settings)
        self.models = InlineModels(self.settings)
        self.served, self.trainers = self.models.served, self.models.trainers
        self._armed: set[tuple[int, str]] = set()   # Flink keeps one timer per (key, time); so does this loop
        self.watermark = 0
        self.triggers = 0

    def process(self, raw: bytes) -> tuple[str, Step] | None:
        """One record; returns (user, step) for an applied event, None for a rejected or late one."""
        e = parse_event(raw)
        if not isinstance(e, Event):
            return None
        step = self.core.on_event(self.states.get(e.user_id), e, self.served)
        if step.dead_letter is not None:
            return None
        assert step.state is not None
        self.states[e.user_id] = step.state
        self._carry_out(e.user_id, step)
        self.advance(e.event_time_ms - self.settings.source.max_out_of_orderness_ms)
        return e.user_id, step

    def advance(self, watermark_ms: int) -> None:
        """Move the watermark (also without an event: a silent stream), firing the timers it passes."""
        self.watermark = max(self.watermark, watermark_ms)
        while self.timers and self.timers[0][0] <= self.watermark:
            timer = heapq.heappop(self.timers)
            self._armed.discard(timer)
            due, user = timer
            if user in self.states:
                self._carry_out(user, self.core.on_timer(self.states[user], user, due))

    def _carry_out(self, user: str, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(user, step)
        for t in step.timers:
            if (t, user) not in self._armed:
                self._armed.add((t, user))
                heapq.heappush(self.timers, (t, user))
        if step.triggers:
            self.triggers += len(step.triggers)
            if self.on_trigger is not None:
                for trigger in step.triggers:
                    self.on_trigger(trigger)
        if step.examples:
            self._learn(step.examples)

    def _learn(self, examples: Sequence[Example]) -> None:
        for ex in examples:
            if self.on_example is not None:
                self.on_example(ex)
            self.models.learn((ex,))
