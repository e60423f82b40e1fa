"""The per-event core as a plain Python loop: the benchmark's logic-only run and baseline, ``persona evaluate`` and
``persona rules dry-run``.

It drives the core through the job's own runner (``operators/runner.py``): the same parsing with the job's
limits, the same timers in (time, user) order, the same failure handling. What Flink does around it is done
here by hand, in one process and with no fault tolerance: each record is a batch of one, followed by the
watermark (newest event time less the out-of-orderness bound); the states live in a dict of encoded bytes, as
in Flink's state; and trainers learn the examples in line and "publish" a snapshot to the scorer every
``publish_every_examples`` examples, as the job's trainer does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import redis

from operators.item_table import ItemTable, publications
from operators.model_scoring import Example, ServedModels
from operators.online_models import MODEL_NAMES, ModelTrainer
from operators.pattern_engine import Trigger
from operators.personalize import Personalizer, Step
from operators.runner import Record, Result, Runner, Watermarks
from persona.rules import input_limits, personalizer, recommend_rules
from persona.settings import JobSettings
from state.item_state import ItemNeighbours
from state.item_store import ItemWriter
from state.keys import RedisKeys
from state.profile_store import ProfileWriter
from state.user_state import UserState, decode_state, encode_state
from state.user_timers import UserTimers


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


class InlineItemPublisher:
    """The item operator's Redis side for drivers in one process (the baseline, the peer): the items changed since
    the last publication, written every ``recommend.publish_ms``, as jobs/item_folding.py does."""

    def __init__(self, settings: JobSettings, client: redis.Redis, keys: RedisKeys) -> None:
        self.rules, self.every_ms = recommend_rules(settings), settings.recommend.publish_ms
        self.writer = ItemWriter(client, keys)
        self.unpublished: dict[str, ItemNeighbours] = {}
        self.published_at = 0.0

    def add(self, changed: dict[str, ItemNeighbours]) -> None:
        self.unpublished.update(changed)

    def publish_due(self, now_s: float, force: bool = False) -> None:
        if self.unpublished and (force or (now_s - self.published_at) * 1000 >= self.every_ms):
            self.writer.publish(publications(self.unpublished.values(), self.rules))
            self.unpublished.clear()
            self.published_at = now_s


@dataclass
class Replay:
    settings: JobSettings
    on_example: Callable[[Example], None] | None = None
    on_trigger: Callable[[Trigger], None] | None = None
    on_step: Callable[[str, Step], None] | None = None   # every step of an event or timer (e.g. to write Redis)
    on_items: Callable[[dict[str, ItemNeighbours]], None] | None = None   # items changed by a batch (to publish them)
    on_result: Callable[[Result], None] | None = None   # what each batch or watermark emitted (its outputs)
    history: bool = False    # emit every profile version (the runner's ``HISTORY`` outputs)
    store: dict[str, bytes] = field(default_factory=dict)   # user -> encoded state, as Flink's state holds it

    def __post_init__(self) -> None:
        self.core = personalizer(self.settings)
        self.models = InlineModels(self.settings)
        self.served, self.trainers = self.models.served, self.models.trainers
        # Every state stays decoded in memory (no eviction): the replay's store is only read after ``states =``.
        self.runner = Runner(self.core, input_limits(self.settings), cache_users=2**62, served=self.served,
                             on_step=self._observe, history=self.history)
        self.timers = UserTimers()
        # The item operator, in line (the job's is keyed by item shard, jobs/item_folding.py).
        self.items = ItemTable(recommend_rules(self.settings)) if self.settings.recommend.enabled else None
        self.watermarks = Watermarks(self.settings.source.max_out_of_orderness_ms, self.settings.source.idleness_ms)
        self.triggers = 0
        self.ledger: dict[str, int] = {}   # applied, duplicate, dead_letter.<reason>

    def process(self, raw: bytes, now_ms: int | None = None) -> None:
        """One record, then the watermark it moves (its event time less the out-of-orderness bound)."""
        self.process_batch([Record(None, raw)], now_ms)

    def process_batch(self, records: list[Record], now_ms: int | None = None) -> None:
        """Records read together (a consumer's poll), then the watermark they move."""
        out = self.runner.on_batch(records, self.timers, self.store.get, now_ms)
        self.runner.on_watermark(self.watermarks.after(out), self.timers, self.store.get, now_ms, out)
        self._finish(out)

    @property
    def watermark(self) -> int:
        return self.watermarks.current

    def advance(self, watermark_ms: int, now_ms: int | None = None) -> None:
        """Move the watermark (also without an event: a silent stream), firing the timers it passes."""
        self._finish(self.runner.on_watermark(self.watermarks.advance(watermark_ms), self.timers, self.store.get, now_ms))

    def idle(self, now_ms: int) -> None:
        """A silent input (a consumer's empty poll): the watermark the wall clock gives, firing what it passes."""
        self._finish(self.runner.on_watermark(self.watermarks.idle(now_ms), self.timers, self.store.get, now_ms))

    @property
    def states(self) -> dict[str, UserState]:
        return {u: decode_state(data) for u, data in self.store.items()}

    @states.setter
    def states(self, states: dict[str, UserState]) -> None:
        """Restore (as after a failover): the stored states are these, and nothing cached survives."""
        self.store = {u: encode_state(s) for u, s in states.items()}
        self.runner.forget()

    def _observe(self, user: str, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(user, step)
        # A match of history marked for the dry-run topic (history.dry_run_topic) is not a trigger sent.
        sent = [t for t in step.triggers if not t.history]
        if sent:
            self.triggers += len(sent)
            if self.on_trigger is not None:
                for trigger in sent:
                    self.on_trigger(trigger)

    def _finish(self, out: Result) -> None:
        self.store.update(out.dirty)
        if self.on_result is not None:
            self.on_result(out)
        if out.items and self.items is not None:
            changed = self.items.fold(out.items)
            if self.on_items is not None:
                self.on_items(changed)
        for outcome, n in out.ledger.items():
            self.ledger[outcome] = self.ledger.get(outcome, 0) + n
        examples = self.runner.examples.take()
        for model_examples in examples.values():
            for ex in model_examples:
                if self.on_example is not None:
                    self.on_example(ex)
                self.models.learn((ex,))
