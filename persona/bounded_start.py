"""Where a bounded run (``persona run --bounded``) starts reading, decided before the job is built.

A bounded run stops at the offsets that are the newest when it starts. With ``kafka.starting_offsets: committed``
(the default) a new consumer group would start at those same newest offsets, read nothing and exit without a
word. So a group with no committed offset reads the topic from its earliest offset, and a run that has nothing
to read says why in one line and does not start the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BoundedStart:
    starting_offsets: str        # the kafka.starting_offsets the run uses
    to_read: int                 # records between where it starts and the newest offsets
    message: str                 # one line for the user


def decide(topic: str, group: str, starting_offsets: str, beginnings: dict[int, int], ends: dict[int, int],
           committed: dict[int, int], from_time: dict[int, int] | None = None) -> BoundedStart:
    """Where a bounded run over ``topic`` starts, from each partition's first and next offsets and ``group``'s
    committed offsets (partitions without one are absent); ``from_time``: with ``timestamp``, each partition's
    first offset at or after the time.

    >>> decide("ev", "g", "committed", {0: 0, 1: 0}, {0: 5, 1: 7}, {}).message
    'group g has no committed offsets on ev: this run reads it from the earliest offset (12 records)'
    >>> decide("ev", "g", "committed", {0: 0}, {0: 5}, {0: 5}).message
    'nothing to read: group g has read ev to its end (5 records); --set kafka.starting_offsets=earliest reads it again'
    >>> decide("ev", "g", "earliest", {0: 3}, {0: 3}, {}).message
    'nothing to read: topic ev is empty (or every record has expired)'
    >>> decide("ev", "g", "committed", {0: 0, 1: 0}, {0: 5, 1: 7}, {0: 5}).to_read
    7
    >>> decide("ev", "g", "timestamp", {0: 0, 1: 0}, {0: 5, 1: 7}, {}, {0: 4, 1: 7}).message
    'this run reads ev from the first record at or after the time in each partition (1 records)'
    """
    on_topic = sum(ends[p] - beginnings.get(p, 0) for p in ends)
    if on_topic == 0:
        return BoundedStart(starting_offsets, 0, f"nothing to read: topic {topic} is empty (or every record has expired)")
    if starting_offsets == "earliest":
        return BoundedStart("earliest", on_topic, f"this run reads {topic} from the earliest offset "
                                                  f"({on_topic:,} records)")
    if starting_offsets == "timestamp":
        to_read = sum(ends[p] - (from_time or {}).get(p, ends[p]) for p in ends)
        if to_read <= 0:
            return BoundedStart("timestamp", 0, f"nothing to read: no record of {topic} at or after the time")
        return BoundedStart("timestamp", to_read, f"this run reads {topic} from the first record at or after the "
                                                  f"time in each partition ({to_read:,} records)")
    if starting_offsets == "latest":
        return BoundedStart("latest", 0, f"nothing to read: kafka.starting_offsets is latest, so this run "
                                         f"starts and ends at the end of {topic}")
    if not committed:
        return BoundedStart("earliest", on_topic, f"group {group} has no committed offsets on {topic}: this run "
                                                  f"reads it from the earliest offset ({on_topic:,} records)")
    # A partition without a committed offset is read from its earliest offset (the source's reset policy).
    to_read = sum(ends[p] - max(committed.get(p, beginnings.get(p, 0)), beginnings.get(p, 0)) for p in ends)
    if to_read <= 0:
        return BoundedStart("committed", 0, f"nothing to read: group {group} has read {topic} to its end "
                                            f"({on_topic:,} records); --set kafka.starting_offsets=earliest reads "
                                            "it again")
    return BoundedStart("committed", to_read, f"this run reads {topic} from group {group}'s committed "
                                              f"offsets ({to_read:,} records)")


def _group_offsets(admin: Any, group: str, deadline_s: float = 30) -> dict[Any, Any]:
    """The group's committed offsets. A broker that has not yet made its offsets topic (its first group) answers
    with a retriable error for a few seconds: retried until ``deadline_s``."""
    import time

    from kafka.errors import KafkaError
    end = time.monotonic() + deadline_s
    while True:
        try:
            return dict(admin.list_group_offsets(group).get(group, {}))
        except KafkaError as e:
            if not getattr(e, "retriable", False) or time.monotonic() > end:
                raise
            time.sleep(0.5)


def group_offsets(admin: Any, group: str, topic: str) -> dict[int, int]:
    """``group``'s committed offsets on ``topic``, per partition (those it has)."""
    return {tp.partition: meta.offset for tp, meta in _group_offsets(admin, group).items()
            if tp.topic == topic and meta.offset >= 0}


@dataclass(frozen=True, slots=True)
class TopicOffsets:
    beginnings: dict[int, int]   # per partition, its first offset
    ends: dict[int, int]         # per partition, its next offset (the newest + 1)
    committed: dict[int, int]    # the group's committed offsets (the partitions it has one for)
    # With kafka.starting_offsets timestamp: per partition, the first offset at or after the time (its end if none)
    from_time: dict[int, int] | None = None


def topic_offsets(kafka: Any) -> TopicOffsets:
    """The job's events topic and group, read from the broker (``kafka``: the KafkaSettings)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    topic = kafka.topics.events
    consumer = KafkaConsumer(**kafka.client_config(), enable_auto_commit=False, request_timeout_ms=15_000)
    admin = KafkaAdminClient(**kafka.client_config(), request_timeout_ms=15_000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        beginnings = {tp.partition: o for tp, o in consumer.beginning_offsets(partitions).items()}
        ends = {tp.partition: o for tp, o in consumer.end_offsets(partitions).items()}
        committed = group_offsets(admin, kafka.group_id, topic)
        from_time = None
        if kafka.starting_offsets == "timestamp":
            found = consumer.offsets_for_times({tp: kafka.starting_timestamp_ms for tp in partitions})
            from_time = {tp.partition: ends[tp.partition] if at is None else at.offset for tp, at in found.items()}
    finally:
        consumer.close()
        admin.close()
    return TopicOffsets(beginnings, ends, committed, from_time)


def bounded_start(kafka: Any, offsets: TopicOffsets | None = None) -> BoundedStart:
    """:func:`decide` for the job's events topic and group (``offsets``: read from the broker when not given)."""
    o = offsets or topic_offsets(kafka)
    return decide(kafka.topics.events, kafka.group_id, kafka.starting_offsets, o.beginnings, o.ends, o.committed,
                  o.from_time)
