"""Published snapshots in a real Redis: what scorers serve, pins, rollback and the kept versions."""

from __future__ import annotations

import pytest
import redis

from jobs.served_follower import follow_model_registry
from operators.model_scoring import ServedModels
from operators.online_models import ModelTrainer
from persona.cli import main
from state.keys import RedisKeys
from state.model_registry import model_info, newest_version, record_snapshot, set_pinned

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
    follow_model_registry(served, client, keys)
    assert served.get("segments")[0] == 3 and served.get("propensity") is None

    set_pinned(client, keys, "segments", 2)          # roll back
    follow_model_registry(served, client, keys)
    assert served.get("segments")[0] == 2
    record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=2)   # training goes on
    follow_model_registry(served, client, keys)
    assert served.get("segments")[0] == 2

    set_pinned(client, keys, "segments", None)
    follow_model_registry(served, client, keys)
    assert served.get("segments")[0] == 4
    client.close()


def test_pinning_a_version_that_is_not_kept_is_a_one_line_error(redis_url: str, redis_prefix: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["models", "--set", f"redis.key_prefix={redis_prefix}", "pin", "propensity", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona models: error:") and "version 7 is not kept" in err and "\n" not in err


def test_a_pin_outlives_eviction_and_a_fresh_trainer_continues_the_numbering(redis_url: str,
                                                                             redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(redis_prefix)
    trainer = ModelTrainer.new("bots")
    for _ in range(3):
        record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=2)
    set_pinned(client, keys, "bots", 2)
    for _ in range(30):   # minutes of publications once evicted the pin
        record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=2)
    info = model_info(client, keys, "bots")
    assert info is not None and info["versions"] == [2, 32, 33]
    restarted = ServedModels()   # a scorer that restarts while the pin holds
    follow_model_registry(restarted, client, keys)
    assert restarted.get("bots")[0] == 2

    # A trainer that lost its state continues from the registry: its first snapshot is the newest.
    assert newest_version(client, keys, "bots") == 33
    fresh = ModelTrainer.new("bots")
    fresh.version = newest_version(client, keys, "bots")
    record_snapshot(client, keys, fresh.snapshot(created_at_ms=0).to_record(), keep=2)
    set_pinned(client, keys, "bots", None)
    follow_model_registry(restarted, client, keys)
    assert restarted.get("bots")[0] == 34
    client.close()


def test_a_restarted_scorer_serves_the_newest_valid_version(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(redis_prefix)
    trainer = ModelTrainer.new("segments")
    for _ in range(2):
        record_snapshot(client, keys, trainer.snapshot(created_at_ms=0).to_record(), keep=5)
    bad = {**trainer.snapshot(created_at_ms=0).to_record(), "blob": "bm90IGpzb24="}   # "not json": refused
    record_snapshot(client, keys, bad, keep=5)
    served = ServedModels()
    follow_model_registry(served, client, keys)
    assert served.get("segments")[0] == 2 and served.refused == 1
    client.close()


def test_models_list_shows_sample_sizes_intervals_trends_and_segment_descriptions(
        redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import random

    from operators.model_features import PROPENSITY_NUMERIC
    from operators.online_models import describe_segments
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(f"{redis_prefix}list:")
    rng = random.Random(5)
    propensity, segments = ModelTrainer.new("propensity"), ModelTrainer.new("segments")
    x = (0.0,) * 13 + (1.0,) + (0.0,) * (len(PROPENSITY_NUMERIC) - 14) + ("mobile", "h3", "add_to_cart")
    for version in (1, 2):
        for i in range(400):   # the second version's scores separate better: its AUC goes up
            label = rng.random() < 0.3
            propensity.learn(x, label=label, score=(0.7 if label else 0.3) if version == 2 and i % 2 else rng.random())
            segments.learn({"recency_days": rng.uniform(0, 30 * version), "frequency_90d": rng.randint(0, 5),
                            "monetary_90d_log": rng.uniform(0, 8), "sessions_7d": rng.randint(0, 9),
                            "views_24h": rng.randint(0, 40), "carts_24h": rng.randint(0, 5),
                            "session_events": rng.uniform(0, 4)}, previous=rng.randrange(5))
        record_snapshot(client, keys, propensity.snapshot(created_at_ms=version).to_record(), keep=5)
        record = segments.snapshot(created_at_ms=version).to_record()
        record_snapshot(client, keys, record, keep=5, descriptions=describe_segments(record))
    client.close()
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["models", "--set", f"redis.key_prefix={redis_prefix}list:", "list"]) == 0
    out = capsys.readouterr().out
    auc_line = next(line for line in out.splitlines() if line.strip().startswith("roc_auc "))
    assert "n=800" in auc_line and "↑ (better)" in auc_line and " bought, " in auc_line and "[0." in auc_line
    print(out)
    assert "churn" in out and "label_switching" in out and "n=800" in out
    assert "  seg0: " in out and "σ" in out and "propensity v2" in out and "segments v2" in out
