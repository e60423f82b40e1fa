"""`services up|down` semantics on real processes: idempotent, and a busy port is a one-line error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from persona.settings import KafkaServiceSettings, RedisServiceSettings, load_stack_settings
from persona.stack.jars import ensure_jars
from persona.stack.kafka import KafkaBroker
from persona.stack.procs import StackError, free_port, pid_alive
from persona.stack.redis_server import RedisServer
from persona.stack.topics import ensure_topics

pytestmark = pytest.mark.integration


def test_redis_up_twice_down_twice(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, RedisServiceSettings(port=free_port(), start_timeout_s=15))
    assert "started" in server.up()
    pid = server.running()
    assert "already running" in server.up()
    assert server.running() == pid
    assert redis.Redis.from_url(server.url).ping()
    assert server.down() == "redis stopped"
    assert pid is not None and not pid_alive(pid)
    assert server.down() == "redis was not running"


def test_kafka_up_twice_down_twice_and_topics(tmp_path: Path) -> None:
    jars = ensure_jars(load_stack_settings().jars_path)["kafka"]
    broker = KafkaBroker(tmp_path, jars, KafkaServiceSettings(port=free_port(), controller_port=free_port(),
                                                              heap_mb=256, start_timeout_s=90))
    try:
        assert "started" in broker.up()
        assert "already running" in broker.up()
        assert ensure_topics(broker.bootstrap, ["a", "b"], 2) == ["a", "b"]
        assert ensure_topics(broker.bootstrap, ["a", "b"], 2) == []
    finally:
        assert broker.down() == "kafka stopped"
    assert broker.down() == "kafka was not running"


def test_busy_port_is_a_one_line_error_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = RedisServer(tmp_path, RedisServiceSettings(port=port, start_timeout_s=5))
        with pytest.raises(StackError) as err:
            server.up()
    message = str(err.value)
    assert f"port {port} is busy" in message and "\n" not in message
    assert server.running() is None


def test_job_refuses_a_missing_topic(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.personalization import main

    with pytest.raises(SystemExit) as exc:
        main(["--set", f"kafka.bootstrap_servers={kafka_bootstrap}", "--set", "kafka.topics.events=no.such.topic"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "kafka.topics.events: topic 'no.such.topic' does not exist" in err and "\n" not in err


def test_profile_cli_not_found_and_found(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from persona.cli import main

    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["profile", "no-such-user"]) == 1
    assert "no profile for user 'no-such-user'" in capsys.readouterr().err
    redis.Redis.from_url(redis_url).hset("persona:profile:cli-user", mapping={"user_id": "cli-user", "events_total": "3"})
    assert main(["profile", "cli-user"]) == 0
    assert '"events_total": 3' in capsys.readouterr().out
