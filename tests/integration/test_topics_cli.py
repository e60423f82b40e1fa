"""`persona topics create|list|delete` with custom names from --set, against the real broker."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from persona.settings import ROOT

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
        # README "Privacy": the topics that hold personal data are bounded in time (privacy.retention).
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
