"""Erasure end to end on the real stack: Redis, every keyed topic, the triggers and the audit (docs/privacy.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from persona.settings import ROOT
from state.keys import RedisKeys
from tests.fixtures.erasure_case import CONTROL, IP, NO_MARKETING, build_case, erasure_problems
from tests.fixtures.jobs import run_bounded_job
from tests.fixtures.kafka_io import produce_raw
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration


def test_an_erasure_leaves_nothing_but_tombstones_and_its_audit_record(
        kafka_bootstrap: str, redis_url: str, topics: TopicNames, redis_prefix: str, tmp_path: Path) -> None:
    case = build_case()
    produce_raw(kafka_bootstrap, topics.events, case.before + case.erasures + case.after)
    run_bounded_job("jobs.personalization", job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "erase"),
                    tmp_path, timeout_s=600)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert erasure_problems(case, kafka_bootstrap, topics, client, RedisKeys(redis_prefix)) == []

    # A data-access request, as support staff would serve it.
    def export(user: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "persona.cli", "profile", user, "--export",
               *(a for o in job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "erase")
                 for a in ("--set", o))]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    kept = export(CONTROL)
    assert kept["redis"]["profile"]["user_id"] == CONTROL and kept["redis"]["sets"]
    # The profile history (on in these settings): every version of the control user, none of an erased one.
    assert [v["profile_version"] for v in kept["profile_history"]][-1] == kept["redis"]["profile"]["profile_version"]
    assert kept["profile_history"][-1]["profile"] == kept["redis"]["profile"]
    assert kept["state"]["country"] == "GB" and kept["state"]["demographics"] == {"age_band": "25-34"}
    assert [d["reason"] for d in kept["dead_letters"]] == ["wrong_type"]
    assert IP not in json.dumps(kept) and f"{CONTROL}@example.com" not in json.dumps(kept)
    assert [t["pattern"] for t in kept["triggers_sent"]] == ["cart_abandonment"] and kept["audit"] == []
    gone = export(NO_MARKETING)
    assert gone["redis"] == {"profile": None, "sets": []} and gone["state"]["erased"] is True
    assert gone["profile_history"] == []
    assert [a["action"] for a in gone["audit"]] == ["consent_change", "erasure"]
    assert gone["audit"][0]["consent"]["in_force"] == {"analytics": True, "personalization": True, "marketing": False}
