"""The benchmark's peer engine: Bytewax (``pip install '.[bench]'``) running the same per-event runner.

Kafka (Bytewax's KafkaSource) -> ``stateful_batch`` (each batch Bytewax hands over goes through the job's runner,
``operators/runner.py``: parsing, the core, timers in (time, user) order) -> Redis through the same batching
writer as the job. Models learn in line and are "published" to the scorer every ``publish_every_examples``, as
in the plain-Python baseline. One worker, no recovery: like the baseline, it has no fault tolerance.

Event-time timers: the watermark is the runner's ``Watermarks`` (the newest event time less the out-of-orderness
bound, or while no events arrive, the wall clock less that and the idleness bound); the runner fires what it
passes after each batch, and Bytewax wakes the step when the earliest timer is expected to come due.

Run by ``persona bench`` as ``python -m bench.peer_bytewax --bootstrap ... --redis-url ... --prefix ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import SimplePollingSource
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main
from confluent_kafka import Producer

from bench.harness import BENCH_SETTINGS
from operators.item_table import ItemTable
from operators.personalize import Step
from operators.runner import TRIGGER, Record, Result, Runner, Watermarks
from persona.replay import InlineItemPublisher, InlineModels, write_step
from persona.rules import input_limits, personalizer, recommend_rules
from persona.settings import load_job_settings
from state.keys import RedisKeys
from state.profile_store import ProfileWriter
from state.user_timers import UserTimers

TICK = "\x00tick"   # a tick item (no Kafka message is a str)


class _Runtime:
    """What the one worker holds: the runner, the models, the writer, the states, timers and watermark."""

    def __init__(self, bootstrap: str, redis_url: str, triggers_topic: str, prefix: str, heartbeat: Path) -> None:
        settings = load_job_settings(BENCH_SETTINGS)
        self.settings = settings
        self.core = personalizer(settings)
        self.models = InlineModels(settings)
        self.runner = Runner(self.core, input_limits(settings), settings.flink.state_cache_users,
                             served=self.models.served, on_step=self._write)
        self.store: dict[str, bytes] = {}
        self.timers = UserTimers()
        r = settings.redis
        self.writer = ProfileWriter.from_url(redis_url, RedisKeys(prefix), r.profile_ttl_s, r.flush_interval_ms,
                                             r.flush_max_batch, self.core.memberships_known)
        # The item operator in line, publishing as the job's does (jobs/item_folding.py).
        self.items = ItemTable(recommend_rules(settings)) if settings.recommend.enabled else None
        self.publisher = InlineItemPublisher(settings, redis.Redis.from_url(redis_url), RedisKeys(prefix))
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.triggers_topic = triggers_topic
        self.watermarks = Watermarks(settings.source.max_out_of_orderness_ms, settings.source.idleness_ms)
        self.now = 0
        self.heartbeat = heartbeat
        self._beat_at = 0.0
        self.ledger: dict[str, int] = {}   # applied, duplicate, dead_letter.<reason>: in the heartbeat

    def _write(self, user: str, step: Step) -> None:
        write_step(self.writer, self.core, user, step, self.now)

    def run(self, records: list[Record]) -> None:
        self.now = int(time.time() * 1000)
        out = self.runner.on_batch(records, self.timers, self.store.get, self.now) if records else Result()
        for outcome, n in out.ledger.items():
            self.ledger[outcome] = self.ledger.get(outcome, 0) + n
        self.fire(self.watermarks.after(out), out)

    def fire(self, watermark: int, out: Result | None = None) -> None:
        out = self.runner.on_watermark(watermark, self.timers, self.store.get, self.now, out)
        self.store.update(out.dirty)
        if out.items and self.items is not None:
            self.publisher.add(self.items.fold(out.items))
        for kind, key, value in out.emitted():
            if kind == TRIGGER and value is not None and key is not None:
                self.producer.produce(self.triggers_topic, key=key.encode(), value=value)
        for examples in self.runner.examples.take().values():
            self.models.learn(examples)
        self.after()

    def after(self) -> None:
        """Flush the write batch when it is due; tell the harness this worker is alive and where it is."""
        now = time.time()
        if self.writer.due(int(now * 1000)):
            self.writer.flush()
            self.producer.poll(0)
        self.publisher.publish_due(now)
        if now - self._beat_at > 0.5:
            self._beat_at = now
            self.heartbeat.write_text(json.dumps({"at": now, "ledger": self.ledger, "written": self.writer.written,
                                                  "skipped_stale": self.writer.skipped_stale}) + "\n")


RUNTIME: _Runtime | None = None


class _Everything(StatefulBatchLogic[Any, None, None]):
    """The one key: every batch Bytewax hands over goes through the runner at once."""

    def __init__(self, resume: None) -> None:
        pass

    def on_batch(self, values: list[Any]) -> tuple[list[None], bool]:
        rt = RUNTIME
        assert rt is not None
        records = []
        for m in values:
            if isinstance(m, KafkaError):   # librdkafka goes on fetching by itself; said, not fatal
                print(f"peer: Kafka: {m.err}", file=sys.stderr, flush=True)
            elif not isinstance(m, str):    # a tick is a str
                records.append(Record(None, m.value or b"", m.topic, m.partition, m.offset))
        rt.run(records)
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[None], bool]:
        rt = RUNTIME
        assert rt is not None
        rt.now = int(time.time() * 1000)
        rt.fire(rt.watermarks.idle(rt.now))
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        rt = RUNTIME
        due = rt.timers.next_due() if rt is not None else None
        if due is None or rt is None:
            return None
        wait_ms = max(0, due - max(rt.watermarks.current, int(time.time() * 1000) - rt.watermarks.bound
                                   - rt.watermarks.idle_ms))
        return datetime.now(UTC) + timedelta(milliseconds=min(wait_ms, 60_000))

    def snapshot(self) -> None:
        return None


class _Ticks(SimplePollingSource[str]):
    def __init__(self) -> None:
        super().__init__(interval=timedelta(milliseconds=100))

    def next_item(self) -> str:
        return TICK


class _Discard(DynamicSink[Any]):
    class _Part(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            pass

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        return _Discard._Part()


def dataflow(bootstrap: str, events_topic: str) -> Dataflow:
    flow = Dataflow("persona-peer")
    # Bytewax's per-second consumer statistics are off: nothing reads them, and its callback indexes the topic's
    # entry, while an exception in a librdkafka callback is raised again from consume() and stops the worker.
    # Broker errors are items, not a crash, as the job's Kafka source retries them too.
    raw = op.input("kafka", flow, KafkaSource([bootstrap], [events_topic], tail=True, raise_on_errors=False,
                                              add_config={"statistics.interval.ms": "0"}))
    ticks = op.input("ticks", flow, _Ticks())
    keyed = op.key_on("all", op.merge("events-and-ticks", raw, ticks), lambda _: "all")
    done = op.stateful_batch("personalize", keyed, _Everything)
    op.output("discard", done, _Discard())
    return flow


def main() -> None:
    global RUNTIME
    parser = argparse.ArgumentParser(prog="bench.peer_bytewax", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--triggers-topic", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--heartbeat", type=Path, required=True)
    args = parser.parse_args()
    RUNTIME = _Runtime(args.bootstrap, args.redis_url, args.triggers_topic, args.prefix, args.heartbeat)
    run_main(dataflow(args.bootstrap, args.events_topic))


if __name__ == "__main__":
    main()
