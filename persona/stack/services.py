"""The local stack as one unit: `persona services up|down|status`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persona.settings import JobSettings, StackSettings
from persona.stack.jars import ensure_jars
from persona.stack.kafka import KafkaBroker
from persona.stack.redis_server import RedisServer
from persona.stack.topics import create_job_topics


@dataclass(frozen=True)
class LocalServices:
    settings: StackSettings
    run_dir: Path

    @classmethod
    def from_settings(cls, settings: StackSettings) -> LocalServices:
        return cls(settings, settings.run_path)

    @property
    def kafka(self) -> KafkaBroker:
        return KafkaBroker(self.run_dir / "kafka", self.settings.jars_path / "kafka", self.settings.kafka)

    @property
    def redis(self) -> RedisServer:
        return RedisServer(self.run_dir / "redis", self.settings.redis)

    def up(self, job: JobSettings | None = None) -> list[str]:
        """Start Redis and Kafka (each only if not running) and create the job's topics."""
        ensure_jars(self.settings.jars_path)
        lines = [self.redis.up(), self.kafka.up()]
        if job is not None:
            # The models topic has one partition (a model's snapshots stay in order); the changelog is compacted.
            created = create_job_topics(job)
            lines.append(f"topics created: {', '.join(created)}" if created else "topics already exist")
        return lines

    def down(self) -> list[str]:
        return [self.kafka.down(), self.redis.down()]

    def status(self) -> list[str]:
        k, r = self.kafka.running(), self.redis.running()
        return [
            f"kafka: {f'running (pid {k}) on {self.kafka.bootstrap}' if k else 'stopped'}",
            f"redis: {f'running (pid {r}) at {self.redis.url}' if r else 'stopped'}",
        ]
