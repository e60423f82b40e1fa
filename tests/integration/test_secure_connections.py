"""The job against a Kafka broker that requires SASL and a Redis that requires a password, both started by the
project; the secrets come from the environment and appear on no command line and in no log."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from persona.generator.shoppers import generate
from persona.generator.sink import send_to_kafka
from persona.settings import (
    ROOT,
    KafkaServiceSettings,
    RedisServiceSettings,
    load_generator_settings,
    load_job_settings,
    load_stack_settings,
)
from persona.stack.jars import ensure_jars
from persona.stack.kafka import KafkaBroker
from persona.stack.procs import free_port, wait_until
from persona.stack.redis_server import RedisServer
from persona.stack.topics import ensure_topics
from state.keys import RedisKeys
from tests.fixtures.jobs import history_override
from tests.fixtures.personalization_oracle import expected

pytestmark = pytest.mark.integration
KAFKA_SECRET = f"kafka-{uuid.uuid4().hex}"
REDIS_SECRET = f"redis-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def secure_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, RedisServer]]:
    jars = ensure_jars(load_stack_settings().jars_path)["kafka"]
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-sasl"), jars,
                         KafkaServiceSettings(port=free_port(), controller_port=free_port(), sasl_port=free_port(),
                                              heap_mb=384, start_timeout_s=90), sasl_user=("persona", KAFKA_SECRET))
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), RedisServiceSettings(port=free_port(), start_timeout_s=15),
                         password=REDIS_SECRET)
    broker.up()
    try:
        server.up()
        try:
            yield broker, server
        finally:
            server.down()
    finally:
        broker.down()


def _descendants_cmdlines(root: int) -> list[str]:
    """Command lines of ``root``'s process group (the job, its JVM and workers), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == root:   # pgid
                out.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_job_over_sasl_and_redis_auth_leaks_no_secret(secure_services: tuple[KafkaBroker, RedisServer],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker, server = secure_services
    for var, value in {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "persona",
                       "KAFKA_SASL_PASSWORD": KAFKA_SECRET, "REDIS_PASSWORD": REDIS_SECRET,
                       "FLINK_LOG_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(var, value)
    tag = uuid.uuid4().hex[:8]
    topics = {"events": f"s-{tag}.events", "dead_letter": f"s-{tag}.dlq", "triggers": f"s-{tag}.triggers",
              "models": f"s-{tag}.models", "profiles": f"s-{tag}.profiles"}
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={broker.sasl_bootstrap}", f"redis.url={server.url}", f"redis.key_prefix=s{tag}:",
        "kafka.starting_offsets=earliest", "kafka.group_id=secure", "models.bot_min_session_events=1000000", history_override()]
    settings = load_job_settings(dict(o.split("=", 1) for o in overrides))
    assert settings.kafka.security.protocol == "SASL_PLAINTEXT"
    client_config = settings.kafka.client_config()
    ensure_topics(broker.sasl_bootstrap, [topics["events"], topics["dead_letter"], topics["triggers"]], 2,
                  client_config=client_config)
    ensure_topics(broker.sasl_bootstrap, [topics["models"]], 1, client_config=client_config)
    records = list(generate(load_generator_settings({"users": 40, "seed": 5, "bot_fraction": 0.0}), max_records=1500))
    send_to_kafka(records, broker.sasl_bootstrap, topics["events"], progress=False, client_config=client_config)

    cmd = [sys.executable, "-m", "jobs.personalization", "--bounded", *(a for o in overrides for a in ("--set", o))]
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cmdlines: list[str] = []
    try:
        def finished() -> bool:
            cmdlines.extend(_descendants_cmdlines(job.pid))
            return job.poll() is not None
        wait_until(finished, 300, "the bounded job over SASL", interval_s=0.5)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, 15)
            job.wait(timeout=30)
    assert job.returncode == 0, log.read_text(errors="replace")[-3000:]

    client = redis.Redis.from_url(server.url, password=REDIS_SECRET, decode_responses=True)
    keys = RedisKeys(f"s{tag}:")
    want = expected(records)
    got = {u: int(client.hget(keys.profile(u), "events_total") or 0) for u in want.profiles}
    assert got == {u: f["events_total"] for u, f in want.profiles.items()}
    with pytest.raises(redis.exceptions.AuthenticationError):   # the server really requires the password
        redis.Redis.from_url(server.url).ping()

    assert any("jobs.personalization" in c for c in cmdlines) and any("java" in c for c in cmdlines)
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert any(name.startswith("flink-") for name in logs), sorted(logs)   # the mini-cluster's log was read
    for secret in (KAFKA_SECRET, REDIS_SECRET):
        assert not [c for c in cmdlines if secret in c], "a secret on a command line"
        assert not [n for n, text in logs.items() if secret in text], f"a secret in {sorted(logs)}"
