"""The experiment tallies: one keyed operator, keyed by experiment name, counting resolved exposures per variant.

Input: (experiment, JSON of one outcome) rows from the personalize operator. State per experiment: the
``Tally`` (checkpointed). After each record the operator writes the summary to Redis ``experiment:{name}``
(per variant: exposed, converted, rate, 95% interval, share), which ``persona experiments show`` prints and
the scorers read for Thompson sampling. It emits nothing: its output joins the model sink's stream only so
that the operator is part of the job graph.
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
from pyflink.datastream.state import ValueStateDescriptor

from operators.experiments import Tally
from state.redis_client import RedisTarget

TALLY_STATE = "experiment_tally_v1"
log = logging.getLogger(__name__)


def experiment_key(row: Row) -> str:
    return str(row[0])


class TallyExperiments(KeyedProcessFunction):
    def __init__(self, target: RedisTarget) -> None:
        self._redis = target

    def open(self, runtime_context: RuntimeContext) -> None:
        self._state = runtime_context.get_state(ValueStateDescriptor(TALLY_STATE, Types.PICKLED_BYTE_ARRAY()))
        self._client = self._redis.client()
        self._keys = self._redis.keys()
        self._group = runtime_context.get_metrics_group().add_group("experiments")
        self._counters: dict[tuple[str, str, str], Any] = {}

    def _count(self, experiment: str, variant: str, what: str) -> None:
        counter = self._counters.get((experiment, variant, what))
        if counter is None:
            counter = self._counters[(experiment, variant, what)] = \
                self._group.add_group(experiment).add_group(variant).counter(what)
        counter.inc()

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        experiment = str(row[0])
        outcome = json.loads(row[1])
        stored = self._state.value()
        tally = Tally(**stored) if stored is not None else Tally()
        tally.add(outcome["variant"], bool(outcome["converted"]))
        if outcome.get("holdout"):
            tally.holdouts = sorted(set(tally.holdouts) | {outcome["variant"]})
        self._state.update({"counts": tally.counts, "holdouts": tally.holdouts})
        self._count(experiment, outcome["variant"], "exposed")
        if outcome["converted"]:
            self._count(experiment, outcome["variant"], "converted")
        try:
            self._client.hset(self._keys.experiment(experiment), mapping={
                "summary": json.dumps(tally.summary(), sort_keys=True), "updated_at": int(time.time() * 1000)})
        except redis.RedisError as e:   # the state has the count; the next outcome writes the summary again
            log.warning("could not write experiment %s to Redis: %s", experiment, e)
        yield from ()

    def close(self) -> None:
        self._client.close()
