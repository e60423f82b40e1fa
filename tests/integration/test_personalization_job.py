"""The personalization job on real Kafka and Redis, against the independent oracle."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from operators.co_occurrence import ItemSignal, RecommendRules
from operators.item_table import ItemTable, publications
from operators.profile_fold import profile_record
from persona.dry_run import dry_run
from persona.generator.shoppers import generate
from persona.rule_commands import live_rules_file
from persona.rules import profile_rules, recommend_rules
from persona.serving import recommend
from persona.settings import ROOT, RedisServiceSettings, load_generator_settings, load_job_settings
from persona.stack.procs import free_port, wait_until
from persona.stack.redis_server import RedisServer
from persona.stack.topics import ensure_topics
from state.item_store import ItemWriter
from state.keys import RedisKeys
from state.profile_history import at, live_versions
from state.profile_store import read_profile
from tests.fixtures.item_oracle import expected_items, expected_lists, item_mismatches, list_mismatches
from tests.fixtures.jobs import history_override, run_bounded_job
from tests.fixtures.kafka_io import produce, produce_raw, read_all_json, read_keyed
from tests.fixtures.personalization_oracle import (
    expected,
    leftovers,
    ms,
    profile_at,
    settled,
    stored_field,
    trigger_mismatches,
)
from tests.fixtures.services import TopicNames

pytestmark = pytest.mark.integration


def job_overrides(topics: TopicNames, bootstrap: str, redis_url: str, prefix: str, group: str) -> list[str]:
    return [*topics.overrides(), f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}",
            f"redis.key_prefix={prefix}", "kafka.starting_offsets=earliest", f"kafka.group_id={group}",
            # The oracle knows the bot rule's verdicts (none for these humans), not the bot model's, whose
            # published versions arrive with processing-time timing.
            "models.bot_min_session_events=1000000", history_override(),
            # The recommender on, and no neighbour evicted (which one a full item evicts depends on the order
            # signals arrive in).
            "recommend.enabled=true", "recommend.neighbours_per_item=1000",
            # Every profile version to the history topic ({profiles}.history, created by the job).
            "history.profile_versions=true"]


def stored_items(client: redis.Redis, keys: RedisKeys) -> dict[str, dict[str, Any]]:
    """Every item record in Redis, with ``weight_at_as_of`` from the item's score in its category's sorted set."""
    out = {}
    for key in client.scan_iter(keys.item_pattern(), count=1000):
        record = json.loads(client.hget(key, "record"))
        score = client.zscore(keys.item_weights(record["category"], record["item"]), record["item"])
        record["weight_at_as_of"] = None if score is None else 2 ** (score - record["as_of"] / 604_800_000)
        out[record["item"]] = record
    return out


def triggers_by_pattern(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        out[row["pattern"]].add(row["trigger_id"])
    return dict(out)


def profile_mismatches(client: redis.Redis, keys: RedisKeys, want: dict[str, dict[str, Any]]
                       ) -> list[tuple[str, str, Any, Any]]:
    """(user, field, stored, expected) for every deterministic profile field that differs from the oracle."""
    out = []
    for user, fields in want.items():
        profile = client.hgetall(keys.profile(user))
        for name, value in fields.items():
            if stored_field(profile, name) != value:
                out.append((user, name, stored_field(profile, name), value))
    return out


# Parallelism 2: users are spread over two Personalize subtasks, each with its own Redis writer and timers,
# and the watermark is the minimum over two source subtasks; the result must not change.
@pytest.mark.parametrize("parallelism", [1, 2])
def test_profiles_triggers_and_dead_letters_equal_the_oracle(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                              redis_prefix: str, tmp_path: Path, parallelism: int) -> None:
    records = list(generate(load_generator_settings({"users": 450, "seed": 21, "bot_fraction": 0.0}), max_records=22_000))
    assert len(records) >= 20_000
    assert {r.delay for r in records} == {"in_order", "out_of_order", "late"} and any(r.malformed for r in records)
    produce(kafka_bootstrap, topics.events, records)

    run_bounded_job("jobs.personalization", [*job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "p-test"),
                                             f"flink.parallelism={parallelism}"], tmp_path, timeout_s=600)

    want = expected(records)
    dead = read_all_json(kafka_bootstrap, topics.dead_letter)
    assert Counter(d["reason"] for d in dead) == want.dead_letter_reasons

    # Users who asked for erasure are included: the oracle starts them afresh at each erasure.
    assert want.erased_users and want.nothing_left and want.erased_users & set(want.profiles)
    sent = read_all_json(kafka_bootstrap, topics.triggers)
    assert trigger_mismatches(sent, want) == {}
    if parallelism == 1:
        # `persona rules dry-run --live current` runs the same core, with the rule set in force (the one the job
        # published at start-up), over the same events: the same triggers, id for id.
        settings = load_job_settings({"models.bot_min_session_events": 1_000_000, "redis.url": redis_url,
                                      "redis.key_prefix": redis_prefix})
        settings = settings.model_copy(update={"patterns_file": str(live_rules_file(settings, "current", tmp_path))})
        live, _, n = dry_run(settings, settings, (r.value for r in records), progress=False)
        assert n == len(records)
        assert {p: ids for p, ids in live.trigger_ids.items() if ids} == triggers_by_pattern(sent)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    assert profile_mismatches(client, keys, want.profiles) == []
    assert leftovers(client, keys, want.nothing_left) == []   # an erased user with no later event: nothing
    # The front-end read API returns the same values, typed.
    some_user = sorted(want.profiles)[0]
    typed = read_profile(client, keys, some_user)
    assert typed is not None and typed["events_total"] == want.profiles[some_user]["events_total"]
    assert typed["rfm"]["frequency_90d"] == want.profiles[some_user]["rfm.frequency_90d"]
    assert isinstance(typed["marketing_consent"], bool)
    assert read_profile(client, keys, "nobody") is None
    stages = Counter(f["stage"] for f in want.profiles.values())
    for stage, n in stages.items():
        assert len(client.smembers(keys.segment(stage))) == n, stage
    # The item operator (keyed by item shard, fed by every Personalize subtask): the decayed co-occurrence of
    # the same events, computed independently.
    items = expected_items(records)
    assert len(items) > 100 and sum(len(i["neighbours"]) for i in items.values()) > 1_000
    assert item_mismatches(stored_items(client, keys), items) == []
    # Each user's list, looked up as a front-end would (`persona recommend`), against the oracle's ranking.
    lists = expected_lists(records)
    assert sum(1 for ranked in lists.values() if len(ranked) == 20) > 300
    rules = recommend_rules(load_job_settings())
    got = {user: recommend(client, keys, user, rules).items for user in lists}
    assert list_mismatches(got, lists) == []
    history_checks(kafka_bootstrap, topics, records, want, sent, [*job_overrides(topics, kafka_bootstrap, redis_url,
                                                                                  redis_prefix, "p-test")])


def history_checks(bootstrap: str, topics: TopicNames, records: list[Any], want: Any, sent: list[dict[str, Any]],
                   overrides: list[str]) -> None:
    """The profile history the job wrote: each user's newest version is their profile, an erased user has none,
    every trigger's version is held, and the profile at 20 random settled times equals the oracle's."""
    held = [(k.encode(), v) for _, _, k, v in read_keyed(bootstrap, f"{topics.profiles}.history") if k is not None]
    rules = profile_rules(load_job_settings())
    versions = {user: live_versions(held, user) for user in {*want.profiles, *want.erased_users}}
    for user, fields in want.profiles.items():
        newest = versions[user][-1]
        assert newest.change is not None and newest.change.state is not None
        profile, _ = profile_record(user, newest.change.state, rules, 0)
        assert {n: stored_field(profile, n) for n in fields} == fields, user
    assert all(versions[user] == [] for user in want.nothing_left)
    kept = {(u, v.version) for u, vs in versions.items() for v in vs}
    named = [(t["user_id"], t["profile_version"]) for t in sent if t["user_id"] not in want.erased_users]
    assert named and all(n in kept for n in named)
    # A Flink watermark is the minimum over partitions, each fetched in chunks of up to ~3,000 records (~6 hours of
    # this stream's event time): 12 hours cover what they usually run apart. When they ran further (a CI run once
    # saw it), the job released an abandonment due by t after the user's next event, and so never held the profile
    # as of t: its history then shows a version as of t or before after one as of later. Those pairs are redrawn too,
    # and must stay rare.
    rng, compared, tried, out_of_order = random.Random(5), 0, 0, 0
    users = sorted(u for u in want.profiles if u not in want.erased_users and want.profiles[u]["events_total"] > 5)
    times = {u: [ms(r.event["event_time"]) for r in records if r.event is not None and r.event["user_id"] == u]
             for u in users}
    while compared < 20:
        tried += 1
        assert tried < 5_000, "too few settled (user, time) pairs"
        user = rng.choice(users)
        t = rng.randint(min(times[user]), max(times[user]) + 3_600_000)
        if not settled(records, user, t, lag_ms=12 * 3_600_000):
            continue
        if not held_in_order(versions[user], t):
            out_of_order += 1
            assert out_of_order <= 5, "the job's watermark ran far behind for too many (user, time) pairs"
            continue
        found, oracle = at(versions[user], t), profile_at(records, user, t)
        assert found is not None and found.change is not None and found.change.state is not None and oracle
        profile, _ = profile_record(user, found.change.state, rules, 0)
        assert {n: stored_field(profile, n) for n in oracle} == oracle, (user, t)
        compared += 1
    # The command a person runs: `persona profile USER --at TIME` gives the same version.
    cli = subprocess.run([sys.executable, "-m", "persona.cli", "profile", user, "--at", str(t),
                          *(a for o in overrides for a in ("--set", o))], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["profile_version"] == found.version


def held_in_order(versions: list[Any], t: int) -> bool:
    """Whether the job wrote every version as of ``t`` or before ahead of every version as of later."""
    later = [i for i, v in enumerate(versions) if v.as_of_ms > t]
    return not later or all(v.as_of_ms > t for v in versions[later[0]:])


def test_absence_timer_fires_for_a_silent_user(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                               redis_prefix: str, tmp_path: Path) -> None:
    """One user adds to cart and goes silent; only other users' traffic moves the watermark past the deadline. The
    trigger carries 3 alternatives from the user's list (docs/recommendations.md "In triggers")."""
    t0 = 1_793_620_800_000   # 2026-11-02 12:00 UTC: outside quiet hours in UTC
    # The shop's items as Redis holds them, with fold counts the job's own publications (p1) never reach.
    rules, keys = RecommendRules(), RedisKeys(redis_prefix)
    table = ItemTable(rules)
    table.fold([ItemSignal(i, "toys", "", w, t0) for i, w in (("a", 1.0), ("b", 5.0), ("c", 3.0), ("d", 1.0))] * 50)
    ItemWriter(redis.Redis.from_url(redis_url), keys).publish(publications(table.items.values(), rules))
    patterns = yaml.safe_load((ROOT / "conf" / "patterns.yaml").read_text())
    patterns["patterns"]["cart_abandonment"]["include_list"] = 3
    (tmp_path / "patterns.yaml").write_text(yaml.safe_dump(patterns))

    def event(user: str, n: int, t: int, event_type: str, payload: dict[str, Any]) -> bytes:
        return json.dumps({"event_id": f"{user}-{n}", "event_type": event_type, "user_id": user, "schema_version": 1,
                           "event_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03d}Z",
                           "context": {"device": "desktop", "timezone": "UTC"}, "payload": payload}).encode()

    cmd = [sys.executable, "-m", "jobs.personalization",
           *(a for o in job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "silent") for a in ("--set", o)),
           "--set", f"patterns_file={tmp_path / 'patterns.yaml'}"]
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        produce_raw(kafka_bootstrap, topics.events, [(b"silent", event("silent", 1, t0, "add_to_cart", {
            "product_id": "p1", "category": "shoes", "price": 10.0, "currency": "EUR", "quantity": 1}), t0)])
        # Other users browse for 40 minutes of event time, spread over both partitions.
        filler = [(f"busy{i % 8}".encode(), event(f"busy{i % 8}", i, t0 + i * 30_000, "page_view", {"page_type": "home"}),
                   t0 + i * 30_000) for i in range(1, 81)]
        produce_raw(kafka_bootstrap, topics.events, filler)

        def abandoned() -> bool:
            return any(r["user_id"] == "silent" for r in read_all_json(kafka_bootstrap, topics.triggers))
        wait_until(lambda: job.poll() is None and abandoned(), 180, "the silent user's abandonment trigger",
                   interval_s=1.0)
        rows = [r for r in read_all_json(kafka_bootstrap, topics.triggers) if r["user_id"] == "silent"]
        assert [(r["pattern"], r["event_time"]) for r in rows] == [("cart_abandonment", t0 + 30 * 60_000)]
        # The silent user's only item is p1 (in the cart, so never listed; no neighbours): the shop's best, by
        # weight b 5 > c 3 > a 1 = d 1 (ties by id).
        assert rows[0]["alternatives"] == ["b", "c", "a"]
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=30)


