"""Slice job core: per-user counts, profile fields and dead-letter records against their schemas."""

from __future__ import annotations

import base64
import json
import pickle

import jsonschema
import redis

from operators.dead_letter import dead_letter_record
from operators.events import Rejection, SourceRef
from persona.settings import ROOT
from state.event_counts import EventCounts, count_event, profile_fields
from state.keys import RedisKeys
from state.profile_store import ProfileWriter


def _schema(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((ROOT / "schemas" / name).read_text())


def test_counts_version_and_last_event_time_with_out_of_order_input() -> None:
    s = None
    for t, ts in [("page_view", 100), ("add_to_cart", 300), ("page_view", 200)]:
        s = count_event(s, t, ts)
    assert s == EventCounts(version=3, events_total=3, last_event_time_ms=300, by_type={"page_view": 2, "add_to_cart": 1})
    assert pickle.loads(pickle.dumps(s)) == s


def test_profile_fields_follow_the_profile_schema() -> None:
    fields = profile_fields("u1", count_event(None, "search", 5), now_ms=99)
    jsonschema.validate(fields, _schema("profile.v1.json"))
    assert fields["profile_version"] == "1" and json.loads(fields["counts_by_type"]) == {"search": 1}


def test_dead_letter_record_follows_schema_and_keeps_bytes() -> None:
    raw = b'{"a":\xff}'
    rec = json.loads(dead_letter_record(raw, Rejection("not_utf8", "byte 5"), SourceRef("events", 1, 42, 7), 1000))
    jsonschema.validate(rec, _schema("dead_letter.v2.json"))
    assert base64.b64decode(rec["raw"]) == raw
    assert rec["source"] == {"topic": "events", "partition": 1, "offset": 42, "timestamp_ms": 7}


def test_writer_batches_by_size_and_age_and_coalesces_per_user() -> None:
    # No server is contacted: the client connects lazily and nothing is flushed here.
    writer = ProfileWriter(redis.Redis(port=1), RedisKeys("p:"), ttl_s=60, flush_interval_ms=200, max_batch=3)
    assert not writer.due(0)
    writer.put("u1", 1, {"x": "1"}, now_ms=1000)
    writer.put("u1", 2, {"x": "2"}, now_ms=1100)
    assert writer.pending == 1
    assert not writer.due(1199)
    assert writer.due(1200)
    writer.put("u2", 1, {}, now_ms=1150)
    writer.put("u3", 1, {}, now_ms=1150)
    assert writer.pending == 3 and writer.due(1150)
