"""The one driver of the per-event core: a batch of raw records in, then the watermark that follows them.

Every caller runs the core through this class: the Flink job (``jobs/personalization.py``, one call per batch
of a shard), the logic-only loop, the plain-Python baseline and the peer of the benchmark, ``persona rules
dry-run`` and ``persona evaluate`` (``operators/replay.py``), and the unit tests. So parsing (with the job's
limits), the key check, the order of timers and what a failure does are written once:

- ``on_batch`` parses each record, checks it against the key it was routed by, runs ``Personalizer.on_event``
  and arms the timers the step asks for;
- ``on_watermark`` fires every timer at or before the watermark, in (time, user) order;
- a failed step (a bug) dead-letters its record (or counts its timer) and the user's next step starts from the
  last good state, never from the half-updated object;
- the result says what to persist (each changed user's encoded state), what to emit (triggers, dead letters,
  profile changes, audit records, experiment outcomes), and the earliest pending timer.

Pure: no I/O and no clock (``now_ms`` comes in). Loading a state the runner does not hold is the caller's
``load`` function (Flink's map state, or nothing).

>>> from operators.personalize import DEFAULT_MODEL_RULES
>>> from operators.pattern_spec import load_patterns
>>> from operators.profile_fold import ProfileRules
>>> runner = Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5))
>>> add = (b'{"schema_version":1,"event_id":"e1","event_type":"add_to_cart","user_id":"u1",'
...        b'"event_time":"2026-11-02T10:00:00Z","payload":{"product_id":"p1","category":"toys","price":12.5,'
...        b'"quantity":1,"currency":"EUR"}}')
>>> timers = UserTimers()
>>> out = runner.on_batch([Record("u1", add)], timers, lambda user: None, now_ms=1_793_620_900_000)
>>> sorted(out.dirty), [k for k, _, _ in out.outputs], out.counts[VALID]
(['u1'], ['change'], 1)
>>> fired = runner.on_watermark(timers.next_due() or 0, timers, out.dirty.get, now_ms=1_793_622_700_000)
>>> [(kind, key) for kind, key, _ in fired.outputs if kind == TRIGGER]
[('trigger', 'u1')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from operators.audit import audit_record
from operators.co_occurrence import ItemSignal
from operators.dead_letter import dead_letter_record
from operators.events import Event, Rejection, SourceRef
from operators.input_limits import InputLimits
from operators.list_rules import ListRules
from operators.model_scoring import Example, ServedModels
from operators.personalize import Personalizer, Step
from operators.profile_fold import profile_fingerprint
from operators.reasons import RejectReason, SuppressReason
from operators.validation import DEFAULT_LIMITS, parse_event
from state.pattern_state import Trigger
from state.profile_changelog import changelog_value
from state.profile_history import history_key, history_value
from state.state_cache import StateCache
from state.user_state import UserState, decode_state, encode_state
from state.user_timers import UserTimers

# Output kinds: the Java side routes each to its topic (jobs/personalization.py).
TRIGGER, DEAD_LETTER, CHANGE, AUDIT = "trigger", "dead_letter", "change", "audit"
HISTORY = "history"   # every profile version, with ``history.profile_versions`` (state/profile_history.py)
HISTORY_TRIGGER = "history_trigger"   # a match of history, for ``history.dry_run_topic``
# Counter paths (Flink metric group names, then the counter) that every batch may move.
# The watermark at the end of a bounded input (Flink's Long.MAX_VALUE): every deadline and release passes.
END_OF_INPUT = 2**63 - 1

VALID = ("ingest", "valid")
UNTRUSTED = ("ingest", "timestamp_untrusted")
LATE = ("personalize", "late_events")
DUPLICATES = ("personalize", "duplicates")
ERASURES = ("personalize", "erasures")
CONSENT_CHANGES = ("personalize", "consent_changes")
TIMER_ERRORS = ("personalize", "timer_errors")
BOT_FLAGS = ("personalize", "bot_flags")
TRIGGER_LIST_ERRORS = ("personalize", "trigger_list_errors")

# A user's personal list as of an event time, under a rule set's list rules (best first): what a trigger whose
# pattern has ``include_list`` carries. The job reads Redis (``persona.serving.list_for``); tools use their table.
TriggerLists = Callable[[UserState, int, ListRules], list[tuple[str, float]]]


class Record(NamedTuple):
    """One raw record as read, with the key it was routed by: the record's Kafka key, else the JSON user id the
    Java side read ("" when it could not), or None where nothing routed it (a replay of a file): the parsed user id is then the key. The fields after
    ``raw`` are its provenance, in the order the batching operator writes them (``decode_batch``)."""

    user_key: str | None
    raw: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None
    trusted: bool = True            # its Kafka timestamp moved the watermark

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic or "", -1 if self.partition is None else self.partition,
                         -1 if self.offset is None else self.offset, self.timestamp_ms)


_batch_decoder = msgspec.msgpack.Decoder(list[Record])


def decode_batch(data: bytes) -> list[Record]:
    """The records of one batch, as the Java operator ``BatchByShard`` writes them (a MessagePack array of
    ``[user_key, value, topic, partition, offset, timestamp_ms, trusted]``).

    >>> import msgspec
    >>> decode_batch(msgspec.msgpack.encode([["u1", b"{}", "shop.events", 0, 41, 1_000, True]]))[0].source.offset
    41
    """
    return _batch_decoder.decode(data)


Output = tuple[str, str | None, bytes | None]   # (kind, key, value); a None value is a tombstone


@dataclass
class Result:
    """What one batch or watermark did, for the caller to carry out."""

    outputs: list[Output] = field(default_factory=list)
    dirty: dict[str, bytes] = field(default_factory=dict)        # user -> encoded state to persist
    experiments: list[tuple[str, bytes]] = field(default_factory=list)   # (experiment, outcome JSON)
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    ledger: dict[str, int] = field(default_factory=dict)         # applied, duplicate, dead_letter.<reason>
    errors: list[str] = field(default_factory=list)              # failed steps, for the caller's log
    untrusted: Record | None = None                              # one record whose timestamp was not trusted
    newest_event_ms: int | None = None                           # of the events not dead-lettered
    items: list[ItemSignal] = field(default_factory=list)        # for the item operator, in order
    _change_at: dict[str, int] = field(default_factory=dict)

    def count(self, path: tuple[str, ...], n: int = 1) -> None:
        self.counts[path] = self.counts.get(path, 0) + n

    def account(self, outcome: str) -> None:
        self.ledger[outcome] = self.ledger.get(outcome, 0) + 1

    def change(self, user: str, value: bytes | None) -> None:
        """A profile change: only the newest per user and batch goes out (the loader keeps the newest anyway). A
        tombstone supersedes nothing and keeps its place: the state before it still goes out (what was erased),
        and a state written after it follows it."""
        if value is None:
            self._change_at.pop(user, None)
        else:
            at = self._change_at.get(user)
            if at is not None:
                self.outputs[at] = ("", None, None)   # superseded; dropped by ``emitted``
            self._change_at[user] = len(self.outputs)
        self.outputs.append((CHANGE, user, value))

    def emitted(self) -> Iterator[Output]:
        return (o for o in self.outputs if o[0])


class Watermarks:
    """The watermark of a driver without Flink: the newest event time less the out-of-orderness bound, and while the
    input is silent, the wall clock less that bound and the idleness timeout (what Flink does for an idle source).

    >>> w = Watermarks(bound_ms=500, idle_ms=2_000)
    >>> w.after(Result(newest_event_ms=10_000)), w.after(Result()), w.idle(now_ms=5_000), w.idle(now_ms=20_000)
    (9500, 9500, 9500, 17500)
    """

    def __init__(self, bound_ms: int, idle_ms: int) -> None:
        self.bound, self.idle_ms = bound_ms, idle_ms
        self.current = 0

    def advance(self, watermark_ms: int) -> int:
        self.current = max(self.current, watermark_ms)
        return self.current

    def after(self, out: Result) -> int:
        """After a batch: its newest event time less the bound."""
        return self.advance(out.newest_event_ms - self.bound) if out.newest_event_ms is not None else self.current

    def idle(self, now_ms: int) -> int:
        """A silent input: the wall clock stands in for the event time it would have brought."""
        return self.advance(now_ms - self.bound - self.idle_ms)


class ExampleBuffer:
    """Training examples waiting for their trainer, per model: one record per model and batch crosses to the
    trainer, not one per example. An erasure purges the user's waiting examples (docs/privacy.md)."""

    def __init__(self) -> None:
        self._by_model: dict[str, list[Example]] = {}
        self.waiting = 0

    def add(self, examples: Iterable[Example]) -> None:
        for ex in examples:
            self._by_model.setdefault(ex.model, []).append(ex)
            self.waiting += 1

    def purge(self, user_id: str) -> int:
        purged = 0
        for model, examples in self._by_model.items():
            kept = [ex for ex in examples if ex.user_id != user_id]
            purged += len(examples) - len(kept)
            self._by_model[model] = kept
        self.waiting -= purged
        return purged

    def take(self) -> dict[str, list[Example]]:
        out = {m: xs for m, xs in self._by_model.items() if xs}
        self._by_model, self.waiting = {}, 0
        return out


