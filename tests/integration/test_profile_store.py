"""The profile writer against a real Redis: version guard, segment moves, erasure, batching."""

from __future__ import annotations

import pytest
import redis

from state.keys import RedisKeys
from state.profile_store import ProfileWriter, read_profile

pytestmark = pytest.mark.integration
SEGMENTS = ("browsing", "considering", "loyal")


def test_older_version_never_overwrites_and_segments_follow(redis_url: str, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    w = ProfileWriter.from_url(redis_url, keys, ttl_s=60, flush_interval_ms=100, max_batch=10, segments=SEGMENTS)
    w.put("u1", 5, {"profile_version": "5", "stage": "loyal"}, now_ms=0, segment="loyal")
    assert w.flush() == 1
    w.put("u1", 4, {"profile_version": "4", "stage": "browsing"}, now_ms=1, segment="browsing")   # a replay
    assert w.flush() == 0 and w.skipped_stale == 1
    assert client.hget(keys.profile("u1"), "profile_version") == "5"
    assert client.smembers(keys.segment("loyal")) == {"u1"} and not client.smembers(keys.segment("browsing"))
    w.put("u1", 6, {"profile_version": "6"}, now_ms=2, segment="considering")
    w.flush()
    assert client.smembers(keys.segment("considering")) == {"u1"} and not client.smembers(keys.segment("loyal"))
    assert 0 < client.ttl(keys.profile("u1")) <= 60
    w.close()


def test_erasure_then_new_profile_in_one_batch(redis_url: str, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    client = redis.Redis.from_url(redis_url)
    w = ProfileWriter.from_url(redis_url, keys, ttl_s=60, flush_interval_ms=100, max_batch=10, segments=SEGMENTS)
    w.put("u2", 9, {"profile_version": "9", "secret": "x"}, now_ms=0, segment="loyal")
    w.flush()
    w.erase("u2", now_ms=1)
    w.put("u2", 1, {"profile_version": "1"}, now_ms=2, segment="browsing")   # state restarted at version 1
    w.flush()
    stored = read_profile(client, keys, "u2")
    assert stored == {"profile_version": 1, "profile_epoch": 0}
    assert client.smembers(keys.segment("loyal")) == set()
    w.erase("u2", now_ms=3)
    w.close()
    assert read_profile(client, keys, "u2") is None


def test_a_state_started_afresh_is_not_frozen_out_by_its_old_versions(redis_url: str, redis_prefix: str) -> None:
    """A lost state restarts at version 1: with a newer epoch its writes win; an old epoch's replays still lose."""
    keys = RedisKeys(redis_prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    w = ProfileWriter.from_url(redis_url, keys, ttl_s=60, flush_interval_ms=100, max_batch=10)
    w.put("u3", 500, {"profile_version": "500", "events_total": "500"}, now_ms=0, epoch=1_000)
    assert w.flush() == 1
    w.put("u3", 1, {"profile_version": "1", "events_total": "1"}, now_ms=1, epoch=2_000)   # the state was wiped
    assert w.flush() == 1
    assert client.hmget(keys.profile("u3"), "profile_epoch", "events_total") == ["2000", "1"]
    w.put("u3", 499, {"profile_version": "499", "events_total": "499"}, now_ms=2, epoch=1_000)   # a stale writer
    assert w.flush() == 0
    w.put("u3", 2, {"profile_version": "2", "events_total": "2"}, now_ms=3, epoch=2_000)
    assert w.flush() == 1 and client.hget(keys.profile("u3"), "events_total") == "2"
    client.hset(keys.profile("u4"), mapping={"profile_version": "7"})   # written before epochs existed
    w.put("u4", 1, {"profile_version": "1"}, now_ms=4, epoch=3_000)
    assert w.flush() == 1
    w.close()


def test_persona_profile_reads_under_another_key_prefix(redis_url: str, redis_prefix: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from persona.cli import main
    keys = RedisKeys(redis_prefix)
    w = ProfileWriter.from_url(redis_url, keys, ttl_s=60, flush_interval_ms=100, max_batch=10)
    w.put("u5", 3, {"profile_version": "3", "events_total": "3"}, now_ms=0, epoch=1)
    w.close()
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["profile", "u5", "--set", f"redis.key_prefix={redis_prefix}"]) == 0
    assert '"events_total": 3' in capsys.readouterr().out


def test_a_redis_that_lost_its_scripts_gets_them_again_and_the_batch_lands_once(redis_url: str, redis_prefix: str) -> None:
    """The guard is called by its SHA; a restarted or flushed Redis answers NOSCRIPT, and the writer loads it and
    sends the batch again: every profile lands, counted once."""
    keys = RedisKeys(redis_prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    w = ProfileWriter.from_url(redis_url, keys, ttl_s=60, flush_interval_ms=100, max_batch=10, segments=SEGMENTS)
    w.put("u7", 1, {"profile_version": "1"}, now_ms=0, segment="loyal")
    assert w.flush() == 1
    client.script_flush()
    w.erase("u7", now_ms=1)
    w.put("u7", 1, {"profile_version": "1", "stage": "browsing"}, now_ms=2, segment="browsing")
    w.put("u8", 3, {"profile_version": "3"}, now_ms=2)
    assert w.flush() == 2 and w.written == 3 and w.skipped_stale == 0
    assert client.hget(keys.profile("u7"), "stage") == "browsing" and client.hget(keys.profile("u8"), "profile_version") == "3"
    assert client.smembers(keys.segment("browsing")) == {"u7"} and client.smembers(keys.segment("loyal")) == set()
    w.close()
