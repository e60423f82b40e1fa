"""``persona backfill`` on the real stack: a year-old recorded stream loaded without a message, a savepoint, the live
job started from it with the command the backfill printed, and live events; against the independent oracle."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from itertools import groupby
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from persona.generator.shoppers import GeneratedRecord, generate
from persona.settings import ROOT, load_generator_settings
from persona.stack.procs import StackError, wait_until
from state.keys import RedisKeys
from state.model_registry import model_info
from tests.fixtures.kafka_io import produce, read_all_json, read_with_timestamps
from tests.fixtures.personalization_oracle import Expected, expected, trigger_mismatches
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import profile_mismatches

pytestmark = pytest.mark.integration
DAY = 86_400_000


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _relabel(records: list[GeneratedRecord], tag: str) -> list[GeneratedRecord]:
    """The live stream's own event and order ids (the generator numbers each user's from 0, as in the history, and
    the job would drop a repeated id as a retry)."""
    out = []
    for r in records:
        if r.event is None:
            out.append(r)
            continue
        event = {**r.event, "event_id": f"{tag}{r.event['event_id']}"}
        if "order_id" in (event.get("payload") or {}):
            event["payload"] = {**event["payload"], "order_id": f"{tag}{event['payload']['order_id']}"}
        out.append(replace(r, event=event, value=json.dumps(event).encode()))
    return out


def _visits(users: list[str], at: int, tag: str) -> list[GeneratedRecord]:
    out = []
    for i, user in enumerate(users):
        event = {"event_id": f"{user}-{tag}", "event_type": "page_view", "user_id": user, "schema_version": 1,
                 "event_time": _iso(at + i), "payload": {"page_type": "home"}}
        out.append(GeneratedRecord(user.encode(), json.dumps(event).encode(), event, at + i))
    return out


def _sent_after(want: Expected, boundary: int) -> Expected:
    """The oracle's triggers less those of history (released before ``boundary``: a year before it, here)."""
    def live(ids: set[str]) -> set[str]:
        return {t for t in ids if t not in want.released or want.released[t][1] >= boundary}
    return replace(want, triggers={p: live(ids) for p, ids in want.triggers.items()},
                   maybe={p: live(ids) for p, ids in want.maybe.items()})


