"""An experiment on the abandonment trigger, in the real job: variants on the triggers, the holdout sent nothing,
and the tallies in Redis equal an independent oracle's.

The oracle gives the abandonment triggers and when each went out; the variant is re-derived here from
the documented draw (SHA-256 of experiment and user); a conversion is a purchase within 24 h after the
trigger. Erasures and consent events are left out of this stream: both clear pending exposures, which the
consent and erasure tests cover.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml

from persona.experiment_commands import read_experiment
from persona.generator.shoppers import generate
from persona.settings import CONF_DIR, ROOT, load_generator_settings
from state.keys import RedisKeys
from tests.fixtures.jobs import run_bounded_job
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.personalization_oracle import expected, ms
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration
EXPERIMENT = {"name": "abandonment_copy", "variants": {"A": 45, "B": 45, "holdout": 10}, "holdout": "holdout",
              "outcome": {"event": "purchase", "within": "24h"}}
DAY = 86_400_000


def variant_of(user: str) -> str:
    u = int.from_bytes(hashlib.sha256(f"abandonment_copy\x1f{user}".encode()).digest()[:8], "big") / 2**64
    if u < 0.10:
        return "holdout"
    return "A" if (u - 0.10) / 0.90 * 90 < 45 else "B"


def test_experiment_variants_and_tallies_equal_the_oracle(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                           redis_prefix: str, tmp_path: Path) -> None:
    records = [r for r in generate(load_generator_settings({"users": 300, "seed": 31, "bot_fraction": 0.0}),
                                   max_records=12_000)
               if r.event is None or r.event["event_type"] not in ("erasure_request", "consent")]
    doc = yaml.safe_load((CONF_DIR / "patterns.yaml").read_text())
    doc["patterns"]["cart_abandonment"]["experiment"] = EXPERIMENT
    patterns = tmp_path / "patterns.yaml"
    patterns.write_text(yaml.safe_dump(doc))
    prefix = f"{redis_prefix}exp:"
    overrides = [*job_overrides(topics, kafka_bootstrap, redis_url, prefix, "exp"), f"patterns_file={patterns}"]
    produce(kafka_bootstrap, topics.events, records)
    run_bounded_job("jobs.personalization", overrides, tmp_path, timeout_s=600)

    want = expected(records)
    matched = want.triggers["cart_abandonment"]
    purchases: dict[str, list[int]] = {}
    for r in records:
        if r.event is not None and r.delay != "late" and r.event["event_type"] == "purchase":
            purchases.setdefault(r.event["user_id"], []).append(ms(r.event["event_time"]))
    tally: dict[str, Counter[str]] = {v: Counter() for v in ("A", "B", "holdout")}
    for trigger_id in matched:
        user, at = want.released[trigger_id]
        variant = variant_of(user)
        tally[variant]["exposed"] += 1
        tally[variant]["converted"] += any(at <= p <= at + DAY for p in purchases.get(user, ()))
    assert all(tally[v]["exposed"] > 0 for v in tally) and tally["A"]["converted"] + tally["B"]["converted"] > 0

    # The topic: the abandonment triggers of A and B, each with its variant; none for the holdout.
    sent = [t for t in read_all_json(kafka_bootstrap, topics.triggers) if t["pattern"] == "cart_abandonment"]
    assert {t["trigger_id"] for t in sent} == {i for i in matched if variant_of(want.released[i][0]) != "holdout"}
    assert all(t["experiment"] == "abandonment_copy" and t["variant"] == variant_of(t["user_id"]) for t in sent)

    client = redis.Redis.from_url(redis_url)
    summary = read_experiment(client, RedisKeys(prefix), "abandonment_copy")
    client.close()
    assert summary is not None
    assert {v: (x["exposed"], x["converted"]) for v, x in summary.items()} == \
        {v: (c["exposed"], c["converted"]) for v, c in tally.items()}
    assert summary["holdout"]["holdout"] and not summary["A"]["holdout"]
    text = subprocess.run([sys.executable, "-m", "persona.cli", "experiments", "show", "abandonment_copy",
                           "--set", f"redis.url={redis_url}", "--set", f"redis.key_prefix={prefix}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    print(text)
    assert "holdout (holdout)" in text and f"{tally['B']['exposed']:>8,}" in text