class Runner:
    def __init__(self, core: Personalizer, limits: InputLimits = DEFAULT_LIMITS, cache_users: int = 20_000,
                 served: ServedModels | None = None, on_step: Callable[[str, Step], None] | None = None,
                 trigger_lists: TriggerLists | None = None, history: bool = False) -> None:
        """``on_step``: sees every applied step (tools that count or write profiles from the state object).
        ``trigger_lists``: the personal lists that triggers of patterns with ``include_list`` carry (none: they
        carry none). ``history``: emit every profile version (``HISTORY``), not only each batch's newest."""
        self.core = core
        self.on_step = on_step
        self.trigger_lists = trigger_lists
        self.limits = limits
        self.served = served if served is not None else ServedModels()
        self.examples = ExampleBuffer()
        self.history = history
        self._cache: StateCache[UserState] = StateCache(cache_users)
        self._fingerprint = profile_fingerprint(core.rules)   # on every change: the loader checks it

    def on_batch(self, records: Iterable[Record], timers: UserTimers, load: Callable[[str], bytes | None],
                 now_ms: int | None) -> Result:
        """Each record in order: parse, check the key, run the core, arm its timers. ``now_ms``: the wall clock,
        for the event-age limits and the stamps; None in a replay (no age limit, stamps 0)."""
        out = Result()
        for record in records:
            self._record(record, timers, load, now_ms, out)
        return out

    def on_watermark(self, watermark_ms: int, timers: UserTimers, load: Callable[[str], bytes | None],
                     now_ms: int | None, out: Result | None = None) -> Result:
        """Fire every timer at or before ``watermark_ms``, in (time, user) order (timers armed while firing too)."""
        out = out if out is not None else Result()
        while (due := timers.pop_due(watermark_ms)) is not None:
            t, user = due
            step = self.core.on_timer(self._load(user, load, out), user, t)
            if step.failed:   # no record to dead-letter: counted and reported; the user's other timers still fire
                self._cache.drop(user)
                out.count(TIMER_ERRORS)
                out.errors.append(f"timer {t} of user {user!r} failed: "
                                  f"{step.dead_letter.detail if step.dead_letter else ''}")
            self._carry_out(user, step, timers, now_ms or 0, out, t)
        return out

    def forget(self) -> None:
        """Drop every cached state (after a restore, the caller's store is the truth)."""
        self._cache = StateCache(self._cache._max)

    def _load(self, user: str, load: Callable[[str], bytes | None], out: Result) -> UserState | None:
        state = self._cache.get(user)
        if state is None:
            data = out.dirty.get(user)
            if data is None:
                data = load(user)
            if data is not None:
                state = decode_state(data)
                self._cache.put(user, state)
        return state

    def _record(self, record: Record, timers: UserTimers, load: Callable[[str], bytes | None], clock: int | None,
                out: Result) -> None:
        event = parse_event(record.raw, self.limits, clock)
        now_ms = clock or 0
        user = record.user_key if record.user_key is not None else (event.user_id if isinstance(event, Event) else "")
        if isinstance(event, Event) and event.user_id != user:
            event = Rejection(RejectReason.KEY_MISMATCH, f"user_id {event.user_id!r} differs from the record's key ({user!r}): "
                              "the key must be the user id; duplicate user_id fields?", "user_id")
        if not isinstance(event, Event):
            self._reject(record, event, now_ms, out)
            return
        out.count(VALID)
        if not record.trusted:
            out.count(UNTRUSTED)
            out.untrusted = record
        state = self._load(user, load, out)
        step = self.core.on_event(state, event, self.served)
        if step.failed:
            self._cache.drop(user)
            out.errors.append(f"record {record.source.topic}/{record.source.partition}/{record.source.offset}: "
                              f"{step.dead_letter.detail if step.dead_letter else 'failed'}; dead-lettered")
        if step.dead_letter is not None:
            self._reject(record, step.dead_letter, now_ms, out)
            return
        if out.newest_event_ms is None or event.event_time_ms > out.newest_event_ms:
            out.newest_event_ms = event.event_time_ms
        if step.duplicate:
            out.count(DUPLICATES)
            out.account("duplicate")
            return
        out.account("applied")
        for what in step.dropped:
            out.count(("personalize", "dropped", what))
        purged = self.examples.purge(user) if step.erase else 0
        self._carry_out(user, step, timers, now_ms, out, event.event_time_ms)   # an erasure's: those due before it
        if step.erase:
            # Tombstones wherever the user's data is keyed (docs/privacy.md), after anything released.
            out.count(ERASURES)
            out.outputs += [(TRIGGER, user, None), (DEAD_LETTER, user, None)]
            if self.history and state is not None:   # one per version the user had (the erasure's releases too)
                out.outputs += [(HISTORY, history_key(user, v), None) for v in range(1, state.version + 1)]
            out.change(user, None)
        if step.audit is not None:
            if not step.erase:
                out.count(CONSENT_CHANGES)
            out.outputs.append((AUDIT, user, self._audit(step, event, record.source, now_ms, purged)))

    def _reject(self, record: Record, rejection: Rejection, now_ms: int, out: Result) -> None:
        if rejection.reason is RejectReason.LATE_EVENT:
            out.count(LATE)
        else:
            out.count(("ingest", "rejected", rejection.reason))
        out.account(f"dead_letter.{rejection.reason}")
        doc = dead_letter_record(record.raw, rejection, record.source, now_ms, self.limits.dead_letter_raw_bytes,
                                 self.limits.masked_fields)
        # Keyed by the user id the Java side read, when it could: an erasure then reaches this entry too.
        out.outputs.append((DEAD_LETTER, record.user_key or None, doc.encode()))

    def _carry_out(self, user: str, step: Step, timers: UserTimers, now_ms: int, out: Result, at_ms: int) -> None:
        """``at_ms``: the event time of the event or timer that made the step (a history version's as-of time)."""
        if self.on_step is not None:
            self.on_step(user, step)
        for t in step.timers:
            timers.arm(user, t)
        for pattern, reason in step.suppressed:
            out.count(("personalize", "suppressed", reason))
            if reason is SuppressReason.HISTORY:   # persona backfill's summary: per pattern
                out.count(("personalize", "history", pattern))
        if step.bot_flagged:
            out.count(BOT_FLAGS)
        for group, name in step.bot_counts:   # which one flagged, and the model against the rule (docs/models.md)
            out.count(("personalize", group, name))
        if step.examples:
            for ex in step.examples:
                out.count(("personalize", "examples", ex.model))
            self.examples.add(step.examples)
        for outcome in step.experiments:
            spec = self.core.engine.experiment(outcome.experiment)
            holdout = spec is not None and outcome.variant == spec.holdout
            out.experiments.append((outcome.experiment, outcome.to_json(holdout).encode()))
        if step.item_signals:
            out.items += step.item_signals
        for trigger in step.triggers:
            if trigger.history:   # never sent: the dry-run topic's (counted as suppressed, above)
                out.outputs.append((HISTORY_TRIGGER, trigger.user_id, trigger.to_json().encode()))
                continue
            out.count(("personalize", "triggers", trigger.pattern))
            if self.trigger_lists is not None and step.state is not None:
                trigger = self._with_list(trigger, step.state, self.trigger_lists, out)
            out.outputs.append((TRIGGER, trigger.user_id, trigger.to_json().encode()))
        state = step.state
        if state is None:
            return
        if state.epoch_ms == 0 and step.store:   # a state this job created (first event, or after an erasure)
            state.epoch_ms = now_ms
        if step.store or step.write_profile:
            # Encoded at every step: a later failure of the same user in this batch falls back to these bytes.
            data = encode_state(state)
            if step.store:
                out.dirty[user] = data
                self._cache.put(user, state)
            if step.write_profile:
                value = changelog_value(data, now_ms, self._fingerprint)
                out.change(user, value)
                if self.history:
                    out.outputs.append((HISTORY, history_key(user, state.version), history_value(at_ms, value)))

    def _with_list(self, trigger: Trigger, state: UserState, lists: TriggerLists, out: Result) -> Trigger:
        """The trigger with the first ``include_list`` items of the user's list as of its send time. A failed
        lookup (Redis away) sends it without them, counted: a message is never held back for its extras."""
        book = self.core.engine.book
        n = next((p.include_list for p in book.patterns if p.name == trigger.pattern), 0)
        if not n:
            return trigger
        try:
            listed = lists(state, trigger.emitted_at, book.lists)
        except Exception as e:  # noqa: BLE001 - any failure of the lookup; the trigger still goes out
            out.count(TRIGGER_LIST_ERRORS)
            out.errors.append(f"the list of trigger {trigger.trigger_id} failed: {type(e).__name__}: {e}")
            return trigger
        return msgspec.structs.replace(trigger, alternatives=[item for item, _ in listed[:n]])

    @staticmethod
    def _audit(step: Step, event: Event, source: SourceRef, now_ms: int, purged: int) -> bytes:
        assert step.audit is not None
        stores: dict[str, dict[str, Any]] | None = None
        if step.erase:   # what the caller's side of an erasure did, beside the core's outcome
            tombstone: dict[str, Any] = {"status": "tombstone"}
            stores = {"training_examples": {"status": "dropped", "count": purged}, "profile_changelog": tombstone,
                      "triggers_topic": tombstone, "dead_letter_topic": tombstone,
                      "redis_profile": {"status": "deleted_by_loader"}}
        return audit_record(step.audit, event.user_id, event.event_id, event.event_time_ms, source, now_ms,
                            stores).encode()
