"""Upgrading from the layout with one Flink state per user: each shard's states and timers rebuilt from the profile
changelog (docs/operations.md "Failures and upgrades").

The previous layout kept a value state per user and a Flink timer per (user, time) under the operator uid
``personalize``; this one keeps a map per shard under ``personalize-shards``. Flink cannot move keyed state
between the two, but the profile changelog holds every user's encoded state as of the savepoint (the old job
stopped with it, and its changelog sink flushed at it). Started once with ``flink.seed_from_changelog=true`` (and
``--allowNonRestoredState``), each subtask reads the changelog to its end at start-up, and each shard, at its first
batch or timer, takes the states of its users that it does not hold yet and arms their timers from the states
(``Personalizer.deadlines``). A per-shard flag makes it once per shard: a later restart does not seed again.

The changelog has each user's state as of their last profile write, not what the old job's timers changed after
it: those timers fire again from the older state. So the ids of the triggers already in the triggers topic are
read too, and a trigger the old job sent is not sent again (``sent_trigger_ids``).
"""

from __future__ import annotations

import json
import logging
import time

from kafka import KafkaConsumer, TopicPartition

from operators.personalize import Personalizer
from operators.shards import shard_of
from persona.settings import JobSettings
from persona.stack.topics import read_to_end
from state.profile_changelog import coalesce, read_change
from state.user_state import encode_state

log = logging.getLogger(__name__)
Seed = tuple[bytes, list[int]]   # (encoded state, its pending timer times)


def read_seeds(settings: JobSettings, core: Personalizer) -> dict[int, dict[str, Seed]]:
    """Per shard, the newest state of every user the changelog has not erased."""
    started = time.monotonic()
    topic = settings.kafka.topics.profiles
    consumer = KafkaConsumer(**settings.kafka.client_config(), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        pending = coalesce(read_change(m.key, m.value) for m in read_to_end(consumer, partitions, timeout_s=600))
    finally:
        consumer.close()
    seeds: dict[int, dict[str, Seed]] = {}
    for user, p in pending.items():
        if p.last is None or p.last.state is None:   # erased last: nothing to seed
            continue
        state = p.last.state
        seeds.setdefault(shard_of(user, settings.flink.shards), {})[user] = (encode_state(state), core.deadlines(state))
    log.info("seeding from the changelog %s: %d users in %d shards, read in %.1f s", topic,
             sum(len(s) for s in seeds.values()), len(seeds), time.monotonic() - started)
    return seeds


def sent_trigger_ids(settings: JobSettings) -> set[str]:
    """The ids of every trigger in the triggers topic (read committed), to send none of them again."""
    topic = settings.kafka.topics.triggers
    consumer = KafkaConsumer(**settings.kafka.client_config(), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ids = {json.loads(m.value)["trigger_id"] for m in read_to_end(consumer, partitions, timeout_s=600)
               if m.value is not None}
    finally:
        consumer.close()
    log.info("seeding from the changelog: %d trigger ids already sent will not be sent again", len(ids))
    return ids


def without_resent(emitted: list[tuple[str, str, bytes | None]], sent_before: set[str],
                   trigger_kind: str) -> tuple[list[tuple[str, str, bytes | None]], int]:
    """The outputs without the triggers the old job sent already (``sent_trigger_ids``), and how many were dropped."""
    kept = [o for o in emitted if o[0] != trigger_kind or o[2] is None
            or json.loads(o[2])["trigger_id"] not in sent_before]
    return kept, len(emitted) - len(kept)