def _shop_event(user: str, n: int, t: int, event_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"event_id": f"{user}-{n}", "event_type": event_type, "user_id": user, "schema_version": 1,
                       "event_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03d}Z",
                       "context": {"device": "desktop", "timezone": "UTC"}, "payload": payload}).encode()


def test_a_bad_producers_timestamps_do_not_fire_other_users_timers(kafka_bootstrap: str, redis_url: str,
                                                                   topics: TopicNames, redis_prefix: str,
                                                                   tmp_path: Path) -> None:
    """Records stamped with the produce time (a replay without timestamps) or from the far future once moved
    the watermark past every deadline; now only timestamps that agree with event_time move it."""
    t0 = 1_793_620_800_000   # 2026-11-02 12:00 UTC
    home = {"page_type": "home"}
    cmd = [sys.executable, "-m", "jobs.personalization",
           *(a for o in job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "bad-ts") for a in ("--set", o))]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)

    def seen(user: str, t: int) -> bool:
        return client.hget(keys.profile(user), "last_event_time") == str(t)

    def silent_triggers() -> list[dict[str, Any]]:
        return [r for r in read_all_json(kafka_bootstrap, topics.triggers) if r["user_id"] == "silent"]

    # The Python operators log through the mini-cluster's log4j, to a file in FLINK_LOG_DIR.
    env = {**os.environ, "FLINK_LOG_DIR": str(tmp_path)}
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        produce_raw(kafka_bootstrap, topics.events, [(b"silent", _shop_event("silent", 1, t0, "add_to_cart", {
            "product_id": "p1", "category": "shoes", "price": 10.0, "currency": "EUR", "quantity": 1}), t0)])
        # Eight users (both partitions) from bad producers: the produce time on old events, and the future (the
        # broker itself refuses timestamps more than log.message.timestamp.after.max.ms, 1 h, ahead).
        now = int(time.time() * 1000)
        bad = [(f"bad{i}".encode(), _shop_event(f"bad{i}", 1, t0 + 60_000, "page_view", home),
                now if i % 2 else now + 30 * 60_000) for i in range(8)]
        # Good traffic up to a minute before the deadline, on both partitions.
        good = [(f"busy{i % 8}".encode(), _shop_event(f"busy{i % 8}", i, t0 + i * 60_000, "page_view", home),
                 t0 + i * 60_000) for i in range(1, 30)]
        produce_raw(kafka_bootstrap, topics.events, bad + good)
        wait_until(lambda: job.poll() is None and seen("busy5", t0 + 29 * 60_000) and all(
            seen(f"bad{i}", t0 + 60_000) for i in range(8)), 180, "every record processed", interval_s=0.5)
        # The watermark stands just before the deadline: the silent user's cart has not been abandoned yet.
        assert silent_triggers() == []
        log_text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("flink-*-python-*.log"))
        assert log_text.count("does not set the record timestamp to the event time") == 1   # rate-limited
        # Good traffic past the deadline releases it, at its deadline.
        produce_raw(kafka_bootstrap, topics.events, [(f"busy{i}".encode(), _shop_event(f"busy{i}", 40 + i, t0 + 31 * 60_000,
                                                      "page_view", home), t0 + 31 * 60_000) for i in range(8)])
        wait_until(lambda: job.poll() is None and bool(silent_triggers()), 120, "the silent user's trigger", interval_s=0.5)
        assert [(r["pattern"], r["event_time"]) for r in silent_triggers()] == [("cart_abandonment", t0 + 30 * 60_000)]
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=30)


