"""`persona topics create|list|delete` with custom names from --set, against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from persona.settings import ROOT
from persona.stack.topics import ensure_topics

pytestmark = pytest.mark.integration


def persona(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "persona.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_topics_are_created_listed_and_deleted_under_custom_names(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    names = {k: f"c-{tag}.{k}" for k in ("events", "dead_letter", "triggers", "models", "profiles", "audit")}
    sets = [a for kv in [f"kafka.bootstrap_servers={kafka_bootstrap}",
                         *(f"kafka.topics.{k}={v}" for k, v in names.items())] for a in ("--set", kv)]
    created = persona("topics", "create", *sets)
    assert created.returncode == 0, created.stderr
    assert all(n in created.stdout for n in names.values())
    listed = persona("topics", "list", *sets)
    assert listed.returncode == 0 and "missing" not in listed.stdout
    assert f"{names['models']}" in listed.stdout and "1 partition(s)" in listed.stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        def config(topic: str, key: str) -> str:
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            return str(configs["topic"][topic][key]["value"])
        policy = config(names["profiles"], "cleanup.policy")
        # docs/privacy.md: the topics that hold personal data are bounded in time (privacy.retention).
        retention = {k: int(config(names[k], "retention.ms")) // 86_400_000
                     for k in ("events", "dead_letter", "triggers", "audit")}
    finally:
        admin.close()
    assert policy == "compact"
    assert retention == {"events": 7, "dead_letter": 14, "triggers": 7, "audit": 1095}
    assert persona("topics", "create", *sets).stdout.strip() == "all topics exist already"
    refused = persona("topics", "delete", *sets)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    deleted = persona("topics", "delete", "--yes", *sets)
    assert deleted.returncode == 0, deleted.stderr
    assert persona("topics", "list", *sets).stdout.count("missing") == 6


def test_events_load_keys_each_record_by_user_and_stamps_its_event_time(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"load-{uuid.uuid4().hex[:8]}"
    lines = [json.dumps({"event_id": f"e{i}", "event_type": "page_view", "user_id": f"u{i % 2}", "schema_version": 1,
                         "event_time": f"2026-11-02T10:0{i}:00+01:00", "payload": {"page_type": "home"}})
             for i in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([*lines, "not json"]) + "\n")
    sets = ("--set", f"kafka.bootstrap_servers={kafka_bootstrap}")
    missing = persona("events", "load", str(path), "--topic", topic, *sets)
    assert missing.returncode == 2 and f"topic '{topic}' does not exist" in missing.stderr
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    loaded = persona("events", "load", str(path), "--topic", topic, *sets)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {"valid": 3, "unreadable": 1}
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
    try:
        got = {m.value: (m.key, m.timestamp) for m in consumer}
    finally:
        consumer.close()
    assert len(got) == 4
    for i, line in enumerate(lines):
        # 10:0i at +01:00 is 09:0i UTC on 2026-11-02.
        assert got[line.encode()] == (f"u{i % 2}".encode(), int(datetime(2026, 11, 2, 9, i, tzinfo=UTC).timestamp() * 1000))
    assert got[b"not json"][0] is None
