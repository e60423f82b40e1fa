"""The personalization job: validated ingestion -> per-user profile, models, patterns -> Redis, Kafka.

Kafka (events) -> parse/validate -> key by user -> Personalize ------------> triggers topic
                        |                               |  |-> Redis profiles and segment sets
                        +-> dead letters <-- late ------+  +-> examples -> key by model -> TrainModels
                                                        ^                                   |
                        served models: Redis model:* ---+---- snapshots (and the models topic) <-+

Run on the embedded mini-cluster: ``python -m jobs.personalization [--bounded] [--set key=value ...]``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedProcessFunction, OutputTag, RuntimeContext, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from jobs.job_cli import fail, parse_job_args, setup_logging
from jobs.kafka_io import keyed_json_sink, raw_event_stream
from jobs.model_training import TrainModels, example_key
from jobs.parse_events import DEAD_LETTERS, KEYED_JSON, parse
from jobs.runtime import make_environment
from jobs.state_ttl import state_ttl
from operators.dead_letter import dead_letter_record
from operators.events import Event, Rejection, SourceRef
from operators.model_scoring import Example, ModelRules, ModelStep, ServedModels
from operators.pattern_engine import Outcome, PatternEngine
from operators.pattern_spec import PatternBook, load_patterns
from persona.settings import ConfigError, JobSettings, resolve_path
from state.journey import STAGES
from state.keys import RedisKeys
from state.profile import ProfileRules, UserState, apply_event, is_late, profile_view, redis_fields
from state.profile_store import ProfileWriter
from state.state_cache import StateCache

log = logging.getLogger(__name__)
# Persisted state name: renaming it loses state on restore from a savepoint.
USER_STATE = "user_state_v1"
EXAMPLES = OutputTag("model-examples", Types.PICKLED_BYTE_ARRAY())


def model_rules(settings: JobSettings) -> ModelRules:
    m = settings.models
    return ModelRules(label_window_ms=m.label_window_ms, max_pending=m.max_pending_per_user,
                      bot_threshold=m.bot_threshold, bot_rule_events_per_min=m.bot_rule_events_per_min,
                      bot_rule_min_events=m.bot_rule_min_events, bot_min_events=m.bot_min_session_events,
                      score_every=m.score_every_events, label_timer_resolution_ms=m.label_timer_resolution_ms)


def profile_rules(settings: JobSettings) -> ProfileRules:
    p = settings.profile
    return ProfileRules(session_gap_ms=p.session_gap_ms, recent_sessions=p.recent_sessions,
                        affinity_half_life_ms=p.affinity_half_life_ms, affinity_keep=p.affinity_keep,
                        loyal_min_purchases=p.loyal_min_purchases, allowed_lateness_ms=p.allowed_lateness_ms)


def check_patterns(settings: JobSettings) -> PatternBook:
    """Compile the pattern file and check it against the lateness contract of absence patterns."""
    book = load_patterns(resolve_path(settings.patterns_file))
    for spec in book.patterns:
        if spec.kind == "absence" and spec.within_ms <= settings.profile.allowed_lateness_ms:
            raise ConfigError(f"{settings.patterns_file}: patterns.{spec.name}.within must exceed "
                              f"profile.allowed_lateness_ms ({settings.profile.allowed_lateness_ms} ms)")
    return book


class Personalize(KeyedProcessFunction):
    """Per user: load the one state value, apply the event, score, run the patterns, save, write Redis, emit.

    Served models come from Redis (``model:*``, written by the trainer): checked every
    ``models_refresh_ms`` of processing time. Not a second Flink input on purpose: a connected stream's
    watermark would either hold event time back or, once the events go idle, push it forward and fire
    every pattern and label timer early.
    """

    def __init__(self, rules: ProfileRules, book: PatternBook, model_rules: ModelRules, redis_url: str,
                 key_prefix: str, profile_ttl_s: int, flush_interval_ms: int, max_batch: int, state_ttl_s: int,
                 state_cache_users: int, segments: int, models_refresh_ms: int) -> None:
        self._refresh_s = models_refresh_ms / 1000
        self._rules, self._book, self._model_rules = rules, book, model_rules
        self._segment_names = tuple(f"seg{i}" for i in range(segments))
        self._cache_size = state_cache_users
        self._redis = (redis_url, key_prefix, profile_ttl_s, flush_interval_ms, max_batch)
        self._state_ttl_s = state_ttl_s

    def open(self, runtime_context: RuntimeContext) -> None:
        desc = ValueStateDescriptor(USER_STATE, Types.PICKLED_BYTE_ARRAY())
        desc.enable_time_to_live(state_ttl(self._state_ttl_s))
        self._state = runtime_context.get_state(desc)
        self._cache = StateCache(self._cache_size)
        url, prefix, ttl_s, interval, max_batch = self._redis
        self._interval = interval
        self._writer = ProfileWriter.from_url(url, RedisKeys(prefix), ttl_s, interval, max_batch,
                                              segments=STAGES + self._segment_names)
        self._engine = PatternEngine(self._book)
        self._models = ModelStep(self._model_rules)
        self._served = ServedModels()
        self._model_client = redis.Redis.from_url(url)
        self._model_keys = RedisKeys(prefix)
        self._next_refresh = 0.0
        metrics = runtime_context.get_metrics_group().add_group("personalize")
        self._late = metrics.counter("late_events")
        self._triggers = {p.name: metrics.add_group("triggers").counter(p.name) for p in self._book.patterns}
        self._suppressed = {r: metrics.add_group("suppressed").counter(r) for r in ("no_consent", "frequency_cap", "bot")}
        self._examples = {n: metrics.add_group("examples").counter(n) for n in ("propensity", "segments", "bots")}
        self._bots = metrics.counter("bot_flags")

    def _load(self, user_id: str) -> UserState | None:
        state = self._cache.get(user_id)
        return state if state is not None else self._state.value()

    def _store(self, user_id: str, state: UserState) -> None:
        self._state.update(state)
        self._cache.put(user_id, state)

    def _refresh_models(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self._refresh_s
            try:
                self._served.refresh(self._model_client, self._model_keys)
            except redis.RedisError as e:   # keep serving what we have; the next refresh retries
                log.warning("could not refresh the served models: %s", e)

    def process_element(self, event: Event, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        self._refresh_models()
        state = self._load(event.user_id)
        now = int(time.time() * 1000)
        if is_late(state, event, self._rules):
            self._late.inc()
            yield DEAD_LETTERS, Row(event.user_id, self._late_record(event, state, now))
            return
        if event.event_type == "erasure_request":
            self._schedule_flush(ctx, now)
            self._writer.erase(event.user_id, now)
        state = apply_event(state, event, self._rules)
        view = profile_view(event.user_id, state, self._rules)
        was_bot = self._models.outputs(state).bot
        examples, deadlines = self._models.on_event(state, event, view, self._served)
        if self._models.outputs(state).bot and not was_bot:
            self._bots.inc()
        for deadline in deadlines:
            ctx.timer_service().register_event_time_timer(deadline)
        yield from self._send(examples)
        outcome = self._engine.on_event(state, event, view)
        yield from self._emit(outcome, ctx)
        # Patterns changed nothing the view shows unless they bumped the version (a released match).
        self._save(event.user_id, state, now, ctx, view if view["profile_version"] == state.version else None)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._writer.flush()
            return
        state = self._load(ctx.get_current_key())
        if state is None:
            return
        version = state.version
        examples = self._models.on_timer(state, timestamp)
        yield from self._send(examples)
        outcome = self._engine.on_timer(state, ctx.get_current_key(), timestamp)
        yield from self._emit(outcome, ctx)
        if state.version != version:   # a released match changed the profile (stage)
            self._save(ctx.get_current_key(), state, int(time.time() * 1000), ctx)
        elif examples or outcome.triggers or outcome.timers or outcome.suppressed:
            self._store(ctx.get_current_key(), state)
        # Otherwise the timer only pruned expired entries: the cached object holds that, and the next
        # write persists it. Restoring the unpruned value gives the same results (entries were expired).

    def close(self) -> None:
        self._writer.close()
        self._model_client.close()

    def _send(self, examples: list[Example]) -> Iterator[Row]:
        for ex in examples:
            self._examples[ex.model].inc()
            yield EXAMPLES, ex

    def _emit(self, outcome: Outcome, ctx: Any) -> Iterator[Row]:
        for t in outcome.timers:
            ctx.timer_service().register_event_time_timer(t)
        for pattern, reason in outcome.suppressed:
            self._suppressed[reason].inc()
        for trigger in outcome.triggers:
            self._triggers[trigger.pattern].inc()
            yield Row(trigger.user_id, trigger.to_json())

    def _save(self, user_id: str, state: UserState, now: int, ctx: Any,
              view: dict[str, Any] | None = None) -> None:
        self._store(user_id, state)
        if state.version == 0:
            return   # erased and nothing since: no profile to write
        if view is None:
            view = profile_view(user_id, state, self._rules)
            ModelStep.annotate(view, self._models.outputs(state))
        self._schedule_flush(ctx, now)
        memberships = (view["stage"], view["segment"]) if view.get("segment") else (view["stage"],)
        self._writer.put(user_id, state.version, partial(redis_fields, view, now), now, segments=memberships)
        if self._writer.due(now):
            self._writer.flush()

    def _schedule_flush(self, ctx: Any, now: int) -> None:
        """The first write of a batch arms a processing-time timer, so the batch is flushed even if the stream stops."""
        if self._writer.pending == 0:
            ctx.timer_service().register_processing_time_timer(now + self._interval)

    def _late_record(self, event: Event, state: UserState | None, now: int) -> str:
        newest = state.newest_event_ms if state is not None else 0
        rejection = Rejection("late_event", f"event_time {event.event_time_ms} is more than "
                              f"{self._rules.allowed_lateness_ms} ms older than the user's newest event ({newest})",
                              "event_time")
        return dead_letter_record(event.raw or b"", rejection, event.source or SourceRef("", -1, -1), now)


def build(raw: DataStream, settings: JobSettings, book: PatternBook
          ) -> tuple[DataStream, DataStream, DataStream]:
    """(trigger rows, dead-letter rows, model-update rows), all (k, v) string rows. The caller attaches sources and sinks."""
    events, bad = parse(raw, keep_raw=True)
    r, m = settings.redis, settings.models
    personalized = (
        events.key_by(lambda e: e.user_id, key_type=Types.STRING())
        .process(Personalize(profile_rules(settings), book, model_rules(settings), r.url.get_secret_value(),
                             r.key_prefix, r.profile_ttl_s, r.flush_interval_ms, r.flush_max_batch,
                             settings.flink.state_ttl_s, settings.flink.state_cache_users, m.segments,
                             m.refresh_ms),
                 output_type=KEYED_JSON)
        .name("personalize").uid("personalize")
    )
    published = (
        personalized.get_side_output(EXAMPLES)
        .key_by(example_key, key_type=Types.STRING())
        .process(TrainModels(m.seed, m.segments, m.publish_every_examples, m.publish_interval_ms, m.keep_versions,
                             r.url.get_secret_value(), r.key_prefix), output_type=KEYED_JSON)
        .name("train-models").uid("train-models")
    )
    return personalized, bad.union(personalized.get_side_output(DEAD_LETTERS)), published


def check_topics(settings: JobSettings) -> None:
    t = settings.kafka.topics
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=15_000)
        existing = set(admin.list_topics())
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
        book = check_patterns(settings)
        check_topics(settings)
    except ConfigError as e:
        fail("personalization", str(e))
    env, t_env = make_environment(settings.flink, args.deployment)
    raw = raw_event_stream(t_env, settings.kafka, settings.source, bounded=args.bounded)
    triggers, dead_letters, published = build(raw, settings, book)
    statements = t_env.create_statement_set()
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "trigger_sink", settings.kafka.topics.triggers),
                          t_env.from_data_stream(triggers))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "dead_letter_sink", settings.kafka.topics.dead_letter),
                          t_env.from_data_stream(dead_letters))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "model_sink", settings.kafka.topics.models),
                          t_env.from_data_stream(published))
    statements.attach_as_datastream()
    log.info("starting personalization (kafka %s, redis %s, mode %s)", settings.kafka.bootstrap_servers,
             settings.redis.masked_url, settings.flink.execution_mode)
    env.execute("persona-personalization")


if __name__ == "__main__":
    # Run through the importable module: functions defined in __main__ would be pickled by value,
    # dragging module globals (loggers with locks) into the job graph.
    from jobs.personalization import main as _main

    _main()