def test_profiles_keep_updating_after_the_state_is_lost(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                        redis_prefix: str, tmp_path: Path) -> None:
    """A job that starts with no state (a wipe, a lost checkpoint) counts versions from 1 again: its newer epoch
    lets its profiles replace the old ones, which once refused them for 30 days."""
    t0 = 1_793_620_800_000
    users = [f"w{i}" for i in range(6)]
    home = {"page_type": "home"}

    def events(first: int, last: int) -> list[tuple[bytes | None, bytes, int]]:
        return [(u.encode(), _shop_event(u, n, t0 + n * 1000, "page_view", home), t0 + n * 1000)
                for n in range(first, last + 1) for u in users]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys(redis_prefix)
    produce_raw(kafka_bootstrap, topics.events, events(1, 20))
    run_bounded_job("jobs.personalization", job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "wipe-1"),
                    tmp_path)
    assert {u: client.hget(keys.profile(u), "events_total") for u in users} == dict.fromkeys(users, "20")

    later = f"{topics.events}.after-wipe"
    ensure_topics(kafka_bootstrap, [later], 2)
    produce_raw(kafka_bootstrap, later, events(21, 25))
    run_bounded_job("jobs.personalization", [*job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "wipe-2"),
                                             f"kafka.topics.events={later}"], tmp_path)
    after = {u: client.hmget(keys.profile(u), "events_total", "last_event_time") for u in users}
    assert after == dict.fromkeys(users, ["5", str(t0 + 25_000)])


