"""Published snapshots in a real Redis: what scorers serve, pins, rollback and the kept versions."""

from __future__ import annotations

import pytest
import redis

from operators.model_scoring import ServedModels
from operators.online_models import ModelTrainer
from persona.cli import main
from state.keys import RedisKeys
from state.model_registry import model_info, record_snapshot, set_pinned

pytestmark = pytest.mark.integration


def test_scorers_follow_the_newest_version_a_pin_and_the_unpin(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(redis_prefix)
    trainer = ModelTrainer.new("segments")
    for _ in range(3):
        record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=2)
    info = model_info(client, keys, "segments")
    assert info is not None and info["version"] == 3 and info["versions"] == [2, 3]   # version 1 left the kept set

    served = ServedModels()
    served.refresh(client, keys)
    assert served.get("segments")[0] == 3 and served.get("propensity") is None

    set_pinned(client, keys, "segments", 2)          # roll back
    served.refresh(client, keys)
    assert served.get("segments")[0] == 2
    record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=2)   # training goes on
    served.refresh(client, keys)
    assert served.get("segments")[0] == 2

    set_pinned(client, keys, "segments", None)
    served.refresh(client, keys)
    assert served.get("segments")[0] == 4
    client.close()


def test_pinning_a_version_that_is_not_kept_is_a_one_line_error(redis_url: str, redis_prefix: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["models", "--set", f"redis.key_prefix={redis_prefix}", "pin", "propensity", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona models: error:") and "version 7 is not kept" in err and "\n" not in err
