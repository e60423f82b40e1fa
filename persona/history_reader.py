"""``persona profile USER --history`` and ``--at TIME``: a user's profile versions from the history topic.

The history topic (``state/profile_history.py``) is keyed by ``{user}@{version}``, so one user's versions are
spread over its partitions: a read scans the whole topic once, which retention bounds
(``privacy.retention.profile_history_days``). Each version is shown as the loader would have written it to
Redis then (``profile_record`` with the job's profile settings), with its as-of time and wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from operators.config_files import ConfigError
from operators.profile_fold import ProfileRules, profile_record
from persona.settings import JobSettings
from persona.stack.topics import read_to_end
from state.profile_history import Version, live_versions
from state.profile_store import typed_profile


def history_records(settings: JobSettings, timeout_s: float = 3_600) -> Iterator[tuple[bytes, bytes | None]]:
    """(key, value) of every record the history topic holds now, in offset order per partition; ConfigError when
    the job writes no history or the topic is missing."""
    topic = settings.kafka.topics.history
    if not settings.history.profile_versions:
        raise ConfigError("history.profile_versions: the job does not write profile history (set it to true; "
                          "docs/history.md \"Profile history\")")
    consumer = KafkaConsumer(**settings.kafka.client_config(), enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigError(f"kafka.topics.profile_history: topic {topic!r} does not exist on "
                              f"{settings.kafka.bootstrap_servers} (the job creates it when it starts)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        yield from ((m.key, m.value) for m in read_to_end(consumer, tps, timeout_s) if m.key is not None)
    finally:
        consumer.close()


def read_history(settings: JobSettings, user_id: str) -> list[Version]:
    """Every version of ``user_id`` the history topic holds, oldest first."""
    return live_versions(history_records(settings), user_id)


def version_doc(v: Version, rules: ProfileRules) -> dict[str, Any]:
    """One version as JSON: its profile as Redis held it then, its as-of time and when the job wrote it."""
    assert v.change is not None and v.change.state is not None
    fields, sets = profile_record(v.user_id, v.change.state, rules, v.change.updated_at_ms)
    fields["profile_epoch"] = str(v.change.state.epoch_ms)   # as the Redis writer stores it (state/profile_store.py)
    return {"profile_version": v.version, "as_of": iso(v.as_of_ms), "written_at": iso(v.change.updated_at_ms),
            "profile": typed_profile(fields), "sets": list(sets)}


def in_range(versions: list[Version], start_ms: int | None, end_ms: int | None) -> list[Version]:
    """The versions whose as-of time is in [start, end)."""
    return [v for v in versions if (start_ms is None or v.as_of_ms >= start_ms) and (end_ms is None or v.as_of_ms < end_ms)]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
