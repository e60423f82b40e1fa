"""Erasure end to end on the real stack: Redis, every keyed topic, the triggers and the audit (README "Privacy")."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from state.keys import RedisKeys
from tests.fixtures.erasure_case import build_case, erasure_problems
from tests.fixtures.jobs import run_bounded_job
from tests.fixtures.kafka_io import produce_raw
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration


def test_an_erasure_leaves_nothing_but_tombstones_and_its_audit_record(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    case = build_case()
    produce_raw(kafka_bootstrap, topics.events, case.before + case.erasures + case.after)
    run_bounded_job("jobs.personalization", job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "erase"),
                    tmp_path, timeout_s=600)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert erasure_problems(case, kafka_bootstrap, topics, client, RedisKeys(redis_prefix)) == []
