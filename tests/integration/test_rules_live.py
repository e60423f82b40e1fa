"""The live rule change: publish v2 while the job runs, then roll back to v1; the job never restarts.

The job (``persona run``, unbounded, on the embedded mini-cluster) starts with the shipped pattern file,
which it publishes as v1. Three phases of shoppers follow, each with users of its own: every one views a
product, adds it to the cart a minute later, and half of them buy 20 minutes after that.

- phase A under v1 (abandonment within 30 min): only those who did not buy are sent a trigger;
- phase B under v2 (within 10 min, published with ``persona rules publish``): everyone is, buyers too;
- phase C under v3 (``persona rules rollback 1``): as in phase A.

Each phase ends with a visit of eight other users an hour later, on both partitions, so the watermark
releases the phase's matches before the next switch. The independent oracle, with each phase's window,
gives the trigger ids; every trigger carries the version in force.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from persona.generator.shoppers import GeneratedRecord
from persona.settings import CONF_DIR, ROOT
from persona.stack.procs import stop_process_group, wait_until
from state.keys import RedisKeys
from state.rule_registry import applied, current_version
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.personalization_oracle import MIN, expected, trigger_mismatches
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration
HOUR = 60 * MIN
T0 = 1_794_736_800_000            # 2026-11-15T10:00:00Z: daytime, no quiet hours
CONTEXT = {"device": "desktop", "timezone": "UTC", "geo": {"country": "GB"}}


def _iso(t: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(user: str, n: int, kind: str, t: int, payload: dict[str, Any]) -> GeneratedRecord:
    event = {"event_id": f"{user}-{n}", "event_type": kind, "user_id": user, "event_time": _iso(t), "schema_version": 1,
             "session_id": f"s-{user}", "context": CONTEXT, "payload": payload}
    return GeneratedRecord(user.encode(), json.dumps(event).encode(), event, t)


def phase(name: str, start: int, users: int = 16) -> list[GeneratedRecord]:
    """View, add to cart a minute later; the even users buy 20 minutes after that."""
    item = {"product_id": "p-toys-1", "category": "toys", "price": 12.5, "currency": "EUR"}
    out = []
    for i in range(users):
        user, t = f"{name}{i:02d}", start + i * 1000
        out += [_record(user, 1, "page_view", t, {"page_type": "product", "product_id": "p-toys-1", "category": "toys",
                                                  "dwell_ms": 20_000}),
                _record(user, 2, "add_to_cart", t + MIN, {**item, "quantity": 1})]
        if i % 2 == 0:
            out.append(_record(user, 3, "purchase", t + 21 * MIN, {
                "order_id": f"o-{user}", "items": [{**item, "quantity": 1}], "total": 12.5, "currency": "EUR"}))
    return out


def probes(name: str, at: int) -> list[GeneratedRecord]:
    """Visits of eight other users (both partitions): the watermark passes ``at`` - out-of-orderness."""
    return [_record(f"zz-{name}{i}", 1, "page_view", at, {"page_type": "home"}) for i in range(8)]


def test_publish_and_rollback_while_the_stream_runs(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                    redis_prefix: str, tmp_path: Path) -> None:
    prefix = f"{redis_prefix}live:"
    sets = [a for o in [*job_overrides(topics, kafka_bootstrap, redis_url, prefix, "rules-live"), "flink.parallelism=2"]
            for a in ("--set", o)]
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(prefix)

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "persona.cli", "rules", *args, *sets], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def in_force(version: int) -> bool:
        acks = applied(client, keys)   # written by each of the two subtasks when it switches
        return len(acks) == 2 and all(a["version"] == version for a in acks.values())

    def triggers() -> list[dict[str, Any]]:
        return read_all_json(kafka_bootstrap, topics.triggers)

    def settled(records: list[GeneratedRecord], within: int) -> bool:
        want = expected(records, within=within)
        got = [t for t in triggers() if t["user_id"] in users_of(records)]
        return not trigger_mismatches(got, want) and len(got) == sum(len(v) for v in want.triggers.values())

    short = tmp_path / "v2.yaml"
    doc = yaml.safe_load((CONF_DIR / "patterns.yaml").read_text())
    doc["patterns"]["cart_abandonment"]["within"] = "10m"
    short.write_text(yaml.safe_dump(doc, sort_keys=False))
    with open(tmp_path / "run.log", "wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "persona.cli", "run", "--quiet", *sets], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    a, b, c = phase("a", T0), phase("b", T0 + 3 * HOUR), phase("c", T0 + 6 * HOUR)
    try:
        wait_until(lambda: current_version(client, keys) == 1, 120, "the job publishing its pattern file as v1",
                   interval_s=0.5)
        produce(kafka_bootstrap, topics.events, a + probes("a", T0 + 2 * HOUR))
        wait_until(lambda: settled(a, 30 * MIN), 120, "phase A's triggers under v1", interval_s=1)

        published = cli("publish", str(short), "--note", "abandonment after 10 minutes")
        assert "published rule set v2" in published and "within: 30m -> 10m (pattern state kept)" in published
        # Within 5 s of the publication (rules.refresh_ms is 1 s), though no event comes meanwhile.
        wait_until(lambda: in_force(2), 5, "every subtask switching to v2", interval_s=0.2)
        produce(kafka_bootstrap, topics.events, b + probes("b", T0 + 5 * HOUR))
        wait_until(lambda: settled(b, 10 * MIN), 120, "phase B's triggers under v2", interval_s=1)

        assert "published rule set v3" in cli("rollback", "1")
        wait_until(lambda: in_force(3), 5, "every subtask switching to v3 (v1 again)", interval_s=0.2)
        produce(kafka_bootstrap, topics.events, c + probes("c", T0 + 8 * HOUR))
        wait_until(lambda: settled(c, 30 * MIN), 120, "phase C's triggers under v3", interval_s=1)

        # Each phase's triggers carry the version in force; v2 reached the buyers that v1 and v3 leave alone.
        versions = {(t["user_id"][0], t["rules_version"], t["pattern_version"]) for t in triggers()}
        assert versions == {("a", 1, 1), ("b", 2, 2), ("c", 3, 3)}
        sent_to = {t["user_id"] for t in triggers()}
        assert {"a00", "b00", "c00"} & sent_to == {"b00"} and {"a01", "b01", "c01"} <= sent_to
        listing = cli("list")
        assert "* in force: v3" in listing and "rollback to v1" in listing and "abandonment after 10 minutes" in listing
        assert "~ patterns.cart_abandonment.within: 10m -> 30m" in cli("diff", "2", "3")
        assert "within: 10m" in cli("show", "2")
        # Misuse: one line naming the problem, nothing published.
        broken = tmp_path / "broken.yaml"
        broken.write_text(short.read_text().replace("within: 10m", "within: soon"))
        for args, words in ((("show", "9"), "rule set v9 is not in the registry"),
                            (("publish", str(broken)), "patterns.cart_abandonment.within")):
            out = subprocess.run([sys.executable, "-m", "persona.cli", "rules", *args, *sets], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60, check=False)
            assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert current_version(client, keys) == 3
        restarts = subprocess.run([sys.executable, "-m", "persona.cli", "status", "--json", *sets], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60, check=True).stdout
        assert json.loads(restarts)["restarts"] == 0 and json.loads(restarts)["state"] == "RUNNING"
    finally:
        stop_process_group(job, timeout_s=60)
        client.close()


def users_of(records: list[GeneratedRecord]) -> set[str]:
    return {r.event["user_id"] for r in records if r.event is not None}
