"""Online models inside the running job, on real Kafka and Redis: quality, segments and bot exclusion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import bot_users, generate
from persona.settings import ROOT, load_generator_settings
from persona.stack.procs import wait_until
from state.keys import RedisKeys
from state.model_registry import model_info
from state.profile_store import read_profile
from tests.fixtures.jobs import history_override
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.services import TopicNames

pytestmark = pytest.mark.integration


def test_propensity_auc_segments_and_bots(kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str,
                                          tmp_path: Path) -> None:
    gen = load_generator_settings({"users": 600, "seed": 8, "span_hours": 72, "bot_fraction": 0.03,
                                   "malformed_fraction": 0.0, "late_fraction": 0.0})
    records = list(generate(gen, max_records=50_000))
    bots = bot_users(gen)
    events = [r.event for r in records if r.event is not None]
    decision_points = sum(1 for e in events if e["user_id"] not in bots and (
        e["event_type"] == "add_to_cart" or (e["event_type"] == "page_view" and e["payload"].get("page_type") == "product")))
    seen_bots = {e["user_id"] for e in events} & bots
    assert len(seen_bots) >= 5, "the seeded stream must contain bots for this test to mean anything"

    overrides = [*topics.overrides(), f"kafka.bootstrap_servers={kafka_bootstrap}", f"redis.url={redis_url}",
                 f"redis.key_prefix={redis_prefix}", "kafka.starting_offsets=earliest", "kafka.group_id=models", "models.publish_every_examples=100",
                 "models.publish_interval_ms=1000", history_override()]
    cmd = [sys.executable, "-m", "jobs.personalization", *(a for o in overrides for a in ("--set", o))]
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(redis_prefix)
    try:
        # A live stream, not a backlog: online learning is judged as the job sees traffic arrive. Drained as a
        # backlog (~4k events/s), 72 h of traffic pass in ~12 s and the served model lags thousands of events
        # behind its trainer; `persona evaluate` judges the model on a replay with no serving lag at all.
        produce(kafka_bootstrap, topics.events, records, rate=1_000)

        def labelled_enough() -> bool:
            assert job.poll() is None, (tmp_path / "job.log").read_text(errors="replace")[-3000:]
            info = model_info(client, keys, "propensity")
            # Labels of the last 30 min of event time wait for a watermark that never comes (the stream stops).
            return info is not None and info["examples"] >= 0.8 * decision_points
        wait_until(labelled_enough, 400, "propensity examples from most decision points", interval_s=2.0)

        info = model_info(client, keys, "propensity")
        print("propensity", info["version"], info["examples"], info["metrics"])
        assert info["metrics"]["roc_auc"] > 0.75
        assert len(info["versions"]) >= 2

        segments = model_info(client, keys, "segments")
        assert segments is not None and 0 <= segments["metrics"]["churn"] <= 1
        counts: dict[str, int] = {}
        for e in events:
            counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
        # Users who asked for erasure have no profile by design. A user gets a segment at an event once a
        # segments model is served; the job drains this stream in seconds, so a user whose events all came in
        # its first seconds may have none yet (cold start): "active" users also send events in the second half.
        erased = {e["user_id"] for e in events if e["event_type"] == "erasure_request"}
        late = {e["user_id"] for e in events[len(events) // 2:]}
        active = [u for u, n in counts.items() if n >= 20 and u in late and u not in bots and u not in erased]

        # The job may still be finishing the stream's tail: compare profiles and sets once they stopped changing.
        last: list[list[bytes | None]] = []

        def quiet() -> bool:
            pipe = client.pipeline(transaction=False)
            for u in active:
                pipe.hget(keys.profile(u), "profile_version")
            now = pipe.execute()
            done = now == (last[-1] if last else None)
            last.append(now)
            return done
        wait_until(quiet, 180, "the job to finish the stream", interval_s=3.0)
        profiles = {u: read_profile(client, keys, u) for u in active}
        # Flagged users get no segment (the models leave them out); the model may flag a few humans.
        false_bots = [u for u, p in profiles.items() if p is not None and p.get("bot") is True]
        assert len(false_bots) <= 0.02 * len(active), f"humans flagged as bots: {false_bots}"
        missing = [u for u, p in profiles.items() if u not in false_bots and (p is None or "segment" not in p)]
        assert not missing, f"active users without a segment: {missing[:5]}"
        for u, p in [(u, p) for u, p in profiles.items() if u not in false_bots][:50]:
            assert client.sismember(keys.segment(p["segment"]), u)

        bot_profiles = {u: read_profile(client, keys, u) or {} for u in seen_bots}
        assert {u for u, p in bot_profiles.items() if p.get("bot") is True} == seen_bots
        segment_sets = list(client.scan_iter(keys.segment("seg*")))
        in_sets = {u for u in seen_bots for k in segment_sets if client.sismember(k, u)}
        assert not in_sets and not [u for u, p in bot_profiles.items() if "segment" in p], "bots must leave segments"
        triggered = {r["user_id"] for r in read_all_json(kafka_bootstrap, topics.triggers)}
        assert triggered, "the stream must produce triggers for humans"
        assert not triggered & bots
        # The same numbers live (docs/models.md): the rule flagged each of the generator's bots once, and the bot
        # model is measured against the rule.
        out = subprocess.run([sys.executable, "-m", "persona.cli", "status", "--json",
                              *(a for o in overrides for a in ("--set", o))], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=True)
        live = json.loads(out.stdout)["counters"]["bots"]
        print("live bot counters", live)
        assert live["bot_flags_by_rule"] == len(seen_bots)
        assert live.get("bot_model_agreed", 0) <= min(live.get("bot_model_verdicts", 0), len(seen_bots))
        assert live["flagged"] >= len(seen_bots) + len(false_bots)
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=30)
        client.close()
