"""The profile loader against a real broker and Redis: the changelog into profiles, the guard, erasures, rebuild."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis
from kafka import KafkaAdminClient, KafkaProducer

from operators.profile_fold import profile_fingerprint
from persona.loader import ProfileLoader
from persona.rules import profile_rules
from persona.settings import ROOT, JobSettings, load_job_settings
from persona.stack.topics import ensure_changelog_topic
from state.keys import RedisKeys
from state.profile_changelog import changelog_value
from state.user_state import UserState, encode_state

pytestmark = pytest.mark.integration
T0 = 1_793_620_800_000
FP = profile_fingerprint(profile_rules(load_job_settings({})))   # the profile settings every test here runs with


def _settings(bootstrap: str, redis_url: str, topic: str, prefix: str) -> JobSettings:
    return load_job_settings({"kafka.bootstrap_servers": bootstrap, "redis.url": redis_url,
                              "redis.key_prefix": prefix, "kafka.topics.profiles": topic,
                              "kafka.group_id": f"g-{uuid.uuid4().hex[:6]}"})


def _state(version: int, epoch: int, page_views: int) -> bytes:
    return encode_state(UserState(version=version, epoch_ms=epoch, newest_event_ms=T0 + version,
                                  totals={"page_view": page_views}))


@pytest.fixture
def changelog(kafka_bootstrap: str) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}.profiles"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    ensure_changelog_topic(admin, topic, partitions=2, replication=1)
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    records: list[tuple[str, bytes | None]] = [
        ("u1", changelog_value(_state(1, 10, 1), T0, FP)),
        ("u1", changelog_value(_state(3, 10, 3), T0 + 3, FP)),
        ("u1", changelog_value(_state(2, 10, 2), T0 + 2, FP)),     # an older state after a newer one: refused
        ("u2", changelog_value(_state(4, 10, 4), T0, FP)),
        ("u2", None),                                           # erased
        ("u3", b"\x09not a changelog record"),                  # unreadable: skipped and counted
        ("u4", b"\x01" + T0.to_bytes(8, "big") + _state(9, 10, 9)),   # format 1 (an older build): still read
        ("u4", changelog_value(_state(1, 20, 1), T0 + 50, FP)),     # state lost and restarted: a newer epoch wins
    ]
    for user, value in records:
        producer.send(topic, key=user.encode(), value=value)
    producer.flush()
    producer.close()
    return topic


def _stored(client: redis.Redis, keys: RedisKeys, user: str) -> list[str | None]:
    return client.hmget(keys.profile(user), "profile_version", "profile_epoch", "events_total", "updated_at")  # type: ignore[return-value]


def test_the_loader_applies_newest_states_erasures_and_skips_what_it_cannot_read(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str, changelog: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    client.hset(keys.profile("u2"), mapping={"profile_version": "1"})   # an older profile of the erased user
    client.sadd(keys.segment("browsing"), "u2")
    stats = ProfileLoader(_settings(kafka_bootstrap, redis_url, changelog, redis_prefix)).run(until_end=True)
    assert _stored(client, keys, "u1") == ["3", "10", "3", str(T0 + 3)]
    assert _stored(client, keys, "u4") == ["1", "20", "1", str(T0 + 50)]
    assert not client.exists(keys.profile("u2")) and not client.sismember(keys.segment("browsing"), "u2")
    assert not client.exists(keys.profile("u3"))
    assert (stats.records, stats.malformed, stats.erased) == (8, 1, 1)
    assert client.sismember(keys.segment("browsing"), "u1")   # the journey stage set follows the profile


def test_rebuild_restores_a_wiped_redis_from_the_changelog(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str, changelog: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    settings = [f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
                f"redis.key_prefix={redis_prefix}", f"kafka.topics.profiles={changelog}"]
    out = subprocess.run([sys.executable, "-m", "persona.cli", "loader", "--rebuild",
                          *(a for s in settings for a in ("--set", s))], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "8 records" in out.stdout and "1 unreadable" in out.stdout
    assert _stored(client, keys, "u1")[0] == "3" and _stored(client, keys, "u4")[:2] == ["1", "20"]
    client.delete(keys.profile("u1"), keys.profile("u4"))   # Redis lost its data
    again = subprocess.run([sys.executable, "-m", "persona.cli", "loader", "--rebuild",
                            *(a for s in settings for a in ("--set", s))], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert _stored(client, keys, "u1") == ["3", "10", "3", str(T0 + 3)]
    assert _stored(client, keys, "u4") == ["1", "20", "1", str(T0 + 50)]
    assert not client.exists(keys.profile("u2"))


def test_a_loader_with_other_profile_settings_refuses_the_job_s_records_with_one_line(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}.profiles"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    ensure_changelog_topic(admin, topic, partitions=1, replication=1)
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, key=b"u9", value=changelog_value(_state(1, 10, 1), T0, FP))
    producer.flush()
    producer.close()
    settings = [f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={redis_prefix}",
                f"kafka.topics.profiles={topic}", "profile.loyal_min_purchases=7"]   # not the job's
    out = subprocess.run([sys.executable, "-m", "persona.cli", "loader", "--rebuild",
                          *(a for s in settings for a in ("--set", s))], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if "error" in x]
    assert "'u9'" in line and "other profile settings" in line and FP.hex() in line
    assert not redis.Redis.from_url(redis_url).exists(RedisKeys(redis_prefix).profile("u9"))
