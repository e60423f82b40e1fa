"""The trainers: one keyed operator, keyed by model name, learning from the examples the scorers send.

State per model, both checkpointed:
- ``model_trainer_v1``: the trainer (model, metrics, version), rewritten only when a snapshot is published;
- ``model_log_v2``: the batches of examples learnt since then, appended batch by batch.

Pickling a HalfSpaceTrees model costs ~10 ms, so rewriting it per example would cap training at ~100
examples/s. Appending the example is cheap; after a restore the trainer replays the log onto the
last written model and reaches the same model exactly (learning is deterministic in example order).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from operators.model_scoring import ExampleBatch
from operators.online_models import MODEL_NAMES, ModelTrainer, describe_segments
from state.model_registry import newest_version, record_snapshot
from state.redis_client import RedisTarget

MODEL_STATE = "model_trainer_v1"
LOG_STATE = "model_log_v2"   # v2: batches of examples (v1 held single examples)
_RATIOS = ("roc_auc", "log_loss", "silhouette", "churn", "loss_window")


log = logging.getLogger(__name__)


class TrainModels(KeyedProcessFunction):
    def __init__(self, seed: int, segments: int, publish_every: int, publish_interval_ms: int, keep_versions: int,
                 target: RedisTarget) -> None:
        self._seed, self._segments = seed, segments
        self._every, self._interval, self._keep = publish_every, publish_interval_ms, keep_versions
        self._redis = target

    def open(self, runtime_context: RuntimeContext) -> None:
        self._model = runtime_context.get_state(ValueStateDescriptor(MODEL_STATE, Types.PICKLED_BYTE_ARRAY()))
        self._log = runtime_context.get_list_state(ListStateDescriptor(LOG_STATE, Types.PICKLED_BYTE_ARRAY()))
        self._trainers: dict[str, ModelTrainer] = {}
        self._client = self._redis.client()
        self._keys = self._redis.keys()
        group = runtime_context.get_metrics_group().add_group("models")
        # Values the operator pushes at each publish, as counters moved by the difference. Not gauges: Flink
        # calls a Python gauge from its metric-reporter thread, outside the operator's, and that crashed the
        # TaskManager while the web UI polled the metrics (docs/operations.md "Running it"). Ratios are in thousandths.
        self._metrics = {(name, m): group.add_group(name).counter(m)
                         for name in MODEL_NAMES for m in ("examples", "version", "drifts",
                                                           *(f"{x}_milli" for x in _RATIOS))}
        self._pushed: dict[tuple[str, str], int] = dict.fromkeys(self._metrics, 0)

    def _push_metrics(self, t: ModelTrainer) -> None:
        values = {"examples": t.examples, "version": t.version, "drifts": t.drifts}
        ratios = t.metric_values()
        values |= {f"{x}_milli": int(ratios.get(x, 0.0) * 1000) for x in _RATIOS}
        for metric, value in values.items():
            key = (t.name, metric)
            delta = value - self._pushed[key]
            if delta > 0:
                self._metrics[key].inc(delta)
            elif delta < 0:
                self._metrics[key].dec(-delta)
            self._pushed[key] = value

    def _trainer(self, name: str) -> ModelTrainer:
        t = self._trainers.get(name)
        if t is None:
            t = self._model.value()
            if t is None:
                t = ModelTrainer.new(name, self._seed, self._segments)
                # No state (a first start, or state lost): continue the registry's numbering.
                try:
                    t.version = newest_version(self._client, self._keys, name)
                except redis.RedisError as e:
                    log.warning("could not read the %s registry (%s); numbering from 0", name, e)
            for batch in self._log.get() or ():   # examples learnt after the last written model
                for ex in batch.examples:
                    t.learn(ex.x, ex.label, ex.score, ex.previous)
            self._trainers[name] = t
        return t

    def process_element(self, batch: ExampleBatch, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        t = self._trainer(batch.model)
        first = t.since_snapshot == 0
        for ex in batch.examples:
            t.learn(ex.x, ex.label, ex.score, ex.previous)
        self._log.add(batch)
        if first:
            ctx.timer_service().register_processing_time_timer(int(time.time() * 1000) + self._interval)
        if t.since_snapshot >= self._every:
            yield self._publish(t)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Row]:
        t = self._trainer(ctx.get_current_key())
        if t.since_snapshot > 0:
            yield self._publish(t)

    def _publish(self, t: ModelTrainer) -> Row:
        record = t.snapshot(int(time.time() * 1000)).to_record()
        self._model.update(t)
        self._log.clear()
        descriptions = describe_segments(record) if t.name == "segments" else None
        try:
            record_snapshot(self._client, self._keys, record, self._keep, descriptions)
        except redis.RedisError as e:   # scorers keep the version they serve; the next publication retries
            log.warning("could not record %s version %d in Redis (%s); the models topic has it", t.name, t.version, e)
        self._push_metrics(t)
        return Row(t.name, json.dumps(record))

    def close(self) -> None:
        self._client.close()


def example_key(batch: Any) -> str:
    return batch.model  # type: ignore[no-any-return]
