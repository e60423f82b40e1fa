"""Poison pills, fuzzed records and redelivered batches through the real job: nothing lost, no restart,
valid users' profiles equal to the oracle."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import GeneratedRecord, generate
from persona.settings import load_generator_settings
from state.keys import RedisKeys
from tests.fixtures.jobs import history_override, run_bounded_job
from tests.fixtures.kafka_io import produce_raw, read_all_json
from tests.fixtures.personalization_oracle import expected
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import profile_mismatches

pytestmark = pytest.mark.integration


def _poison(rng: random.Random, n: int) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected dead-letter reason): the pills found by hand, and random bytes and JSON."""
    pills: list[tuple[bytes | None, bytes, str]] = [
        (b"p-deep", b"[" * 3000 + b"]" * 3000, "too_deep"),   # once a RecursionError: 3 restarts, then a failed job
        (b"p-deep", b'{"a":' * 3000 + b"1" + b"}" * 3000, "too_deep"),
        (b"p-big", b'{"x":"' + b"a" * 80_000 + b'"}', "record_too_large"),
        (b"p-big", bytes(range(128, 256)) * 800, "record_too_large"),   # 100 KB, not UTF-8
        (b"p-utf", b"\xff\xfe{}", "not_utf8"),
        (b"p-json", b"{nope", "bad_json"),
        (b"p-9999", json.dumps({"event_id": "x1", "event_type": "search", "user_id": "p-9999", "schema_version": 1,
                                "event_time": "9999-12-31T23:59:59Z", "payload": {"query": "q"}}).encode(),
         "event_time_out_of_range"),
    ]
    out = [pills[i % len(pills)] for i in range(n // 2)]
    for i in range(n - len(out)):   # random JSON objects without the required fields: missing_field
        doc = {rng.choice(["a", "b", "payload", "context"]): rng.choice([None, 1, "x", [], {}]) for _ in range(3)}
        doc.pop("event_id", None)
        out.append((f"p-rand{i % 50}".encode(), json.dumps(doc).encode(), "missing_field"))
    return out


def test_fuzzed_stream_loses_nothing_and_never_restarts(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                        redis_prefix: str, tmp_path: Path) -> None:
    records: list[GeneratedRecord] = list(generate(load_generator_settings({"users": 200, "seed": 44, "bot_fraction": 0.0}),
                                                   max_records=5_000))
    rng = random.Random(44)
    stream: list[tuple[bytes | None, bytes, int]] = []
    duplicates = 0
    for r in records:
        stream.append((r.key, r.value, r.event_time_ms))
        if r.event is not None and r.delay == "in_order" and rng.random() < 0.1:
            stream.append((r.key, r.value, r.event_time_ms))   # the producer retried: the same record again
            duplicates += 1
    poison = _poison(rng, 5_000)
    for key, value, _ in poison:   # spread over the stream, stamped like their neighbour (the watermark stays put)
        at = rng.randrange(1, len(stream))
        stream.insert(at, (key, value, stream[at - 1][2]))
    assert len(stream) >= 10_000
    produce_raw(kafka_bootstrap, topics.events, stream)

    overrides = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
                 f"redis.key_prefix={redis_prefix}", "kafka.starting_offsets=earliest", "kafka.group_id=fuzz", "models.bot_min_session_events=1000000",
                 history_override(),
                 # Any failure fails the run: no restart may hide a crash (and restarts re-send dead letters).
                 "flink.restart_attempts=0"]
    run_bounded_job("jobs.personalization", overrides, tmp_path, timeout_s=600)

    want = expected(records)
    want_dead = want.dead_letter_reasons + Counter(reason for _, _, reason in poison)
    dead = read_all_json(kafka_bootstrap, topics.dead_letter)
    assert Counter(d["reason"] for d in dead) == want_dead
    assert all(len(json.dumps(d)) < 64_000 for d in dead)

    # The job's own ledger: every record read is applied, a duplicate, or dead-lettered, exactly once.
    log = (tmp_path / "jobs.personalization.log").read_text(errors="replace")
    ledgers = [json.loads(line.split(" ", 1)[1]) for line in log.splitlines() if line.startswith("persona-ledger ")]
    assert ledgers, "the job printed no ledger"
    ledger: Counter[str] = sum((Counter(x) for x in ledgers), Counter())
    assert ledger["duplicate"] == duplicates
    assert sum(n for k, n in ledger.items() if k.startswith("dead_letter.")) == len(dead)
    assert ledger["applied"] + ledger["duplicate"] + len(dead) == len(stream)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert profile_mismatches(client, RedisKeys(redis_prefix), want.profiles) == []
