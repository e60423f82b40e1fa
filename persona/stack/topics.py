"""Create, list and delete the job's topics with kafka-python's admin client (idempotent creation)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from persona.settings import JobSettings
from persona.stack.procs import StackError, wait_until


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout_s: float = 30,
                  client_config: Mapping[str, Any] | None = None) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    ``client_config``: kafka-python settings (``KafkaSettings.client_config()``: SASL/SSL), else plaintext.
    """
    wanted = list(dict.fromkeys(names))
    config = {"bootstrap_servers": bootstrap, **(client_config or {})}
    try:
        admin = KafkaAdminClient(**config, client_id="persona-admin", request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise StackError(f"kafka at {bootstrap} did not answer: {e}") from None
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing])
            except TopicAlreadyExistsError:
                pass
        wait_until(lambda: set(wanted) <= set(admin.list_topics()), timeout_s, f"topics {wanted} on {bootstrap}")
        return missing
    finally:
        admin.close()


# The profile changelog keeps each user's newest state; an erasure's tombstone is kept a day, long enough for
# every loader to see it, then compaction removes it with the user's older records.
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "delete.retention.ms": "86400000", "min.compaction.lag.ms": "0"}


def ensure_changelog_topic(admin: KafkaAdminClient, topic: str, partitions: int, replication: int = 1) -> bool:
    """Create the profile changelog topic, compacted (as Kafka Streams creates its changelogs); True if created."""
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication,
                                      topic_configs=CHANGELOG_CONFIG)])
        return True
    except TopicAlreadyExistsError:
        return False


def job_topics(job: JobSettings) -> dict[str, tuple[str, int]]:
    """Each topic of the job by its settings key: (name, partitions when the project creates it)."""
    t, n = job.kafka.topics, job.kafka.partitions
    return {"events": (t.events, n), "dead_letter": (t.dead_letter, n), "triggers": (t.triggers, n),
            "models": (t.models, 1), "profiles": (t.profiles, n)}


def create_job_topics(job: JobSettings) -> list[str]:
    """Create the job's missing topics (the changelog compacted); returns the names created."""
    k = job.kafka
    names = job_topics(job)
    created = []
    for key, (name, partitions) in names.items():
        if key == "profiles":
            continue
        created += ensure_topics(k.bootstrap_servers, [name], partitions, client_config=k.client_config())
    admin = KafkaAdminClient(**k.client_config(), client_id="persona-admin", request_timeout_ms=30_000)
    try:
        if ensure_changelog_topic(admin, names["profiles"][0], names["profiles"][1], k.replication_factor):
            created.append(names["profiles"][0])
    finally:
        admin.close()
    return created


def describe_job_topics(job: JobSettings) -> list[tuple[str, str, int | None]]:
    """(settings key, name, partitions or None when missing) for each topic of the job."""
    admin = KafkaAdminClient(**job.kafka.client_config(), client_id="persona-admin", request_timeout_ms=30_000)
    try:
        names = job_topics(job)
        existing = set(admin.list_topics())
        present = [name for name, _ in names.values() if name in existing]
        partitions = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(present)} if present else {}
        return [(key, name, partitions.get(name)) for key, (name, _) in names.items()]
    finally:
        admin.close()


def delete_job_topics(job: JobSettings) -> list[str]:
    """Delete the job's topics that exist; returns their names."""
    admin = KafkaAdminClient(**job.kafka.client_config(), client_id="persona-admin", request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        doomed = [name for name, _ in job_topics(job).values() if name in existing]
        if doomed:
            admin.delete_topics(doomed)
            wait_until(lambda: not set(doomed) & set(admin.list_topics()), 30, f"deleting {doomed}")
        return doomed
    finally:
        admin.close()