def test_backfill_a_year_old_stream_then_the_live_job_from_its_savepoint(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    year_ago = _iso(now - 400 * DAY)
    history = list(generate(load_generator_settings({"users": 250, "seed": 31, "bot_fraction": 0.0,
                                                     "start_time": year_ago, "span_hours": 24})))
    # The live part: the same shoppers (the same seed: the same devices and time zones, which the oracle holds
    # constant per user) 60 hours ago: within the job's age limit, and far enough back that the last visits below
    # pass every deadline and quiet-hour release without an event from the future.
    live_start = now - 60 * 3_600_000
    live = _relabel(list(generate(load_generator_settings({"users": 250, "seed": 31, "bot_fraction": 0.0,
                                                           "start_time": _iso(live_start), "span_hours": 2}))), "live-")
    users = sorted({r.event["user_id"] for r in history + live if r.event is not None})
    live_end = max(r.event_time_ms for r in live)
    finals = _visits(users, live_end + DAY, "final") + _visits([f"zz-end{i}" for i in range(8)], live_end + 2 * DAY, "probe")
    assert max(r.event_time_ms for r in finals) < now
    # As docs/history.md asks: the topic keeps the history while it is read (its retention would delete it).
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.events, {"retention.ms": "-1"})])
    admin.close()
    history_file = tmp_path / "history.jsonl"
    history_file.write_bytes(b"".join(r.value.replace(b"\n", b" ") + b"\n" for r in history))
    base = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
            f"redis.key_prefix={redis_prefix}", "kafka.group_id=shop", "models.bot_min_session_events=1000000"]

    dry_topic = f"{topics.triggers}.dry-run"
    backfill = subprocess.run([sys.executable, "-m", "persona.cli", "backfill", "--events", str(history_file),
                               "--quiet", "--dry-run-topic", dry_topic, "--savepoint-dir",
                               str(tmp_path / "savepoints"), "--history-until", _iso(live_start),
                               *(a for o in base for a in ("--set", o))],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    out = backfill.stdout
    assert backfill.returncode == 0, out[-3000:] + backfill.stderr[-3000:]
    # The summary adds up to the history, and the one command to go live is printed.
    read = int(re.search(r"history: ([\d,]+) events", out).group(1).replace(",", ""))
    processed, dead, total = (int(x.replace(",", "")) for x in
                              re.search(r"processed ([\d,]+), dead-lettered ([\d,]+).*: ([\d,]+) in all", out).groups())
    assert read == len(history) == total == processed + dead, out
    suppressed = int(re.search(r"suppressed and never sent: ([\d,]+)", out).group(1).replace(",", ""))
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("persona run --from-savepoint"))

    want_history = expected(history)
    assert sum(len(ids) for ids in want_history.triggers.values()) > 20 and suppressed > 0
    assert read_all_json(kafka_bootstrap, topics.triggers) == []             # nothing of history reached anyone
    # --dry-run-topic: each match of history, as the trigger it would have been; every one the oracle would have
    # sent is there (those decided by the backfill: due an hour before history's end), and the live job writes none.
    dry = read_all_json(kafka_bootstrap, dry_topic)
    assert len(dry) == suppressed and all(t["history"] is True for t in dry)
    end = max(r.event_time_ms for r in history)
    decided = {tid for tid, (_, at) in want_history.released.items() if at <= end - 3_600_000}
    assert len(decided) > 20 and decided <= {t["trigger_id"] for t in dry}
    # The live job has no dry-run sink: it drops that sink's state from the savepoint, as the command says.
    assert "dry_run_topic" not in command and dry_topic not in command and "--allow-non-restored-state" in command
    dead_letters = read_all_json(kafka_bootstrap, topics.dead_letter)
    assert "event_time_out_of_range" not in Counter(d["reason"] for d in dead_letters)
    assert Counter(d["reason"] for d in dead_letters) == want_history.dead_letter_reasons
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    # The loader caught up with the backfill. Compared: what events decide (the stage and profile_version also count
    # timer releases, and the history's last timers fire only when the live stream moves the watermark).
    by_events = {u: {k: v for k, v in f.items() if k not in ("stage", "profile_version")}
                 for u, f in want_history.profiles.items()}
    assert profile_mismatches(client, keys, by_events) == []
    warm = model_info(client, keys, "propensity")
    assert warm is not None and warm["examples"] > 0                        # warm models, published by the backfill

    # The live job, started with the printed command, then live events and the last visits.
    args = shlex.split(command)
    assert args[:2] == ["persona", "run"]
    with open(tmp_path / "live.log", "wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "persona.cli", *args[1:], "--quiet"], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        produce(kafka_bootstrap, topics.events, live + finals)
        want = expected(history + live + finals)
        wait_until(lambda: job.poll() is None and not profile_mismatches(client, keys, want.profiles), 300,
                   "profiles over history and live equal to the oracle", interval_s=1.0,
                   failed=lambda: None if job.poll() is None else
                   f"the live job exited with {job.returncode}: " + (tmp_path / "live.log").read_text()[-3000:])
        sent_want = _sent_after(want, live_start)
        assert sum(len(ids) for ids in sent_want.triggers.values()) > 10
        def sent_now() -> list[dict]:  # type: ignore[type-arg]
            return read_all_json(kafka_bootstrap, topics.triggers, isolation_level="read_committed")
        try:
            wait_until(lambda: not trigger_mismatches(sent_now(), sent_want), 120, "the live triggers", interval_s=1.0)
        except StackError:
            pass   # the assertion below shows what differs
        sent = sent_now()
        diff = trigger_mismatches(sent, sent_want)
        extra = {t for d in diff.values() for t in d["extra"]}
        assert diff == {}, ([t for t in sent if t["trigger_id"] in extra], [want.released.get(t) for t in extra],
                            live_start)
        assert len(sent) == len({t["trigger_id"] for t in sent}), "a live trigger sent twice"
        assert all(t["event_time"] >= live_start for t in sent), "a trigger of history was sent"
        dead_letters = read_all_json(kafka_bootstrap, topics.dead_letter)
        assert "event_time_out_of_range" not in Counter(d["reason"] for d in dead_letters)
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGINT)   # our own job, by its pid
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait(timeout=30)


def _six_hours_of_last_year(bootstrap: str, topic: str, seed: int) -> list[GeneratedRecord]:
    """80 shoppers' six hours, 400 days ago; ``topic`` keeps them (as docs/history.md asks of a backfill)."""
    now = int(time.time() * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "-1"})])
    admin.close()
    return list(generate(load_generator_settings({"users": 80, "seed": seed, "bot_fraction": 0.0,
                                                  "start_time": _iso(now - 400 * DAY), "span_hours": 6})))


