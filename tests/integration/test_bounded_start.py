"""A bounded run with the default ``kafka.starting_offsets: committed``: a new group reads the topic from its
earliest offset (it used to start at the end, read nothing and exit 0 without a word), and a run with nothing to
read (a group at the end, an empty topic) says why in one line without starting the job (persona/bounded_start.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import generate
from persona.settings import ROOT, load_generator_settings
from state.keys import RedisKeys
from tests.fixtures.jobs import history_override
from tests.fixtures.kafka_io import produce
from tests.fixtures.personalization_oracle import expected
from tests.fixtures.services import TopicNames

pytestmark = pytest.mark.integration


def _bounded(overrides: list[str], log: Path) -> str:
    cmd = [sys.executable, "-m", "jobs.personalization", "--bounded", *(a for o in overrides for a in ("--set", o))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_a_new_group_reads_from_the_earliest_offset_and_an_empty_topic_is_named(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 30, "seed": 11, "malformed_fraction": 0.0,
                                                     "late_fraction": 0.0, "bot_fraction": 0.0}), max_records=400))
    produce(kafka_bootstrap, topics.events, records)
    group = f"new-{uuid.uuid4().hex[:8]}"
    base = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
            f"redis.key_prefix={redis_prefix}", f"kafka.group_id={group}", "models.bot_min_session_events=1000000",
            history_override()]   # kafka.starting_offsets stays the default, committed

    out = _bounded(base, tmp_path / "first.log")
    assert f"group {group} has no committed offsets on {topics.events}: this run reads it from the " \
           f"earliest offset ({len(records):,} records)" in out
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    want = expected(records).profiles
    assert want and {u: int(client.hget(keys.profile(u), "events_total") or 0) for u in want} == \
        {u: f["events_total"] for u, f in want.items()}

    # The bounded job committed its offsets at its end: the same group again has nothing to read.
    out = _bounded(base, tmp_path / "again.log")
    assert f"bounded run: nothing to read: group {group} has read {topics.events} to its end ({len(records):,} " \
           "records); --set kafka.starting_offsets=earliest reads it again" in out and "web UI" not in out

    empty = TopicNames(f"{topics.events}-empty", topics.dead_letter, topics.triggers, topics.models)
    from persona.stack.topics import ensure_topics
    ensure_topics(kafka_bootstrap, [empty.events], partitions=2)
    out = _bounded([*empty.overrides(), *base[len(topics.overrides()):]], tmp_path / "empty.log")
    assert f"bounded run: nothing to read: topic {empty.events} is empty (or every record has expired)" in out
    assert "web UI" not in out   # the job did not start
