"""Vertical-slice job: Kafka -> parse/validate (dead letters to Kafka) -> key by user -> count -> Redis.

Run on the embedded mini-cluster: ``python -m jobs.event_counter [--bounded] [--set key=value ...]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from jobs.job_cli import parse_job_args, setup_logging
from jobs.kafka_io import keyed_json_sink, pin_kafka_uids, raw_event_stream
from jobs.parse_events import parse
from jobs.runtime import make_environment
from jobs.state_ttl import state_ttl
from operators.events import Event
from persona.rules import input_limits
from persona.settings import JobSettings
from state.event_counts import EVENT_COUNTS_STATE, count_event, profile_fields
from state.profile_store import ProfileWriter
from state.redis_client import RedisTarget

log = logging.getLogger(__name__)


class CountEvents(KeyedProcessFunction):
    """Loads the user's counts, applies the event, queues the profile for a batched Redis write."""

    def __init__(self, target: RedisTarget, ttl_s: int, flush_interval_ms: int, max_batch: int,
                 state_ttl_s: int) -> None:
        self._cfg = (target, ttl_s, flush_interval_ms, max_batch)
        self._state_ttl_s = state_ttl_s

    def open(self, runtime_context: RuntimeContext) -> None:
        desc = ValueStateDescriptor(EVENT_COUNTS_STATE, Types.PICKLED_BYTE_ARRAY())
        desc.enable_time_to_live(state_ttl(self._state_ttl_s))
        self._state = runtime_context.get_state(desc)
        target, ttl_s, interval, max_batch = self._cfg
        self._interval = interval
        self._writer = ProfileWriter(target.client(), target.keys(), ttl_s, interval, max_batch)

    def process_element(self, event: Event, ctx: KeyedProcessFunction.Context) -> Any:
        counts = count_event(self._state.value(), event.event_type, event.event_time_ms)
        self._state.update(counts)
        now = int(time.time() * 1000)
        if self._writer.pending == 0:
            # Guarantees the flush even if no further event arrives.
            ctx.timer_service().register_processing_time_timer(now + self._interval)
        self._writer.put(event.user_id, counts.version, profile_fields(event.user_id, counts, now), now)
        if self._writer.due(now):
            self._writer.flush()
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Any:
        self._writer.flush()
        return iter(())

    def close(self) -> None:
        self._writer.close()


def build(raw: DataStream, settings: JobSettings) -> tuple[DataStream, DataStream]:
    """(profile-writing stream, dead-letter rows). Sources and sinks are attached by the caller."""
    events, dead_letters = parse(raw, input_limits(settings))
    r = settings.redis
    counted = (
        events.key_by(lambda e: e.user_id, key_type=Types.STRING())
        .process(CountEvents(r.target(), r.profile_ttl_s, r.flush_interval_ms,
                             r.flush_max_batch, settings.flink.state_ttl_s), output_type=Types.STRING())
        .name("count-events").uid("count-events")
    )
    return counted, dead_letters


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    args, settings = parse_job_args("event_counter", __doc__.splitlines()[0], argv)
    env, t_env = make_environment(settings.flink, args.deployment)
    raw = raw_event_stream(t_env, settings.kafka, settings.source, bounded=args.bounded)
    _, dead_letters = build(raw, settings)
    dlq_table = keyed_json_sink(t_env, settings.kafka, "dead_letter_sink", settings.kafka.topics.dead_letter)
    statements = t_env.create_statement_set()
    statements.add_insert(dlq_table, t_env.from_data_stream(dead_letters))
    statements.attach_as_datastream()
    print("stable uids: " + ", ".join(pin_kafka_uids(env, settings.flink.previous_source_id)), flush=True)
    log.info("starting event_counter (kafka %s, redis %s, mode %s)", settings.kafka.bootstrap_servers,
             settings.redis.masked_url, settings.flink.execution_mode)
    env.execute("persona-event-counter")


if __name__ == "__main__":
    # Run through the importable module: functions defined in __main__ would be pickled by value,
    # dragging module globals (loggers with locks) into the job graph.
    from jobs.event_counter import main as _main

    _main()
