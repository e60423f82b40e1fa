"""Send generated records to Kafka (at a target rate, with progress) or to a file of raw lines."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from kafka import KafkaProducer

from persona.generator.shoppers import GeneratedRecord, replay_age_override


class Progress:
    """A one-line progress report on stderr, refreshed at most 4 times a second."""

    def __init__(self, total: int | None, label: str, stream: IO[str] = sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.start = time.monotonic()
        self._last = 0.0
        self.count = 0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self._draw(now)

    def done(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        pct = f" {100 * self.count / self.total:5.1f}%" if self.total else ""
        self.stream.write(f"\r{self.label}: {self.count:,}{of}{pct}  {rate:,.0f} rec/s")
        self.stream.flush()


def history_override() -> str:
    """The job override that admits the stream of ``conf/generator.yaml`` (a fixed start date) as recorded
    history at today's clock: ``limits.max_event_age_ms=...`` (see ``replay_age_override``)."""
    from persona.settings import load_generator_settings
    return replay_age_override(load_generator_settings({}), int(time.time() * 1000))


def send_to_kafka(records: Iterable[GeneratedRecord], bootstrap: str, topic: str, rate: float | None = None,
                  total: int | None = None, progress: bool = True,
                  client_config: Mapping[str, Any] | None = None) -> Counter[str]:
    """Produce records in order; ``rate`` records/s (None: as fast as possible). Returns counts by kind.

    ``client_config``: kafka-python settings (``KafkaSettings.client_config()``: SASL/SSL), else plaintext.
    """
    config = {"bootstrap_servers": bootstrap, **(client_config or {})}
    producer = KafkaProducer(**config, acks="all", linger_ms=5, batch_size=256 * 1024,
                             max_in_flight_requests_per_connection=1, retries=5)
    bar = Progress(total, f"→ {topic}") if progress else None
    kinds: Counter[str] = Counter()
    start = time.monotonic()
    try:
        for i, rec in enumerate(records):
            if rate:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the producer, not waiting for a condition
            producer.send(topic, key=rec.key, value=rec.value, timestamp_ms=rec.event_time_ms)
            kinds[rec.malformed or "valid"] += 1
            if bar:
                bar.update()
        producer.flush()
    finally:
        producer.close()
        if bar:
            bar.done()
    return kinds


def write_lines(records: Iterable[GeneratedRecord], path: Path) -> Counter[str]:
    """One raw record per line (bytes as produced; no record contains a newline)."""
    kinds: Counter[str] = Counter()
    with open(path, "wb") as f:
        for rec in records:
            f.write(rec.value + b"\n")
            kinds[rec.malformed or "valid"] += 1
    return kinds
