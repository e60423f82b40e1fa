"""Create, list and delete the job's topics with kafka-python's admin client (idempotent creation)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
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


DAY_MS = 86_400_000


def retention_configs(job: JobSettings) -> dict[str, dict[str, str]]:
    """Per topic settings key: the configs the project creates it with (docs/privacy.md: retention). Personal
    data in raw events and dead letters lives at most this long; the changelog is compacted instead."""
    r = job.privacy.retention

    def keep(days: float) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": str(int(days * DAY_MS))}

    # One key per profile version: compaction merges nothing but a version and its erasure's tombstone.
    history = {**keep(r.profile_history_days), "cleanup.policy": "compact,delete", "delete.retention.ms": "86400000"}
    return {"events": keep(r.events_days), "dead_letter": keep(r.dead_letter_days), "triggers": keep(r.triggers_days),
            "audit": keep(r.audit_days), "models": {}, "profiles": CHANGELOG_CONFIG, "profile_history": history,
            "history_triggers": keep(r.triggers_days)}


def ensure_own_topic(admin: KafkaAdminClient, job: JobSettings, key: str) -> bool:
    """Create a topic the job owns (``key``: ``audit``, ``profile_history``) with its retention; True if created."""
    try:
        admin.create_topics([NewTopic(job_topics(job)[key][0], num_partitions=job.kafka.partitions,
                                      replication_factor=job.kafka.replication_factor,
                                      topic_configs=retention_configs(job)[key])])
        return True
    except TopicAlreadyExistsError:
        return False


def job_topics(job: JobSettings) -> dict[str, tuple[str, int]]:
    """Each topic of the job by its settings key: (name, partitions when the project creates it)."""
    t, n = job.kafka.topics, job.kafka.partitions
    out = {"events": (t.events, n), "dead_letter": (t.dead_letter, n), "triggers": (t.triggers, n),
           "models": (t.models, 1), "profiles": (t.profiles, n), "audit": (t.audit, n)}
    if job.history.profile_versions:
        out["profile_history"] = (t.history, n)
    if job.history.dry_run_topic:
        out["history_triggers"] = (job.history.dry_run_topic, n)
    return out


def create_job_topics(job: JobSettings) -> list[str]:
    """Create the job's missing topics with their retention (the changelog compacted); returns the names created."""
    k = job.kafka
    configs = retention_configs(job)
    admin = KafkaAdminClient(**k.client_config(), client_id="persona-admin", request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        created = []
        for key, (name, partitions) in job_topics(job).items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=k.replication_factor,
                                              topic_configs=configs[key])])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        wanted = {name for name, _ in job_topics(job).values()}
        wait_until(lambda: wanted <= set(admin.list_topics()), 30, f"topics {sorted(wanted)} on {k.bootstrap_servers}")
        return created
    finally:
        admin.close()


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


def read_to_end(consumer: KafkaConsumer, partitions: list[TopicPartition], timeout_s: float = 60) -> Iterator[Any]:
    """Every record of ``partitions`` from the first offset up to the end offsets at the call, in order per
    partition (tools that read a whole topic once: the dry-run, the subject-access export)."""
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {partitions} to the end offsets {ends}")
        for msgs in consumer.poll(timeout_ms=1000).values():
            yield from (m for m in msgs if m.offset < ends[TopicPartition(m.topic, m.partition)])
