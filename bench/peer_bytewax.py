"""The benchmark's peer engine: Bytewax (``pip install '.[bench]'``) running the same per-event core.

Kafka (Bytewax's KafkaSource) -> parse -> key by user -> ``stateful`` (one ``Personalizer`` step per event,
the user's state and event-time timers held by Bytewax per key) -> Redis through the same batching writer
as the job. Models learn in line and are "published" to the scorer every ``publish_every_examples``, as in
the plain-Python baseline. One worker, no recovery: like the baseline, it has no fault tolerance.

Event-time timers: the watermark is the newest event time less ``source.max_out_of_orderness_ms`` (or,
while no events arrive, the wall clock less that and the idleness bound). A user's due timers fire at its
next event, or when Bytewax wakes it at the wall-clock time its earliest timer is expected to come due.

Run by ``persona bench`` as ``python -m bench.peer_bytewax --bootstrap ... --redis-url ... --prefix ...``.
"""

from __future__ import annotations

import argparse
import bisect
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import SimplePollingSource
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main
from confluent_kafka import Producer

from bench.replay import InlineModels, write_step
from operators.events import Event
from operators.personalize import Step
from operators.validation import parse_event
from persona.rules import personalizer
from persona.settings import load_job_settings
from state.keys import RedisKeys
from state.profile_store import ProfileWriter
from state.user_state import UserState

IDLE_MS = 2_000
TICK = "\x00tick"   # the key of the flush ticks (no user id is empty or starts with NUL)


class _Runtime:
    """What the one worker shares across keys: the core, the models, the writer, the watermark."""

    def __init__(self, bootstrap: str, redis_url: str, triggers_topic: str, prefix: str, heartbeat: Path) -> None:
        settings = load_job_settings({"patterns_file": "bench/patterns.yaml", "profile.allowed_lateness_ms": 5000})
        self.settings = settings
        self.core = personalizer(settings)
        self.models = InlineModels(settings)
        self.served = self.models.served
        r = settings.redis
        self.writer = ProfileWriter.from_url(redis_url, RedisKeys(prefix), r.profile_ttl_s, r.flush_interval_ms,
                                             r.flush_max_batch, self.core.memberships_known)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.triggers_topic = triggers_topic
        self.bound = settings.source.max_out_of_orderness_ms
        self.watermark = 0
        self.heartbeat = heartbeat
        self._beat_at = 0.0

    def now_watermark(self) -> int:
        idle = int(time.time() * 1000) - self.bound - IDLE_MS
        return max(self.watermark, idle)

    def carry_out(self, user: str, step: Step, now: int) -> None:
        for trigger in step.triggers:
            self.producer.produce(self.triggers_topic, key=user.encode(), value=trigger.to_json().encode())
        self.models.learn(step.examples)
        write_step(self.writer, self.core, user, step, now)

    def after(self) -> None:
        """Flush the write batch when it is due; tell the harness this worker is alive and where it is."""
        now = time.time()
        if self.writer.due(int(now * 1000)):
            self.writer.flush()
            self.producer.poll(0)
        if now - self._beat_at > 0.5:
            self._beat_at = now
            self.heartbeat.write_text(f"{now}\n")


RUNTIME: _Runtime | None = None


Snapshot = tuple[str, UserState | None, list[int]]


class _User(StatefulLogic[Event, None, Snapshot]):
    """One user's state and timers (Bytewax builds one per key; the key arrives with the first event)."""

    def __init__(self, resume: Snapshot | None) -> None:
        self.user, self.state, self.timers = resume if resume is not None else ("", None, [])

    def _fire(self, rt: _Runtime, watermark: int, now: int) -> None:
        while self.timers and self.timers[0] <= watermark:
            due = self.timers.pop(0)
            step = rt.core.on_timer(self.state, self.user, due)
            self._arm(step)
            rt.carry_out(self.user, step, now)

    def _arm(self, step: Step) -> None:
        for t in step.timers:
            i = bisect.bisect_left(self.timers, t)
            if i == len(self.timers) or self.timers[i] != t:   # one timer per time, as in Flink
                self.timers.insert(i, t)

    def on_item(self, value: Event | str) -> tuple[list[None], bool]:
        rt = RUNTIME
        assert rt is not None
        if isinstance(value, str):   # a tick: the batch goes out even when no event comes
            rt.after()
            return [], StatefulLogic.RETAIN
        now = int(time.time() * 1000)
        self.user = value.user_id
        rt.watermark = max(rt.watermark, value.event_time_ms - rt.bound)
        self._fire(rt, rt.watermark, now)
        step = rt.core.on_event(self.state, value, rt.served)
        if step.dead_letter is None:
            self.state = step.state
            self._arm(step)
            rt.carry_out(self.user, step, now)
        rt.after()
        return [], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[None], bool]:
        rt = RUNTIME
        assert rt is not None
        self._fire(rt, rt.now_watermark(), int(time.time() * 1000))
        rt.after()
        return [], StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        rt = RUNTIME
        if not self.timers or rt is None:
            return None
        wait_ms = max(0, self.timers[0] - rt.now_watermark())
        return datetime.now(UTC) + timedelta(milliseconds=min(wait_ms, 60_000))

    def snapshot(self) -> Snapshot:
        return self.user, self.state, list(self.timers)


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


def _parse(msg: Any) -> Event | None:
    event = parse_event(msg.value or b"")
    return event if isinstance(event, Event) else None


def dataflow(bootstrap: str, events_topic: str) -> Dataflow:
    flow = Dataflow("persona-peer")
    raw = op.input("kafka", flow, KafkaSource([bootstrap], [events_topic], tail=True))
    events = op.filter_map("parse", raw, _parse)
    ticks = op.input("ticks", flow, _Ticks())
    keyed = op.key_on("user", op.merge("events-and-ticks", events, ticks),
                      lambda e: TICK if isinstance(e, str) else e.user_id)
    done = op.stateful("personalize", keyed, _User)
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
