"""The slice job on the embedded mini-cluster against a real Kafka broker and a real Redis server."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import generate
from persona.settings import load_generator_settings
from state.keys import RedisKeys
from tests.fixtures.jobs import run_bounded_job
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.oracle import expected_counts, expected_dead_letter_reasons
from tests.fixtures.services import TopicNames

pytestmark = pytest.mark.integration


def test_exact_per_user_counts_and_dead_letters(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 150, "seed": 7, "malformed_fraction": 0.03}),
                            max_records=5_000))
    produce(kafka_bootstrap, topics.events, records)

    run_bounded_job("jobs.event_counter", [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}",
                                           f"redis.url={redis_url}", f"redis.key_prefix={redis_prefix}",
                                           "kafka.starting_offsets=earliest", "kafka.group_id=slice-test"], tmp_path)

    expected = expected_counts(records)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    stored = {k.removeprefix(keys.profile("")): client.hgetall(k) for k in client.scan_iter(keys.profile_pattern())}
    assert set(stored) == set(expected)
    for user, counts in expected.items():
        assert json.loads(stored[user]["counts_by_type"]) == dict(counts), user
        assert int(stored[user]["events_total"]) == sum(counts.values()), user
        assert int(stored[user]["profile_version"]) == sum(counts.values()), user

    dead = read_all_json(kafka_bootstrap, topics.dead_letter)
    assert Counter(d["reason"] for d in dead) == expected_dead_letter_reasons(records)
    assert len(dead) == sum(1 for r in records if r.malformed)
    assert all(d["source"]["topic"] == topics.events for d in dead)
    # Provenance is exact: each entry points at the offset holding the very bytes it carries.
    malformed_values = Counter(r.value for r in records if r.malformed)
    carried = Counter(d["raw"].encode() if d["raw_encoding"] == "utf-8" else base64.b64decode(d["raw"])
                      for d in dead)
    assert carried == malformed_values
    assert len({(d["source"]["partition"], d["source"]["offset"]) for d in dead}) == len(dead)
