"""The project on a real Redis Cluster (3 masters, a replica each, started here): the stores, then the job against
the oracle with one master killed mid-stream and failed over to its replica."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import generate
from persona.rules import recommend_rules
from persona.serving import recommend
from persona.settings import ROOT, load_generator_settings, load_job_settings
from persona.stack.procs import wait_until
from persona.stack.redis_cluster import LocalRedisCluster
from state.keys import RedisKeys
from state.model_registry import kept_versions, model_info, record_snapshot
from state.profile_store import ProfileWriter, read_profile, segment_members, segment_size
from state.redis_client import connect
from state.rule_registry import current_version, publish
from state.rule_set_record import RuleSet
from tests.fixtures.item_oracle import expected_items, expected_lists, item_mismatches, list_mismatches
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.personalization_oracle import expected, leftovers, trigger_mismatches
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides, profile_mismatches, stored_items

pytestmark = pytest.mark.integration


def test_profiles_segments_and_registries_keep_their_guarantees_across_slots(redis_cluster: LocalRedisCluster,
                                                                             redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix, buckets=64)
    client = connect(redis_cluster.url, cluster=True)
    writer = ProfileWriter(client, keys, 3600, 100, 500, segments=("loyal", "browsing"))
    users = [f"u{i}" for i in range(300)]   # spread over every bucket, so over the three masters
    assert len({keys.bucket(u) for u in users}) == 64
    for u in users:
        writer.put(u, 2, {"profile_version": "2", "stage": "loyal"}, now_ms=0, segment="loyal")
    assert writer.flush() == 300
    for u in users[:10]:   # an older version never wins; a newer one moves the user to another set
        writer.put(u, 1, {"profile_version": "1"}, now_ms=0, segment="browsing")
    assert writer.flush() == 0
    writer.put("u0", 3, {"profile_version": "3"}, now_ms=0, segment="browsing")
    writer.erase("u1", now_ms=0)
    assert writer.flush() == 1
    assert segment_members(client, keys, "browsing") == {"u0"}
    assert segment_members(client, keys, "loyal") == set(users) - {"u0", "u1"} and segment_size(client, keys, "loyal") == 298
    assert read_profile(client, keys, "u1") is None
    assert read_profile(client, keys, "u2") == {"profile_version": 2, "profile_epoch": 0, "stage": "loyal"}
    assert sum(1 for _ in client.scan_iter(match=keys.profile_pattern())) == 299   # every master's keys
    # The model registry: its keys share a slot; the oldest versions go, the pinned one stays.
    for v in range(1, 6):
        record_snapshot(client, keys, {"model": "propensity", "version": v, "model_schema": 1, "examples": v,
                                       "created_at": v, "metrics": {}}, keep=3)
    assert kept_versions(client, keys, "propensity") == [5, 4, 3]
    info = model_info(client, keys, "propensity")
    assert info is not None and info["version"] == 5
    # The rule registry: two publishers racing never take the same version.
    made: list[int] = []

    def make(newest: RuleSet | None) -> RuleSet:
        time.sleep(0.01)   # widen the window between reading the newest and publishing
        version = (newest.version if newest else 0) + 1
        made.append(version)
        return RuleSet(version=version, source=f"s{version}", published_by="t", published_at=0, patterns={})

    threads = [threading.Thread(target=lambda: [publish(connect(redis_cluster.url, cluster=True), keys, make)
                                                for _ in range(5)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert current_version(client, keys) == 10
    assert sorted(int(v) for v in client.hkeys(keys.rules_versions())) == list(range(1, 11))


def test_the_job_equals_the_oracle_with_a_master_failed_over_mid_stream(
        redis_cluster: LocalRedisCluster, kafka_bootstrap: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 450, "seed": 21, "bot_fraction": 0.0}), max_records=22_000))
    produce(kafka_bootstrap, topics.events, records)
    # The oracle test's settings (the recommender on), on the cluster.
    overrides = [*job_overrides(topics, kafka_bootstrap, redis_cluster.url, redis_prefix, "cluster-test"),
                 "redis.cluster=true"]
    keys = load_job_settings({"redis.cluster": True, "redis.key_prefix": redis_prefix}).redis.keys()
    client = connect(redis_cluster.url, cluster=True, decode_responses=True)
    victim = redis_cluster.master_of(keys.profile("u0"))
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "jobs.personalization", "--bounded",
                                *(a for o in overrides for a in ("--set", o))], cwd=ROOT, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
        def profiles() -> int:
            try:
                return sum(1 for _ in client.scan_iter(match=keys.profile_pattern(), count=1000))
            except redis.RedisError:
                return 0
        wait_until(lambda: profiles() >= 30 or job.poll() is not None, 240, "the first profiles in the cluster",
                   interval_s=0.05)
        assert job.poll() is None, log.read_text(errors="replace")[-3000:]
        at_kill = profiles()
        redis_cluster.kill(victim)
        wait_until(lambda: redis_cluster.healthy() and redis_cluster.master_of(keys.profile("u0")) != victim, 30,
                   "the replica promoted")
        assert job.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)

    want = expected(records)
    client = connect(redis_cluster.url, cluster=True, decode_responses=True)
    assert at_kill < len(want.profiles), "the master was killed after the stream had ended"
    assert profile_mismatches(client, keys, want.profiles) == []
    assert leftovers(client, keys, want.nothing_left) == []
    stages = Counter(f["stage"] for f in want.profiles.values())
    for stage, n in stages.items():
        assert segment_size(client, keys, stage) == n, stage
    assert trigger_mismatches(read_all_json(kafka_bootstrap, topics.triggers), want) == {}
    # The item operator's records and weights, spread over the item shards, and the users' lists read from them.
    assert item_mismatches(stored_items(client, keys), expected_items(records)) == []
    lists = expected_lists(records)
    rules = recommend_rules(load_job_settings())
    assert list_mismatches({user: recommend(client, keys, user, rules).items for user in lists}, lists) == []
    # The registries: the rule set the job published at start-up, and the models it published.
    assert current_version(client, keys) == 1
    info = model_info(client, keys, "propensity")
    assert info is not None and info["version"] >= 1
