"""The personalization job: Kafka events -> the per-event core, keyed by user -> Kafka (and Redis via the loader).

Kafka (events, keyed by user on the Java side) -> Personalize (parse, core, state, timers) -> triggers topic
                                                      |  |  |-> profile changelog topic -> loader -> Redis profiles
                                    dead letters <----+  |  +-> examples -> key by model -> TrainModels
                                                         ^                                      |
                        served models: Redis model:* ----+------ snapshots (and the models topic) <-+

All stream logic is ``operators.personalize.Personalizer``; this module only wires it into Flink.
Run on the embedded mini-cluster: ``python -m jobs.personalization [--bounded] [--set key=value ...]``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedProcessFunction, KeyedStream, OutputTag, RuntimeContext, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from jobs.experiment_tally import TallyExperiments, experiment_key
from jobs.job_cli import fail, parse_job_args, setup_logging
from jobs.kafka_io import kafka_timestamp_ms, keyed_json_sink, keyed_raw_events, pin_kafka_uids
from jobs.model_training import TrainModels, example_key
from jobs.runtime import make_environment
from jobs.state_ttl import state_ttl
from operators.audit import audit_record
from operators.dead_letter import dead_letter_record
from operators.events import REJECTION_REASONS, Event, Rejection, SourceRef
from operators.input_limits import InputLimits
from operators.model_scoring import Example, ExampleBatch, ServedModels
from operators.pattern_spec import PatternBook
from operators.personalize import Personalizer, Step
from operators.validation import parse_event
from persona.loader import EmbeddedLoader
from persona.rules import check_book, check_patterns, input_limits, personalizer, rule_set_in_force
from persona.settings import ConfigError, JobSettings
from persona.stack.procs import free_port
from persona.stack.topics import ensure_audit_topic, ensure_changelog_topic
from persona.status import announce, flink_status, live_line, withdraw
from state.keys import RedisKeys
from state.profile_changelog import changelog_value
from state.rule_registry import current_version, record_applied, rule_set
from state.state_cache import StateCache
from state.user_state import USER_STATE, UserState, decode_state, encode_state

log = logging.getLogger(__name__)
KEYED_JSON = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
DEAD_LETTERS = OutputTag("dead-letters", KEYED_JSON)
EXAMPLES = OutputTag("model-examples", Types.PICKLED_BYTE_ARRAY())
# Consent changes and erasures (schemas/audit.v1.json), keyed by user.
AUDIT = OutputTag("audit", KEYED_JSON)
# Resolved exposures of experiments (README "Experiments"), keyed by experiment name.
OUTCOMES = OutputTag("experiment-outcomes", KEYED_JSON)
# The profile changelog (state/profile_changelog.py): (user id, value or None for an erasure).
CHANGES = OutputTag("profile-changes", Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())]))
END_OF_INPUT = 2**63 - 1   # the watermark at the end of a bounded input


def subtask_of(runtime_context: RuntimeContext) -> tuple[int, int]:
    """(index, parallelism) of this subtask. PyFlink 2.2's thread-mode context still calls the Flink 1.x methods that
    Flink 2 moved to ``getTaskInfo()`` (an AttributeError), so that is asked first when there."""
    java = getattr(runtime_context, "_runtime_context", None)
    if java is not None and hasattr(java, "getTaskInfo"):
        info = java.getTaskInfo()
        return int(info.getIndexOfThisSubtask()), int(info.getNumberOfParallelSubtasks())
    return runtime_context.get_index_of_this_subtask(), runtime_context.get_number_of_parallel_subtasks()


class Personalize(KeyedProcessFunction):
    """Per user: parse the record, load the state, run the core, save, register timers, emit.

    Every profile change goes to the changelog side output (the user's encoded state, the same bytes as the
    keyed state), and the loader turns it into the Redis profile: no Redis I/O for profiles here, and nothing
    in memory that a checkpoint does not cover (the Kafka sink flushes at each checkpoint).

    Served models come from Redis (``model:*``, written by the trainer): checked every
    ``models_refresh_ms`` of processing time. Not a second Flink input on purpose: a connected stream's
    watermark would either hold event time back or, once the events go idle, push it forward and fire
    every pattern and label timer early.
    """

    def __init__(self, core: Personalizer, redis_url: str, key_prefix: str, flush_interval_ms: int,
                 state_ttl_s: int, state_cache_users: int, models_refresh_ms: int,
                 models_refresh_events: int, limits: InputLimits, max_timestamp_skew_ms: int = 300_000,
                 example_batch: int = 50, rules_refresh_ms: int = 1000, allowed_lateness_ms: int = 0) -> None:
        self._rules_refresh_s = rules_refresh_ms / 1000
        self._allowed_lateness_ms = allowed_lateness_ms
        self._limits = limits
        self._skew_ms = max_timestamp_skew_ms
        self._example_batch = example_batch
        self._refresh_events = models_refresh_events
        self._core = core
        self._refresh_s = models_refresh_ms / 1000
        self._cache_size = state_cache_users
        self._redis = (redis_url, key_prefix)
        self._interval = flush_interval_ms
        self._state_ttl_s = state_ttl_s

    def open(self, runtime_context: RuntimeContext) -> None:
        # Our own bytes (state/user_state.py) in a pickled-bytes value: pickling a bytes object is a copy, and
        # PyFlink converts a primitive byte array element by element.
        desc = ValueStateDescriptor(USER_STATE, Types.PICKLED_BYTE_ARRAY())
        desc.enable_time_to_live(state_ttl(self._state_ttl_s))
        self._state = runtime_context.get_state(desc)
        self._cache: StateCache[UserState] = StateCache(self._cache_size)
        url, prefix = self._redis
        self._served = ServedModels()
        self._model_client = redis.Redis.from_url(url)
        self._model_keys = RedisKeys(prefix)
        self._next_refresh = 0.0
        self._until_refresh = 0
        self._next_rules_check = 0.0
        self._refused_rules = 0
        self._subtask = subtask_of(runtime_context)
        self._tick_due: int | None = None
        # Examples wait here for their trainer: one side-output record per model and batch, not per example
        # (each record costs a Java/Python crossing and a pickle). Sent when a batch fills, at the flush timer
        # (every flush_interval_ms) and when the input ends.
        self._batches: dict[str, list[Example]] = {}
        self._waiting = 0
        metrics = runtime_context.get_metrics_group()
        ingest = metrics.add_group("ingest")
        self._valid = ingest.counter("valid")
        self._untrusted = ingest.counter("timestamp_untrusted")
        self._untrusted_since_warning = 0
        self._next_untrusted_warning = 0.0
        self._rejected = {r: ingest.add_group("rejected").counter(r) for r in sorted(REJECTION_REASONS)}
        group = metrics.add_group("personalize")
        self._late = group.counter("late_events")
        self._group = group
        self._triggers = {p.name: group.add_group("triggers").counter(p.name) for p in self._core.engine.book.patterns}
        self._suppressed = {r: group.add_group("suppressed").counter(r) for r in ("no_consent", "frequency_cap", "bot")}
        self._examples = {n: group.add_group("examples").counter(n) for n in ("propensity", "segments", "bots")}
        self._bots = group.counter("bot_flags")
        self._bots_by: dict[str, dict[str, Any]] = {}   # group (bot_flags_by, bot_model) -> name -> counter
        self._duplicates = group.counter("duplicates")
        self._erasures = group.counter("erasures")
        self._consent_changes = group.counter("consent_changes")
        self._models_refused = group.counter("models_refused")
        self._timer_errors = group.counter("timer_errors")
        rules = group.add_group("rules")
        self._rules_switches = rules.counter("switches")
        self._rules_refused = rules.counter("refused")
        # The version in force, as a counter moved by the difference: a Python gauge is called from Flink's
        # metric-reporter thread, which crashed a TaskManager (jobs/model_training.py).
        self._rules_version = rules.counter("version")
        self._rules_version.inc(self._core.engine.book.version)
        self._dropped = {d: group.add_group("dropped").counter(d)
                         for d in ("cart_item", "demographic_attribute", "pii_attribute")}
        self._counts: dict[str, int] = dict.fromkeys(["valid", "late", *self._examples], 0)
        # Every record of this subtask, accounted once: applied, duplicate, or dead-lettered (by reason).
        self._ledger: dict[str, int] = {}
        # The rule set in force now, before any timer fires: after a restore the job graph holds the start-up one.
        self._refresh_rules(time.monotonic())

    def _load(self, user_id: str) -> UserState | None:
        state = self._cache.get(user_id)
        if state is None:
            data = self._state.value()
            if data is not None:
                state = decode_state(data)
        return state

    def _refresh_rules(self, now: float) -> None:
        """Every ``rules.refresh_ms``: switch to a newly published rule set (README "Rules at runtime"). A rule set
        that fails the start-up checks here is refused and counted; the one in force goes on."""
        self._next_rules_check = now + self._rules_refresh_s
        try:
            version = current_version(self._model_client, self._model_keys)
            if version is None or version in (self._core.engine.book.version, self._refused_rules):
                return
            published = rule_set(self._model_client, self._model_keys, version)
            if published is None:
                return
            try:
                book = check_book(published.book(), self._allowed_lateness_ms, f"rule set v{version}")
            except ConfigError as e:
                self._refused_rules = version
                self._rules_refused.inc()
                log.error("refused rule set v%d (v%d stays in force): %s", version, self._core.engine.book.version, e)
                return
            was = self._core.engine.book.version
            self._core.use_rules(book)
            self._rules_version.inc(version - was)
            self._rules_switches.inc()
            log.info("rule set v%d in force (was v%d)", version, was)
            record_applied(self._model_client, self._model_keys, *self._subtask, version)
        except redis.RedisError as e:   # the rule set in force goes on; the next check retries
            log.warning("could not check the rule-set registry: %s", e)

    def _refresh_experiments(self) -> None:
        """The tallies of the Thompson-sampled experiments, for assigning new users (at the models' pace)."""
        for name in self._core.engine.thompson_experiments():
            try:
                raw = self._model_client.hget(self._model_keys.experiment(name), "summary")
            except redis.RedisError as e:
                log.warning("could not read experiment %s: %s", name, e)
                return
            if raw:
                summary = json.loads(raw)
                self._core.engine.experiment_stats[name] = {v: (int(x["exposed"]), int(x["converted"]))
                                                            for v, x in summary.items()}

    def _refresh_models(self) -> None:
        # Every refresh_ms, and every refresh_every_events: in a catch-up replay one second holds hours of
        # event time, and a model served that stale would score (and be judged on) old knowledge.
        self._until_refresh -= 1
        now = time.monotonic()
        if now >= self._next_rules_check:
            self._refresh_rules(now)
        if now >= self._next_refresh or self._until_refresh <= 0:
            self._next_refresh = now + self._refresh_s
            self._until_refresh = self._refresh_events
            refused = self._served.refused
            try:
                self._served.refresh(self._model_client, self._model_keys)
            except redis.RedisError as e:   # keep serving what we have; the next refresh retries
                log.warning("could not refresh the served models: %s", e)
            self._refresh_experiments()
            if self._served.refused > refused:   # a malformed snapshot in Redis: refused, the last good one serves
                self._models_refused.inc(self._served.refused - refused)
                log.warning("refused a model snapshot (the last good one keeps serving): %s", self._served.last_refusal)

    def process_element(self, record: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        raw: bytes = record[0] if record[0] is not None else b""
        user_id = ctx.get_current_key()
        try:
            yield from self._process(raw, record, user_id, ctx)
        except Exception as e:   # noqa: BLE001 - a bug in the wiring must not stop the stream either
            self._cache.drop(user_id)
            log.exception("record %s/%s/%s failed; dead-lettered", record[1], record[2], record[3])
            yield self._reject(raw, Rejection("processing_error", f"{type(e).__name__}: {e}"[:1000]), record, user_id)

    def _untrusted_timestamp(self, event: Event, record: Row) -> None:
        """A valid event whose Kafka timestamp did not move the watermark: counted, and warned about at most
        once a minute (one bad producer can send millions)."""
        self._untrusted.inc()
        self._untrusted_since_warning += 1
        now = time.monotonic()
        if now >= self._next_untrusted_warning:
            self._next_untrusted_warning = now + 60
            log.warning("%d event(s) since the last warning had a Kafka timestamp more than %d ms from their "
                        "event_time, or ahead of the wall clock (e.g. %s/%s/%s: timestamp %s, event_time %d ms); they "
                        "do not move the watermark. Likely cause: the producer does not set the record timestamp to "
                        "the event time.", self._untrusted_since_warning, self._skew_ms, record[1], record[2],
                        record[3], record[4], event.event_time_ms)
            self._untrusted_since_warning = 0

    def _counter(self, counters: dict[str, Any], group: str, name: str) -> Any:
        """The counter of ``name``, registered on first use (names not known at start-up never raise)."""
        counter = counters.get(name)
        if counter is None:
            counter = counters[name] = self._group.add_group(group).counter(name)
        return counter

    def _reject(self, raw: bytes, rejection: Rejection, record: Row, key: str | None) -> tuple[OutputTag, Row]:
        """Count a refused record (late events in ``personalize.late_events``, the rest by reason) and make its
        dead-letter output."""
        if rejection.reason == "late_event":
            self._counts["late"] += 1
        else:
            self._rejected[rejection.reason].inc()
        self._account(f"dead_letter.{rejection.reason}")
        return DEAD_LETTERS, Row(key, self._dead_letter(raw, rejection, record))

    def _account(self, outcome: str) -> None:
        self._ledger[outcome] = self._ledger.get(outcome, 0) + 1

    def _process(self, raw: bytes, record: Row, user_id: str, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        now = int(time.time() * 1000)
        event = parse_event(raw, self._limits, now)
        if isinstance(event, Event) and event.user_id != user_id:
            event = Rejection("key_mismatch", f"user_id {event.user_id!r} differs from the key read on the Java "
                              f"side ({user_id!r}); duplicate user_id fields?", "user_id")
        if not isinstance(event, Event):
            # Keyed by the user id the Java side read, when it could: an erasure then reaches this entry too.
            yield self._reject(raw, event, record, user_id or None)
            return
        self._counts["valid"] += 1
        if self._tick_due is None:   # the counts reach Flink's counters at the next tick, even if the stream stops
            self._arm_tick(ctx, now)
        if not record[5]:
            self._untrusted_timestamp(event, record)
        self._refresh_models()
        step = self._core.on_event(self._load(user_id), event, self._served)
        if step.failed:
            self._cache.drop(user_id)
            log.error("record %s/%s/%s: %s; dead-lettered", record[1], record[2], record[3],
                      step.dead_letter.detail if step.dead_letter else "failed")
        if step.dead_letter is not None:
            yield self._reject(raw, step.dead_letter, record, user_id)
            return
        if step.duplicate:
            self._duplicates.inc()
            self._account("duplicate")
            return
        self._account("applied")
        for what in step.dropped:
            self._counter(self._dropped, "dropped", what).inc()
        purged = self._purge_examples(user_id) if step.erase else 0
        yield from self._carry_out(user_id, step, ctx, now)   # an erasure's triggers: those due before it
        if step.erase:
            # Tombstones wherever the user's data is keyed (README "Privacy"), after anything released: the
            # triggers and dead-letter topics, and the changelog, from which the loader deletes the Redis
            # profile and memberships.
            self._erasures.inc()
            yield Row(user_id, None)
            yield DEAD_LETTERS, Row(user_id, None)
            yield CHANGES, Row(user_id, None)
        if step.audit is not None:
            if not step.erase:
                self._consent_changes.inc()
            yield AUDIT, Row(user_id, self._audit(step, event, record, now, purged))

    def _purge_examples(self, user_id: str) -> int:
        """Drop the user's training examples still waiting for their batch; returns how many."""
        purged = 0
        for model, examples in self._batches.items():
            kept = [ex for ex in examples if ex.user_id != user_id]
            purged += len(examples) - len(kept)
            self._batches[model] = kept
        self._waiting -= purged
        return purged

    def _audit(self, step: Step, event: Event, record: Row, now: int, purged: int) -> str:
        assert step.audit is not None
        stores = None
        if step.erase:
            tombstone = {"status": "tombstone"}
            stores = {"training_examples": {"status": "dropped", "count": purged}, "profile_changelog": tombstone,
                      "triggers_topic": tombstone, "dead_letter_topic": tombstone,
                      "redis_profile": {"status": "deleted_by_loader"}}
        source = SourceRef(record[1], record[2], record[3], kafka_timestamp_ms(record[4]))
        return audit_record(step.audit, event.user_id, event.event_id, event.event_time_ms, source, now, stores)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from self._tick(timestamp, ctx)
            return
        user_id = ctx.get_current_key()
        step = self._core.on_timer(self._load(user_id), user_id, timestamp)
        if step.failed:   # no record to dead-letter: counted and logged; the user's other timers still fire
            self._cache.drop(user_id)
            self._timer_errors.inc()
            log.error("timer %d of user %r failed: %s", timestamp, user_id, step.dead_letter.detail if step.dead_letter else "")
        yield from self._carry_out(user_id, step, ctx, int(time.time() * 1000))
        if ctx.timer_service().current_watermark() >= END_OF_INPUT:   # the input ended: no flush timer fires now
            yield from self._send_examples()

    def close(self) -> None:
        # One line per subtask that reconciles its input (stdout reaches the job's log on the mini-cluster and
        # the TaskManager's .out file on a cluster): applied + duplicates + dead letters = records read.
        print("persona-ledger " + json.dumps(self._ledger, sort_keys=True), flush=True)
        self._push_counts()
        self._model_client.close()

    def _carry_out(self, user_id: str, step: Step, ctx: Any, now: int) -> Iterator[Any]:
        state = step.state
        if step.timers:
            timers = ctx.timer_service()
            for t in step.timers:
                timers.register_event_time_timer(t)
        for _, reason in step.suppressed:
            self._counter(self._suppressed, "suppressed", reason).inc()
        if step.bot_flagged:
            self._bots.inc()
        for group, name in step.bot_counts:   # which one flagged, and the model against the rule (README "Models")
            self._counter(self._bots_by.setdefault(group, {}), group, name).inc()
        if step.examples:
            self._arm_tick(ctx, now)
            for ex in step.examples:
                self._counts[ex.model] += 1
                self._batches.setdefault(ex.model, []).append(ex)
            self._waiting += len(step.examples)
            if self._waiting >= self._example_batch:
                yield from self._send_examples()
        for outcome in step.experiments:
            spec = self._core.engine.experiment(outcome.experiment)
            yield OUTCOMES, Row(outcome.experiment, outcome.to_json(spec is not None and outcome.variant == spec.holdout))
        for trigger in step.triggers:
            # A deferred trigger restored from a savepoint may name a pattern the new pattern file renamed or removed.
            self._counter(self._triggers, "triggers", trigger.pattern).inc()
            yield Row(trigger.user_id, trigger.to_json())
        if state is None:
            return
        if state.epoch_ms == 0 and step.store:   # a state this job created (first event, or after an erasure)
            state.epoch_ms = now
        if step.store or step.write_profile:
            data = encode_state(state)
            if step.store:
                self._state.update(data)
                self._cache.put(user_id, state)
            if step.write_profile:
                yield CHANGES, Row(user_id, changelog_value(data, now))

    def _push_counts(self) -> None:
        """Counts of every event go to Flink's counters at each flush: a counter's inc() is a Java call."""
        counters = {"valid": self._valid, "late": self._late, **self._examples}
        for name, n in self._counts.items():
            if n:
                counters[name].inc(n)
        self._counts = dict.fromkeys(counters, 0)

    def _arm_tick(self, ctx: Any, now: int) -> None:
        """A processing-time timer every ``flush_interval_ms`` once the first record came: the counts and example
        batches go out, and a newly published rule set is switched to, even while no record comes."""
        if self._tick_due is None:
            self._tick_due = now + self._interval
            ctx.timer_service().register_processing_time_timer(self._tick_due)

    def _tick(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self._push_counts()
        yield from self._send_examples()
        now = time.monotonic()
        if now >= self._next_rules_check:
            self._refresh_rules(now)
        # One chain of ticks: a timer restored from a checkpoint, beside the one armed since, does not re-arm.
        if self._tick_due is None or timestamp == self._tick_due:
            self._tick_due = None
            if ctx.timer_service().current_watermark() < END_OF_INPUT:
                self._arm_tick(ctx, int(time.time() * 1000))

    def _send_examples(self) -> Iterator[Any]:
        for model, examples in self._batches.items():
            if examples:
                yield EXAMPLES, ExampleBatch(model, tuple(examples))
        self._batches = {}
        self._waiting = 0

    def _dead_letter(self, raw: bytes, rejection: Rejection, record: Row) -> str:
        source = SourceRef(record[1], record[2], record[3], kafka_timestamp_ms(record[4]))
        return dead_letter_record(raw, rejection, source, int(time.time() * 1000), self._limits.dead_letter_raw_bytes,
                                  self._limits.masked_fields)


def build(keyed: KeyedStream, settings: JobSettings, book: PatternBook
          ) -> tuple[DataStream, DataStream, DataStream, DataStream, DataStream]:
    """(trigger rows, dead-letter rows, model-update rows, profile changes, audit rows): (k, v) rows, v a string
    but for the changes' bytes, None for a tombstone. The caller attaches sources and sinks."""
    r, m = settings.redis, settings.models
    personalized = (
        keyed.process(Personalize(personalizer(settings, book), r.connection_url(), r.key_prefix,
                                  r.flush_interval_ms, settings.flink.state_ttl_s,
                                  settings.flink.state_cache_users, m.refresh_ms, m.refresh_every_events,
                                  input_limits(settings), settings.source.max_timestamp_skew_ms,
                                  rules_refresh_ms=settings.rules.refresh_ms,
                                  allowed_lateness_ms=settings.profile.allowed_lateness_ms),
                      output_type=KEYED_JSON)
        .name("personalize").uid("personalize")
    )
    published = (
        personalized.get_side_output(EXAMPLES)
        .key_by(example_key, key_type=Types.STRING())
        .process(TrainModels(m.seed, m.segments, m.publish_every_examples, m.publish_interval_ms, m.keep_versions,
                             r.connection_url(), r.key_prefix), output_type=KEYED_JSON)
        .name("train-models").uid("train-models")
    )
    tallied = (
        personalized.get_side_output(OUTCOMES)
        .key_by(experiment_key, key_type=Types.STRING())
        .process(TallyExperiments(r.connection_url(), r.key_prefix), output_type=KEYED_JSON)
        .name("tally-experiments").uid("tally-experiments")
    )
    # The tallies emit nothing; joined to the model updates' stream only to be part of the job graph.
    return (personalized, personalized.get_side_output(DEAD_LETTERS), published.union(tallied),
            personalized.get_side_output(CHANGES), personalized.get_side_output(AUDIT))


class LiveLine:
    """On the mini-cluster: announce the REST address for ``persona status``, and print a live line every few
    seconds (events/s, dead letters, triggers) unless quiet."""

    def __init__(self, settings: JobSettings, rest_url: str, quiet: bool, every_s: float = 5.0) -> None:
        self._settings, self._url, self._quiet, self._every = settings, rest_url, quiet, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="persona-live-line", daemon=True)
        self._path = announce(settings, rest_url)

    def start(self) -> LiveLine:
        if not self._quiet:
            self._thread.start()
        return self

    def _run(self) -> None:
        previous, at = None, time.monotonic()
        while not self._stop.wait(self._every):
            try:
                status = flink_status(self._url, only="personalize")
            except Exception:   # noqa: BLE001 - not up yet, or ending: the next tick tries again
                continue
            now = time.monotonic()
            print(live_line(status, previous, now - at), flush=True)
            previous, at = status, now

    def stop(self) -> None:
        self._stop.set()
        withdraw(self._path)


def check_topics(settings: JobSettings) -> None:
    """The input and output topics must exist (their partitions and retention are the operator's choice); the
    profile changelog is the job's own and is created, compacted, when missing."""
    t = settings.kafka.topics
    try:
        admin = KafkaAdminClient(**settings.kafka.client_config(), request_timeout_ms=15_000)
        try:
            existing = set(admin.list_topics())
            if t.profiles not in existing:
                ensure_changelog_topic(admin, t.profiles, settings.kafka.partitions, settings.kafka.replication_factor)
            if t.audit not in existing:
                ensure_audit_topic(admin, settings)
        finally:
            admin.close()
    except KafkaError as e:
        raise ConfigError(f"kafka.bootstrap_servers: {settings.kafka.bootstrap_servers} did not answer ({e})") from None
    for key, name in (("events", t.events), ("dead_letter", t.dead_letter), ("triggers", t.triggers),
                      ("models", t.models)):
        if name not in existing:
            raise ConfigError(f"kafka.topics.{key}: topic {name!r} does not exist on {settings.kafka.bootstrap_servers}")


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    args, settings = parse_job_args("personalization", __doc__.splitlines()[0], argv)
    try:
        check_patterns(settings)   # a broken file is named before any service is reached
        check_topics(settings)
        book = rule_set_in_force(settings)
    except ConfigError as e:
        fail("personalization", str(e))
    rest_port = free_port() if args.deployment == "local" else None
    prometheus_port = free_port() if args.deployment == "local" and settings.flink.prometheus else None
    env, t_env = make_environment(settings.flink, args.deployment, rest_port, prometheus_port)
    if prometheus_port is not None:
        print(f"job metrics (Prometheus): http://127.0.0.1:{prometheus_port}/metrics", flush=True)
    live = None
    if rest_port is not None:
        rest_url = f"http://127.0.0.1:{rest_port}"
        print(f"web UI and REST API: {rest_url} (persona status reads it)", flush=True)
        live = LiveLine(settings, rest_url, quiet=args.quiet).start()
    keyed = keyed_raw_events(t_env, settings.kafka, settings.source, bounded=args.bounded,
                             max_future_ms=settings.limits.max_event_future_ms)
    triggers, dead_letters, published, changes, audit = build(keyed, settings, book)
    statements = t_env.create_statement_set()
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "trigger_sink", settings.kafka.topics.triggers,
                                          exactly_once=settings.kafka.triggers_delivery == "exactly-once"),
                          t_env.from_data_stream(triggers))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "dead_letter_sink", settings.kafka.topics.dead_letter),
                          t_env.from_data_stream(dead_letters))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "model_sink", settings.kafka.topics.models),
                          t_env.from_data_stream(published))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "profile_sink", settings.kafka.topics.profiles,
                                          value_type="BYTES"), t_env.from_data_stream(changes))
    # The audit follows the triggers' delivery: exactly-once gives a read_committed reader one record per request.
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "audit_sink", settings.kafka.topics.audit,
                                          exactly_once=settings.kafka.triggers_delivery == "exactly-once"),
                          t_env.from_data_stream(audit))
    statements.attach_as_datastream()
    print("stable uids: " + ", ".join(pin_kafka_uids(env, settings.flink.previous_source_id)), flush=True)
    log.info("starting personalization (kafka %s, redis %s, mode %s)", settings.kafka.bootstrap_servers,
             settings.redis.masked_url, settings.flink.execution_mode)
    # On the mini-cluster the loader runs here, beside the JVM that runs the job (another core); on a cluster
    # `flink run` returns at submission, and `persona loader` runs as its own service.
    loader = EmbeddedLoader(settings).start() if args.deployment == "local" and settings.loader.embedded else None
    if loader is not None and loader.metrics_port is not None:
        print(f"loader metrics (Prometheus): http://{settings.loader.metrics_host}:{loader.metrics_port}/metrics",
              flush=True)
    try:
        env.execute("persona-personalization")
    finally:
        if live is not None:
            live.stop()
        if loader is not None:
            stats = loader.finish(catch_up=args.bounded)
            print("persona-loader " + json.dumps(stats.as_dict(), sort_keys=True), flush=True)


if __name__ == "__main__":
    # Run through the importable module: functions defined in __main__ would be pickled by value,
    # dragging module globals (loggers with locks) into the job graph.
    from jobs.personalization import main as _main

    _main()
