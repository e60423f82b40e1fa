"""The personalization job: Kafka events -> batches per shard -> the per-event runner -> Kafka (and Redis via the loader).

Kafka events -> key by shard, batch (Java: BatchByShard) -> Personalize (one Python call per batch: the runner,
  |                                                           map state per user, one timer per shard)
  |            triggers, dead letters, profile changes, audit <- one row of parallel arrays per batch (SQL UNNEST)
  |            examples -> key by model -> TrainModels -> snapshots -> Redis model:* -> served models
  |            item signals (recommend.enabled) -> key by item shard, join (Java: ConcatByShard) -> FoldItems
  |                                                -> Redis item:*, items:weight* (jobs/item_folding.py)
  +-> profile changelog topic -> loader -> Redis profiles

All stream logic is ``operators.runner.Runner`` (and the core it drives); this module only wires it into Flink.
Run on the embedded mini-cluster: ``python -m jobs.personalization [--bounded] [--set key=value ...]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from py4j.java_gateway import JavaObject
from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    KeyedStream,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
    TimeDomain,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from jobs.changelog_seed import Seed, read_seeds, sent_trigger_ids, without_resent
from jobs.experiment_tally import TallyExperiments, experiment_key
from jobs.flink_counters import FlinkCounters
from jobs.forked_submit import submit_in_child
from jobs.item_folding import FoldItems
from jobs.job_cli import fail, parse_job_args, setup_logging
from jobs.kafka_io import keyed_json_sink, pin_kafka_uids, sharded_batches
from jobs.model_training import TrainModels, example_key
from jobs.runtime import make_environment, prepare_driver
from jobs.served_follower import ServedFollower
from jobs.shard_timers import ShardTimers
from jobs.state_ttl import state_ttl
from operators.item_table import signal_batches
from operators.model_scoring import ExampleBatch
from operators.online_models import MODEL_NAMES
from operators.pattern_spec import PatternBook
from operators.reasons import Dropped, RejectReason, SuppressReason
from operators.runner import (
    AUDIT,
    BOT_FLAGS,
    CHANGE,
    CONSENT_CHANGES,
    DEAD_LETTER,
    DUPLICATES,
    END_OF_INPUT,
    ERASURES,
    HISTORY,
    HISTORY_TRIGGER,
    LATE,
    TIMER_ERRORS,
    TRIGGER,
    TRIGGER_LIST_ERRORS,
    UNTRUSTED,
    VALID,
    Result,
    Runner,
    decode_batch,
)
from operators.untrusted_warning import UntrustedWarnings
from persona.backfill import (
    History,
    committed_offsets,
    history_of,
    live_command,
    records_left,
    summary_lines,
    wait_for_history,
)
from persona.bounded_start import bounded_start, topic_offsets
from persona.loader import EmbeddedLoader
from persona.rules import check_patterns, input_limits, personalizer, recommend_rules, rule_set_in_force
from persona.serving import redis_trigger_lists
from persona.settings import ConfigError, JobSettings
from persona.stack.procs import free_port
from persona.stack.topics import ensure_changelog_topic, ensure_own_topic
from persona.status import JOB_NAME, announce, flink_status, live_line, withdraw
from state.user_state import USER_STATE
from state.user_timers import TIMERS_STATE, UserTimers

log = logging.getLogger(__name__)
KEYED_JSON = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
# One row per batch: parallel arrays (an ARRAY<ROW> is corrupted across the thread-mode boundary), split again
# and routed to the topics on the Java side (``route``). The item signals per item shard have arrays of their own:
# in the shared ones, each of the four topic queries would expand them too (that cost more than the signals).
_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
OUTPUTS = Types.ROW_NAMED(["kinds", "keys", "vals", "item_shards", "item_vals"],
                          [Types.BASIC_ARRAY(Types.STRING()), Types.BASIC_ARRAY(Types.STRING()), Types.OBJECT_ARRAY(_BYTES),
                           Types.BASIC_ARRAY(Types.INT()), Types.OBJECT_ARRAY(_BYTES)])
EXAMPLES = OutputTag("model-examples", Types.PICKLED_BYTE_ARRAY())
# Resolved exposures of experiments (docs/behaviour.md "Experiments"), keyed by experiment name.
OUTCOMES = OutputTag("experiment-outcomes", KEYED_JSON)
SEEDED_STATE = "seeded_from_changelog"   # per shard (jobs/changelog_seed.py)
ITEM_BATCH_SIGNALS = 50_000   # a shard's joined signals go to the item operator at this many (or at fold_ms)
KNOWN_COUNTERS = [VALID, UNTRUSTED, LATE, DUPLICATES, ERASURES, CONSENT_CHANGES, TIMER_ERRORS, BOT_FLAGS, TRIGGER_LIST_ERRORS,
                  ("personalize", "models_refused"), ("personalize", "rules", "switches"),
                  ("personalize", "rules", "refused"), ("personalize", "rules", "version"),
                  *(("ingest", "rejected", str(r)) for r in RejectReason if r is not RejectReason.LATE_EVENT),
                  *(("personalize", "suppressed", str(r)) for r in SuppressReason),
                  *(("personalize", "examples", m) for m in MODEL_NAMES),
                  *(("personalize", "dropped", str(d)) for d in Dropped)]


def subtask_of(runtime_context: RuntimeContext) -> tuple[int, int]:
    """(index, parallelism) of this subtask. PyFlink 2.2's thread-mode context still calls the Flink 1.x methods that
    Flink 2 moved to ``getTaskInfo()`` (an AttributeError), so that is asked first when there."""
    java = getattr(runtime_context, "_runtime_context", None)
    if java is not None and hasattr(java, "getTaskInfo"):
        info = java.getTaskInfo()
        return int(info.getIndexOfThisSubtask()), int(info.getNumberOfParallelSubtasks())
    return runtime_context.get_index_of_this_subtask(), runtime_context.get_number_of_parallel_subtasks()


class Personalize(KeyedProcessFunction):
    """Per shard and batch: run the batch through the runner, persist the changed users and timers, emit.

    State per shard: a map of user -> encoded state (``USER_STATE``, written once per batch with ``put_all``) and a
    map of user -> pending timer times (``TIMERS_STATE``), with one Flink event-time timer per shard at its
    earliest time. The user's timers fire in the runner, in (time, user) order, when the watermark passes.
    Every profile change goes to the changelog (the user's encoded state), which the loader turns into the Redis
    profile: nothing in memory that a checkpoint does not cover (the batcher flushes before every barrier).
    """

    def __init__(self, settings: JobSettings, book: PatternBook) -> None:
        self._settings, self._book = settings, book

    def open(self, runtime_context: RuntimeContext) -> None:
        s = self._settings
        ttl = state_ttl(s.flink.state_ttl_s)
        users = MapStateDescriptor(USER_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        users.enable_time_to_live(ttl)
        self._users = runtime_context.get_map_state(users)
        timers = MapStateDescriptor(TIMERS_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        timers.enable_time_to_live(ttl)
        self._timers = ShardTimers(runtime_context.get_map_state(timers))
        self._runner = Runner(personalizer(s, self._book), input_limits(s), s.flink.state_cache_users,
                              history=s.history.profile_versions)
        self._seeds: dict[int, dict[str, Seed]] | None = None
        self._sent_before: set[str] = set()
        if s.flink.seed_from_changelog:
            self._seeded = runtime_context.get_state(ValueStateDescriptor(SEEDED_STATE, Types.BOOLEAN()))
            self._seeds = read_seeds(s, self._runner.core)
            self._sent_before = sent_trigger_ids(s)
        self._client = s.redis.client()
        if s.recommend.enabled:   # lists for the triggers of patterns with include_list, read as a front-end would
            # A short timeout: a trigger waits at most this long for its list, then goes out without it.
            lists_client = s.redis.client(socket_timeout=0.5, socket_connect_timeout=0.5)
            self._runner.trigger_lists = redis_trigger_lists(lists_client, s.redis.keys(), recommend_rules(s))
        self._follower = ServedFollower(self._runner.core, self._runner.served, self._client,
                                        s.redis.keys(), s.models.refresh_ms,
                                        s.models.refresh_every_events, s.rules.refresh_ms,
                                        s.profile.allowed_lateness_ms, subtask_of(runtime_context))
        self._counters = FlinkCounters(runtime_context.get_metrics_group(), KNOWN_COUNTERS)
        self._counters.counter(("personalize", "rules", "version")).inc(self._runner.core.engine.book.version)
        self._interval = s.flink.tick_ms
        self._item_shards = s.flink.item_shards if s.recommend.enabled else 0
        self._example_batch = 50
        self._tick_due: int | None = None
        self._ledger: dict[str, int] = {}   # every record of this subtask: applied, duplicate, or dead-lettered
        self._untrusted = UntrustedWarnings(s.source.max_timestamp_skew_ms)
        # The rule set in force now, before any timer fires: after a restore the job graph holds the start-up one.
        self._follower.rules(time.monotonic())

    def _shard_timers(self, shard: int) -> UserTimers:
        timers, first_use = self._timers.of(shard)
        if first_use and self._seeds is not None and not self._seeded.value():
            self._seed(shard, timers)
        return timers

    def _seed(self, shard: int, timers: UserTimers) -> None:
        """The shard's users from the changelog (jobs/changelog_seed.py), those it does not hold already."""
        states = {}
        for user, (data, deadlines) in (self._seeds or {}).pop(shard, {}).items():
            if not self._users.contains(user):
                states[user] = data
                for t in deadlines:
                    timers.arm(user, t)
        if states:
            self._users.put_all(states)
        self._seeded.update(True)

    def process_element(self, batch: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        now = int(time.time() * 1000)
        records = decode_batch(batch)
        self._follower.after_events(len(records))
        shard = ctx.get_current_key()
        timers = self._shard_timers(shard)
        out = self._runner.on_batch(records, timers, self._users.get, now)
        if self._tick_due is None:   # the counts reach Flink's counters at the next tick, even if the stream stops
            self._arm_tick(ctx, now)
        yield from self._carry_out(shard, timers, out, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from self._tick(timestamp, ctx)
            return
        shard = ctx.get_current_key()
        timers = self._shard_timers(shard)
        watermark = ctx.timer_service().current_watermark()
        self._timers.fired(shard)
        out = self._runner.on_watermark(max(watermark, timestamp), timers, self._users.get, int(time.time() * 1000))
        yield from self._carry_out(shard, timers, out, ctx)
        if watermark >= END_OF_INPUT:   # the input ended: no flush timer fires now
            yield from self._send_examples()

    def _carry_out(self, shard: int, timers: UserTimers, out: Result, ctx: Any) -> Iterator[Any]:
        if out.dirty:
            self._users.put_all(out.dirty)
        self._timers.persist(shard, timers, ctx.timer_service())
        self._account(out)
        emitted = list(out.emitted())
        if self._sent_before:   # after an upgrade (jobs/changelog_seed.py): a trigger the old job sent, not again
            emitted, dropped = without_resent(emitted, self._sent_before, TRIGGER)
            self._counters.add({("personalize", "upgrade_resends_dropped"): dropped})
        # One array of signals per item shard, routed to the item operator (fold_items).
        items = signal_batches(out.items, self._item_shards) if out.items and self._item_shards else {}
        if emitted or items:
            kinds, keys, vals = zip(*emitted, strict=True) if emitted else ((), (), ())
            yield Row(list(kinds), list(keys), list(vals), list(items), list(items.values()))
        for experiment, outcome in out.experiments:
            yield OUTCOMES, Row(experiment, outcome.decode())
        if self._runner.examples.waiting >= self._example_batch:
            yield from self._send_examples()

    def _account(self, out: Result) -> None:
        self._counters.add(out.counts)
        for outcome, n in out.ledger.items():
            self._ledger[outcome] = self._ledger.get(outcome, 0) + n
        for error in out.errors:
            log.error("%s", error)
        r = out.untrusted
        if r is not None:   # valid events whose Kafka timestamp did not move the watermark
            warning = self._untrusted.observe(out.counts.get(UNTRUSTED, 0),
                                              (r.topic, r.partition, r.offset, r.timestamp_ms), time.monotonic())
            if warning is not None:
                log.warning("%s", warning)

    def _arm_tick(self, ctx: Any, now: int) -> None:
        """A processing-time timer every ``flink.tick_ms`` once the first batch came: the counts and example
        batches go out, and a newly published rule set is switched to, even while no record comes."""
        if self._tick_due is None:
            self._tick_due = now + self._interval
            ctx.timer_service().register_processing_time_timer(self._tick_due)

    def _tick(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self._follower.rules_due()
        self._counters.add(self._follower.take_counts())
        self._counters.flush()
        yield from self._send_examples()
        # One chain of ticks: a timer restored from a checkpoint, beside the one armed since, does not re-arm.
        if self._tick_due is None or timestamp == self._tick_due:
            self._tick_due = None
            if ctx.timer_service().current_watermark() < END_OF_INPUT:
                self._arm_tick(ctx, int(time.time() * 1000))

    def _send_examples(self) -> Iterator[Any]:
        for model, examples in self._runner.examples.take().items():
            yield EXAMPLES, ExampleBatch(model, tuple(examples))

    def close(self) -> None:
        # One line per subtask that reconciles its input (stdout reaches the job's log on the mini-cluster and
        # the TaskManager's .out file on a cluster): applied + duplicates + dead letters = records read.
        print("persona-ledger " + json.dumps(self._ledger, sort_keys=True), flush=True)
        self._counters.add(self._follower.take_counts())
        self._counters.flush()
        self._client.close()


def _side_output(stream: DataStream, tag: OutputTag) -> DataStream:
    """A side output taken from the Java stream: PyFlink's ``get_side_output`` adds a Python identity map behind
    each one, a second Python call per record (docs/performance.md)."""
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


# The changelog's and the history's records are whole user states (~1,650 B per event): lz4 takes them to ~460 B.
# On the changelog that is the broker's and the loader's CPU per event, not only disk: per-thread CPU over a quick
# bench's drain, the broker's request threads 7.9 -> 5.1 s, the sink's producers 3.6 -> 2.4 s, the loader
# 6.4 -> 4.8 s (docs/performance.md, the round "the changelog compressed").
SINK_COMPRESSION = {"changes": "lz4", "history": "lz4"}
ROUTES = {"triggers": TRIGGER, "dead_letters": DEAD_LETTER, "changes": CHANGE, "audit": AUDIT, "history": HISTORY,
          "history_triggers": HISTORY_TRIGGER}


def route(t_env: StreamTableEnvironment, outputs: DataStream, settings: JobSettings) -> dict[str, str]:
    """SQL over the batches' parallel arrays: one query per topic, each record (kind, key, value) of its kind
    (the profile history's with ``history.profile_versions``, history's triggers with ``history.dry_run_topic``)."""
    t_env.create_temporary_view("persona_outputs", t_env.from_data_stream(outputs))
    off = {HISTORY} if not settings.history.profile_versions else set()
    off |= {HISTORY_TRIGGER} if not settings.history.dry_run_topic else set()
    return {name: ("SELECT o.`keys`[t.i] AS k, o.`vals`[t.i] AS v FROM persona_outputs AS o "
                   f"CROSS JOIN UNNEST(o.`kinds`) WITH ORDINALITY AS t(kind, i) WHERE t.kind = '{kind}'")
            for name, kind in ROUTES.items() if kind not in off}


def fold_items(t_env: StreamTableEnvironment, settings: JobSettings) -> DataStream:
    """The item operator (jobs/item_folding.py) behind the batches' item records (``route`` declared the view).

    On the Java side: keyed by item shard, and the small arrays of signals every user batch sends each shard joined
    per shard (``ConcatByShard``: at ``recommend.fold_ms``, before every checkpoint barrier and the final watermark), then keyed
    again without a shuffle. So the Python function is called once per shard and flush, not once per user batch
    and item shard (that was ~3 calls per event)."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import load_java_class

    table = t_env.sql_query("SELECT t.shard, o.`item_vals`[t.i] AS v FROM persona_outputs AS o "
                            "CROSS JOIN UNNEST(o.`item_shards`) WITH ORDINALITY AS t(shard, i)")
    batch_type = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    stream = t_env.to_append_stream(table, batch_type)
    gateway = get_gateway()
    key_type = Types.ROW([Types.INT()]).get_java_type_info()
    joiner = load_java_class("io.streampersona.batch.ConcatByShard").newInstance().configure(
        ITEM_BATCH_SIGNALS, settings.recommend.fold_ms)
    j_joined = (stream._j_data_stream.keyBy(gateway.jvm.KeyByKeySelector(), key_type)
                .transform("concat-by-item-shard", batch_type.get_java_type_info(), joiner)
                .uid("concat-by-item-shard").name("concat-by-item-shard"))
    j_keyed = gateway.jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
        j_joined, gateway.jvm.KeyByKeySelector(), key_type)
    r = settings.redis
    return (KeyedStream(j_keyed, Types.PRIMITIVE_ARRAY(Types.BYTE()), DataStream(j_joined))
            .process(FoldItems(recommend_rules(settings), r.target(), settings.flink.state_ttl_s,
                               settings.recommend.publish_ms, settings.flink.state_cache_users), output_type=KEYED_JSON)
            .name("fold-items").uid("fold-items"))


def build(batches: KeyedStream, settings: JobSettings, book: PatternBook) -> tuple[DataStream, DataStream]:
    """(output batches, model updates): the caller routes the batches (``route``) and attaches the sinks."""
    r, m = settings.redis, settings.models
    personalized = (batches.process(Personalize(settings, book), output_type=OUTPUTS)
                    .name("personalize").uid("personalize-shards"))
    published = (
        _side_output(personalized, EXAMPLES)
        .key_by(example_key, key_type=Types.STRING())
        .process(TrainModels(m.seed, m.segments, m.publish_every_examples, m.publish_interval_ms, m.keep_versions,
                             r.target()), output_type=KEYED_JSON)
        .name("train-models").uid("train-models")
    )
    tallied = (
        _side_output(personalized, OUTCOMES)
        .key_by(experiment_key, key_type=Types.STRING())
        .process(TallyExperiments(r.target()), output_type=KEYED_JSON)
        .name("tally-experiments").uid("tally-experiments")
    )
    # The tallies emit nothing; joined to the model updates' stream only to be part of the job graph.
    return personalized, published.union(tallied)


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
                ensure_own_topic(admin, settings, "audit")
            if settings.history.profile_versions and t.history not in existing:
                ensure_own_topic(admin, settings, "profile_history")
            if settings.history.dry_run_topic and settings.history.dry_run_topic not in existing:
                ensure_own_topic(admin, settings, "history_triggers")
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
        # A backfill starts as a bounded run does (a new group from the earliest offset) and reads to the same end.
        offsets = topic_offsets(settings.kafka) if args.bounded or args.savepoint_at_end else None
        start = bounded_start(settings.kafka, offsets) if offsets else None
        history = (history_of(settings.kafka, start.starting_offsets, offsets)
                   if start and offsets and args.savepoint_at_end else None)
    except ConfigError as e:
        fail("personalization", str(e))
    except KafkaError as e:
        fail("personalization", f"kafka.bootstrap_servers: {settings.kafka.bootstrap_servers} did not answer ({e})")
    if start is not None:
        print(f"{'bounded run' if args.bounded else 'backfill'}: {start.message}", flush=True)
        if start.to_read == 0:
            return
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"starting_offsets": start.starting_offsets})})
    rest_port = free_port() if args.deployment == "local" else None
    prometheus_port = free_port() if args.deployment == "local" and settings.flink.prometheus else None

    def graph() -> StreamExecutionEnvironment:
        env, t_env = make_environment(settings.flink, args.deployment, rest_port, prometheus_port,
                                      args.from_savepoint, args.allow_non_restored_state)
        add_job(env, t_env, settings, book, bounded=args.bounded)
        log.info("starting personalization (kafka %s, redis %s, mode %s)", settings.kafka.bootstrap_servers,
                 settings.redis.masked_url, settings.flink.execution_mode)
        return env

    if args.deployment == "cluster":   # `flink run` drives this process, and returns at submission
        graph().execute(JOB_NAME)
        return
    # The graph is built in a child process (jobs/forked_submit.py): this one stays beside the job without
    # PyFlink's graph-building imports.
    prepare_driver(settings.flink, args.deployment, prometheus_port)
    client = submit_in_child(lambda: graph().execute_async(JOB_NAME))
    if prometheus_port is not None:
        print(f"job metrics (Prometheus): http://127.0.0.1:{prometheus_port}/metrics", flush=True)
    rest_url = f"http://127.0.0.1:{rest_port}"
    print(f"web UI and REST API: {rest_url} (persona status reads it)", flush=True)
    live = LiveLine(settings, rest_url, quiet=args.quiet).start()
    # On the mini-cluster the loader runs here, beside the JVM that runs the job (another core); on a cluster
    # `flink run` returns at submission, and `persona loader` runs as its own service.
    loader = EmbeddedLoader(settings).start() if settings.loader.embedded else None
    if loader is not None and loader.metrics_port is not None:
        print(f"loader metrics (Prometheus): http://{settings.loader.metrics_host}:{loader.metrics_port}/metrics",
              flush=True)
    try:
        if history is not None:
            _backfill(client, settings, history, args.savepoint_at_end, rest_url, args.overrides)
        else:
            client.getJobExecutionResult().get()
    except BaseException:
        with contextlib.suppress(Exception):   # an interrupted driver takes its job with it; a failed one is over
            client.cancel()
        raise
    finally:
        live.stop()
        if loader is not None:
            # A bounded run and a backfill end with Redis holding every change (the live job starts from there).
            stats = loader.finish(catch_up=args.bounded or history is not None)
            print("persona-loader " + json.dumps(stats.as_dict(), sort_keys=True), flush=True)


def add_job(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, settings: JobSettings, book: PatternBook,
            bounded: bool) -> None:
    """The whole job in ``env``: the sharded source, the function and the trainer, the routing and every sink."""
    f = settings.flink
    batches = sharded_batches(t_env, settings.kafka, settings.source, bounded=bounded, shards=f.shards,
                              batch_records=f.batch_records, batch_ms=f.batch_ms,
                              max_future_ms=settings.limits.max_event_future_ms,
                              wake_every_shard=f.seed_from_changelog)
    outputs, published = build(batches, settings, book)
    queries = route(t_env, outputs, settings)
    if settings.recommend.enabled:   # emits nothing: joined to the model updates' stream to be in the job graph
        published = published.union(fold_items(t_env, settings))
    t = settings.kafka.topics
    exactly_once = settings.kafka.triggers_delivery == "exactly-once"
    statements = t_env.create_statement_set()
    # The audit follows the triggers' delivery: exactly-once gives a read_committed reader one record per request.
    for name, table, topic, once in (("triggers", "trigger_sink", t.triggers, exactly_once),
                                     ("dead_letters", "dead_letter_sink", t.dead_letter, False),
                                     ("changes", "profile_sink", t.profiles, False),
                                     ("audit", "audit_sink", t.audit, exactly_once),
                                     ("history", "profile_history_sink", t.history, False),
                                     ("history_triggers", "history_trigger_sink", settings.history.dry_run_topic,
                                      exactly_once)):
        if name not in queries:
            continue
        sink = keyed_json_sink(t_env, settings.kafka, table, topic, exactly_once=once, value_type="BYTES",
                               compression=SINK_COMPRESSION.get(name))
        statements.add_insert(sink, t_env.sql_query(queries[name]))
    statements.add_insert(keyed_json_sink(t_env, settings.kafka, "model_sink", t.models),
                          t_env.from_data_stream(published))
    statements.attach_as_datastream()
    print("stable uids: " + ", ".join(pin_kafka_uids(env, settings.flink.previous_source_id)), flush=True)


def _backfill(client: JavaObject, settings: JobSettings, history: History, savepoints: str, rest_url: str,
              overrides: list[str]) -> None:
    """With the submitted job's client (Java's ``JobClient``): run until a checkpoint holds the whole history,
    then stop with a savepoint (persona/backfill.py)."""
    try:
        markers = wait_for_history(history, lambda: committed_offsets(settings.kafka),
                                   lambda: not client.getJobStatus().get().isGloballyTerminalState(),
                                   left=lambda committed: records_left(settings.kafka, history, committed))
        # With transaction markers the offsets outnumber the events: the counters are read once they stop moving.
        counters = _settled_counters(rest_url, None if markers else history.records)
        savepoint = _stop_with_savepoint(client, savepoints)
    except BaseException:
        client.cancel()
        raise
    print("\n".join(summary_lines(history, counters, markers)), flush=True)
    print(f"savepoint: {savepoint}", flush=True)
    print("start the live job from it (state, models and offsets continue where the history ends):\n  "
          + live_command(savepoint, settings.history.triggers_before_ms, overrides,
                         drops_sinks=bool(settings.history.dry_run_topic)), flush=True)


def _stop_with_savepoint(client: JavaObject, folder: str) -> str:
    """Stop with a savepoint, without draining: pending timers stay in it, for the live job to fire."""
    from pyflink.java_gateway import get_gateway
    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return str(client.stopWithSavepoint(False, folder, canonical).get())


def _settled_counters(rest_url: str, records: int | None, deadline_s: float = 30) -> dict[str, Any]:
    """The job's counters once they account for every record of the history, or (``records`` None) once they have
    not moved for 5 s: counters reach Flink at each tick, and its REST API refreshes them every 2 s."""
    end, seen, still = time.monotonic() + deadline_s, -1, 0
    while True:
        counters = flink_status(rest_url, only="personalize")["counters"]
        dead = counters["dead_letters"]
        accounted = counters["valid"] - dead.get("late_event", 0) - dead.get("processing_error", 0) + sum(dead.values())
        still = still + 1 if accounted == seen else 0
        seen = accounted
        if (accounted >= records if records is not None else still >= 5) or time.monotonic() > end:
            return counters
        time.sleep(1)


if __name__ == "__main__":
    # Run through the importable module: functions defined in __main__ would be pickled by value,
    # dragging module globals (loggers with locks) into the job graph.
    from jobs.personalization import main as _main

    _main()
