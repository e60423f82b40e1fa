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