def test_exactly_once_triggers_equal_the_oracle_for_a_read_committed_consumer(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 150, "seed": 9, "bot_fraction": 0.0}), max_records=6_000))
    produce(kafka_bootstrap, topics.events, records)
    run_bounded_job("jobs.personalization", [*job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "eos"),
                                             "kafka.triggers_delivery=exactly-once", "flink.checkpoint_interval_ms=2000"],
                    tmp_path, timeout_s=600)
    want = expected(records)
    rows = read_all_json(kafka_bootstrap, topics.triggers, isolation_level="read_committed")
    ids = [r["trigger_id"] for r in rows]
    assert len(ids) == len(set(ids))   # each trigger once
    assert trigger_mismatches(rows, want) == {}


def test_a_redis_outage_delays_profiles_and_loses_nothing(kafka_bootstrap: str, topics: TopicNames, redis_prefix: str,
                                                          tmp_path: Path) -> None:
    """Redis stops for 30 s in the middle of a stream (its data kept on disk, as a restarted server keeps it):
    the loader waits and retries while the job goes on; afterwards the profiles equal the oracle and nothing
    was dead-lettered for it."""
    server = RedisServer(tmp_path / "redis", RedisServiceSettings(port=free_port(), start_timeout_s=15))
    server.up()
    records = list(generate(load_generator_settings({"users": 120, "seed": 17, "bot_fraction": 0.0}), max_records=4_000))
    first, second = records[:2_000], records[2_000:]
    cmd = [sys.executable, "-m", "jobs.personalization",
           *(a for o in job_overrides(topics, kafka_bootstrap, server.url, redis_prefix, "outage") for a in ("--set", o))]
    env = {**os.environ, "FLINK_LOG_DIR": str(tmp_path)}
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    keys = RedisKeys(redis_prefix)

    def stored(users: dict[str, Any]) -> dict[str, int]:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            return {u: int(client.hget(keys.profile(u), "events_total") or 0) for u in users}
        finally:
            client.close()

    def job_log() -> str:   # the loader runs in the job's own process (loader.embedded): its lines are in job.log
        return "".join(p.read_text(errors="replace") for p in [tmp_path / "job.log", *tmp_path.glob("flink-*.log")])
    try:
        produce(kafka_bootstrap, topics.events, first)
        want_first = {u: f["events_total"] for u, f in expected(first).profiles.items()}
        wait_until(lambda: job.poll() is None and stored(want_first) == want_first, 180, "the first half in Redis",
                   interval_s=0.5)
        redis.Redis.from_url(server.url).shutdown(save=True)   # the outage begins; the data stays on disk
        down_at = time.monotonic()
        produce(kafka_bootstrap, topics.events, second)
        wait_until(lambda: "profile(s) wait" in job_log(), 60, "the loader noticing the outage", interval_s=0.5)
        while time.monotonic() - down_at < 30:   # the outage lasts 30 s: its length, not a wait for a condition
            assert job.poll() is None, "the job stopped during the outage"
            time.sleep(1)
        server.up()
        want = expected(records)
        want_all = {u: f["events_total"] for u, f in want.profiles.items()}
        wait_until(lambda: job.poll() is None and stored(want_all) == want_all, 120, "every profile after the outage",
                   interval_s=0.5)
        dead = read_all_json(kafka_bootstrap, topics.dead_letter)
        assert Counter(d["reason"] for d in dead) == want.dead_letter_reasons
        assert "answers again" in job_log()
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=30)
        server.down()
