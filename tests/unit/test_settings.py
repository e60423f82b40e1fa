"""Settings: defaults load, errors are one line naming the key, environment overrides apply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from persona.settings import ConfigError, load_job_settings, load_stack_settings, mask_url, parse_overrides


def test_defaults_load() -> None:
    job = load_job_settings()
    assert job.kafka.topics.events and job.redis.flush_interval_ms > 0
    assert load_stack_settings().kafka.port > 0


@pytest.mark.parametrize(("override", "key"), [
    ({"redis.flush_interval_ms": "-5"}, "redis.flush_interval_ms"),
    ({"kafka.topics.events": ""}, "kafka.topics.events"),
    ({"flink.execution_mode": "fast"}, "flink.execution_mode"),
    ({"redis.url": "http://x"}, "redis.url"),
    ({"kafka.nope": "1"}, "kafka.nope"),
    ({"source.max_out_of_orderness_ms": "-1"}, "source.max_out_of_orderness_ms"),
    ({"redis.cluster_buckets": "0"}, "redis.cluster_buckets"),
    ({"history.profile_versions": "true", "privacy.retention.profile_history_days": "120"},
     "privacy.retention.profile_history_days"),
    ({"kafka.starting_offsets": "yesterday"}, "kafka.starting_offsets"),
])
def test_bad_values_name_the_key_on_one_line(override: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_job_settings(override)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_missing_key_and_unknown_key_in_file(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "conf" / "job.yaml").read_text()
    missing = tmp_path / "missing.yaml"
    missing.write_text(re.sub(r"(?m)^    triggers: shop\.triggers.*\n", "", text, count=1))
    with pytest.raises(ConfigError, match=r"kafka\.topics\.triggers: Field required"):
        load_job_settings(path=missing)
    extra = tmp_path / "extra.yaml"
    extra.write_text(text + "surprise: 1\n")
    with pytest.raises(ConfigError, match=r"surprise: Extra inputs are not permitted"):
        load_job_settings(path=extra)
    with pytest.raises(ConfigError, match="file not found"):
        load_job_settings(path=tmp_path / "absent.yaml")


def test_environment_overrides_hosts_and_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:19092")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6380/1")
    monkeypatch.setenv("PERSONA_REDIS_PORT", "7000")
    job = load_job_settings()
    assert job.kafka.bootstrap_servers == "broker-a:19092"
    assert "hunter2" not in repr(job) and "hunter2" not in job.redis.masked_url
    assert job.redis.url.get_secret_value().endswith("@cache:6380/1")
    assert load_stack_settings().redis.port == 7000


def test_string_overrides_stay_strings() -> None:
    assert load_job_settings({"kafka.topics.events": "1:20"}).kafka.topics.events == "1:20"


def test_override_syntax() -> None:
    assert parse_overrides(["a.b=c=d"]) == {"a.b": "c=d"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_mask_url() -> None:
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_security_settings_build_client_configs_and_keep_secrets_out_of_process_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", 'pa"ss')
    monkeypatch.setenv("REDIS_PASSWORD", "r@dis pw")
    s = load_job_settings({"kafka.security.sasl_mechanism": "SCRAM-SHA-512", "redis.tls": True})
    props = s.kafka.connector_properties()
    assert props["properties.security.protocol"] == "SASL_SSL"
    assert props["properties.sasl.jaas.config"] == (
        'org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule required '
        'username="app" password="pa\\"ss";')
    assert s.kafka.client_config()["sasl_plain_password"] == 'pa"ss'
    assert s.redis.connection_url() == "rediss://:r%40dis%20pw@127.0.0.1:6379/0"
    assert "pa" not in repr(s.kafka.security.password) and "r@dis" not in str(s.redis)
    with pytest.raises(ConfigError, match="flink.execution_mode: process is refused"):
        load_job_settings({"flink.execution_mode": "process"})
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match="kafka.security: .*needs username and password"):
        load_job_settings({})


def test_checkpoints_go_to_the_filesystem_by_default() -> None:
    s = load_job_settings({})
    uri = s.flink.checkpoint_uri()
    assert uri is not None and uri.startswith("file:///") and uri.endswith("/.run/checkpoints")
    assert load_job_settings({"flink.checkpoint_dir": "s3://bucket/ckpt"}).flink.checkpoint_uri() == "s3://bucket/ckpt"
    assert load_job_settings({"flink.checkpoint_dir": ""}).flink.checkpoint_uri() is None


def test_redis_cluster_lays_keys_out_in_buckets_and_connects_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from state.redis_client import _cluster_url
    assert load_job_settings().redis.keys().buckets == 0
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    target = load_job_settings({"redis.cluster_buckets": "16"}).redis.target()
    assert target.cluster and target.keys().buckets == 16
    assert target.keys().segment_keys("loyal")[15] == "persona:{b15}:segment:loyal"
    with pytest.raises(ValueError, match="database 0 only"):
        _cluster_url("redis://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="segment_keys"):   # no single set to read on a cluster
        target.keys().segment("loyal")