def test_a_backfill_of_a_transactional_topic_ends_at_its_last_commit_marker(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    """A topic written in transactions ends with a commit marker that no record follows: the job's committed offset
    stays one short of the end, and the backfill must still see that the history is read."""
    history = _six_hours_of_last_year(kafka_bootstrap, topics.events, seed=33)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"shop-{topics.events}")
    producer.init_transactions()
    for part in (history[: len(history) // 2], history[len(history) // 2:]):   # two transactions
        producer.begin_transaction()
        for r in part:
            producer.send(topics.events, key=r.key, value=r.value, timestamp_ms=r.event_time_ms)
        producer.commit_transaction()
    # A third one, aborted: its records stay in the log, and the job must not apply them (read_committed).
    aborted = []
    for i, r in enumerate(history[:3]):
        doc = {**json.loads(r.value), "user_id": "u-aborted", "event_id": f"aborted-{i}", "session_id": "s-aborted"}
        aborted.append((json.dumps(doc).encode(), r.event_time_ms))
    producer.begin_transaction()
    aborted_partitions = {producer.send(topics.events, key=b"u-aborted", value=value, timestamp_ms=t).get(30).partition
                          for value, t in aborted}
    producer.abort_transaction()
    producer.close()
    base = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
            f"redis.key_prefix={redis_prefix}", "kafka.group_id=shop-tx", "models.bot_min_session_events=1000000"]
    backfill = subprocess.run([sys.executable, "-m", "persona.cli", "backfill", "--quiet", "--savepoint-dir",
                               str(tmp_path / "savepoints"), *(a for o in base for a in ("--set", o))],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    out = backfill.stdout
    assert backfill.returncode == 0, out[-3000:] + backfill.stderr[-3000:]
    assert "hold no record (transaction markers or aborted records)" in backfill.stderr
    # Every committed event is accounted for, and the offsets count the markers and the aborted records too: a
    # marker per transaction and partition (2 x 2 commits, an abort per partition the aborted records went to).
    offsets = int(re.search(r"history: ([\d,]+) offsets", out).group(1).replace(",", ""))
    total = int(re.search(r": ([\d,]+) in all", out).group(1).replace(",", ""))
    assert (offsets, total) == (len(history) + 4 + len(aborted) + len(aborted_partitions), len(history))
    assert "savepoint: " in out and read_all_json(kafka_bootstrap, topics.triggers) == []
    want = expected(history)
    by_events = {u: {k: v for k, v in f.items() if k not in ("stage", "profile_version")} for u, f in want.profiles.items()}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert profile_mismatches(client, RedisKeys(redis_prefix), by_events) == []
    assert client.exists(RedisKeys(redis_prefix).profile("u-aborted")) == 0   # the aborted records were not applied


def test_a_backfill_from_a_time_starts_each_partition_at_its_first_record_at_or_after_it(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    """``persona backfill --from TIME`` on a topic: what comes before TIME in each partition is not history."""
    history = _six_hours_of_last_year(kafka_bootstrap, topics.events, seed=35)
    produce(kafka_bootstrap, topics.events, history)
    start = sorted(r.event_time_ms for r in history)[len(history) // 2]
    # Independently of the broker's time index: each partition read back, from its first record at or after it.
    in_slice: list[tuple[bytes | None, bytes]] = []
    before: list[tuple[bytes | None, bytes]] = []
    for _, rows in groupby(read_with_timestamps(kafka_bootstrap, topics.events), key=lambda row: row[0]):
        rows_list = list(rows)
        first = next((i for i, (_, _, ts, _, _) in enumerate(rows_list) if ts >= start), len(rows_list))
        before += [(k, v) for _, _, _, k, v in rows_list[:first]]
        in_slice += [(k, v) for _, _, _, k, v in rows_list[first:]]
    assert in_slice and before
    base = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
            f"redis.key_prefix={redis_prefix}", "kafka.group_id=shop-from", "models.bot_min_session_events=1000000"]
    backfill = subprocess.run([sys.executable, "-m", "persona.cli", "backfill", "--quiet", "--from", str(start),
                               "--savepoint-dir", str(tmp_path / "savepoints"), *(a for o in base for a in ("--set", o))],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    out = backfill.stdout
    assert backfill.returncode == 0, out[-3000:] + backfill.stderr[-3000:]
    read = int(re.search(r"history: ([\d,]+) events", out).group(1).replace(",", ""))
    assert read == len(in_slice), out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("persona run --from-savepoint"))
    assert "starting_offsets" not in command and "starting_timestamp_ms" not in command
    # A user wholly after the start is as the oracle has them; one wholly before it was never read.
    keys_in, keys_before = {k for k, _ in in_slice}, {k for k, _ in before}
    after_only = {k.decode() for k in keys_in - keys_before if k}
    before_only = {k.decode() for k in keys_before - keys_in if k}
    assert len(after_only) > 5 and len(before_only) > 5
    want = expected(history)
    by_events = {u: {k: v for k, v in f.items() if k not in ("stage", "profile_version")}
                 for u, f in want.profiles.items() if u in after_only}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    assert profile_mismatches(client, keys, by_events) == []
    assert [u for u in before_only if client.exists(keys.profile(u))] == []
