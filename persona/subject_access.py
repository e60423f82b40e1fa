"""Everything the system holds about one user, as JSON: ``persona profile USER --export`` (docs/privacy.md).

A data-access request (GDPR art. 15, CCPA "right to know") is served from what the stores hold now:

- Redis: the profile hash and the sets (journey stages, segments) the user is in;
- the profile changelog: the newest state, with the consent history, the pending (quiet-hours deferred)
  triggers and the armed abandonment matches, or the erasure's tombstone;
- the audit topic: every consent change and erasure;
- the triggers and dead-letter topics: what was sent, and what was refused (personal data masked);
- with ``history.profile_versions``, the profile history: every version still held (``persona profile --history``).

Kafka records are keyed by user, so only the key's partition is read (Kafka's default partitioner, which
the job's sinks use). That is a scan of one partition of each topic: seconds here, longer on a large
topic; retention bounds it (``privacy.retention``).
"""

from __future__ import annotations

import json
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from operators.consent import consent_flags
from operators.profile_fold import consent_log_of
from persona.history_reader import read_history, version_doc
from persona.rules import consent_policy, profile_rules
from persona.settings import JobSettings
from persona.stack.topics import read_to_end
from state.profile_changelog import read_change
from state.profile_store import read_profile


def _records_of(consumer: KafkaConsumer, topic: str, key: str) -> list[tuple[int, bytes | None]]:
    """(timestamp ms, value) of every record of ``key`` in ``topic``, in order; [] when the topic is missing."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return []
    raw_key = key.encode()
    tp = TopicPartition(topic, (murmur2(raw_key) & 0x7FFFFFFF) % len(partitions))
    return [(m.timestamp, m.value) for m in read_to_end(consumer, [tp]) if m.key == raw_key]


def _json_values(records: list[tuple[int, bytes | None]]) -> list[Any]:
    return [json.loads(v) for _, v in records if v is not None]


def export_subject(settings: JobSettings, user_id: str) -> dict[str, Any]:
    """What the system holds about ``user_id`` now (raises ``redis.ConnectionError`` or Kafka errors)."""
    keys = settings.redis.keys()
    client = settings.redis.client()
    try:
        profile = read_profile(client, keys, user_id)
        # Every set the user could be in: on Redis Cluster, those of the user's bucket.
        sets = sorted(keys.segment_name(k) for k in client.scan_iter(match=keys.segment_of("*", user_id), count=1000)
                      if client.sismember(k, user_id))
    finally:
        client.close()
    t = settings.kafka.topics
    consumer = KafkaConsumer(**settings.kafka.client_config(), enable_auto_commit=False, consumer_timeout_ms=10_000,
                             isolation_level="read_committed")
    try:
        changes = _records_of(consumer, t.profiles, user_id)
        audit = _json_values(_records_of(consumer, t.audit, user_id))
        triggers = _json_values(_records_of(consumer, t.triggers, user_id))
        dead_letters = _json_values(_records_of(consumer, t.dead_letter, user_id))
    finally:
        consumer.close()
    out: dict[str, Any] = {"user_id": user_id, "redis": {"profile": profile, "sets": sets},
                           "audit": audit, "triggers_sent": triggers, "dead_letters": dead_letters}
    if settings.history.profile_versions:
        rules = profile_rules(settings)
        out["profile_history"] = [version_doc(v, rules) for v in read_history(settings, user_id)]
    if changes:
        timestamp, value = changes[-1]
        change = read_change(user_id.encode(), value)
        if change.state is None:
            out["state"] = {"erased": True, "erased_at": timestamp}
        else:
            s = change.state
            policy = consent_policy(settings)
            out["state"] = {
                "updated_at": change.updated_at_ms,
                "consent": consent_flags(consent_log_of(s), s.newest_event_ms, s.country, policy),
                "consent_history": [{"event_time": at, "purpose": p, "granted": g} for at, p, g in consent_log_of(s)],
                "pending_triggers": [json.loads(tr.to_json()) for tr in s.patterns.deferred],
                "pending_matches": [{"pattern": name, "anchor_time": a.anchor_time_ms, "deadline": a.deadline_ms}
                                    for name, st in sorted(s.patterns.absence.items()) for a in st.armed],
                "pending_labels": len(s.models.labels.pending),
                "demographics": dict(sorted(s.demographics.items())),
                "country": s.country,
            }
    else:
        out["state"] = None
    return out
