"""Loading history (``persona backfill``): the job over a topic's past, without messages, ending in a savepoint.

The backfill is the live job with two settings of its own, for that run only and printed when it starts:

- ``limits.max_event_age_ms`` lifted, so a year-old event is history, not ``event_time_out_of_range``;
- ``history.triggers_before_ms`` set to the wall clock at its start: a match decided at an event time before it is
  history, suppressed (reason ``history``, counted per pattern) and never sent, now or later.

It reads the events topic to the offsets that are the newest when it starts, waits until a checkpoint has
committed them, and stops with a savepoint: profiles, pattern state, item and model state as the live job would have
built them, and the source's offsets. The live job started from that savepoint (the command printed at the end)
continues at those offsets, with the same ``history.triggers_before_ms``: the pending timers of history fire then,
suppressed, and a match decided after the boundary is sent once.

>>> backfill_overrides(now_ms=1_796_600_000_000)
{'limits.max_event_age_ms': 1796600000000, 'history.triggers_before_ms': 1796600000000}
>>> live_command("/tmp/sp/savepoint-1", 1_796_600_000_000, ["kafka.group_id=shop"])
'persona run --from-savepoint /tmp/sp/savepoint-1 --set history.triggers_before_ms=1796600000000 --set kafka.group_id=shop'
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from persona.bounded_start import TopicOffsets
from persona.settings import KafkaSettings

# Settings a backfill changes for its run only: the live job keeps its own (the live command drops them).
RUN_ONLY = ("limits.max_event_age_ms", "history.dry_run_topic", "kafka.starting_offsets", "kafka.starting_timestamp_ms")


def backfill_overrides(now_ms: int, history_until_ms: int | None = None) -> dict[str, int]:
    """Any event since the epoch is admitted, and every match decided before ``history_until_ms`` (default: now) is
    history."""
    return {"limits.max_event_age_ms": now_ms,
            "history.triggers_before_ms": now_ms if history_until_ms is None else history_until_ms}


def live_command(savepoint: str, triggers_before_ms: int, overrides: list[str], drops_sinks: bool = False) -> str:
    """The one command that starts the live job from the backfill's savepoint (``overrides``: the backfill's own
    ``--set`` values, less the run-only and history ones). ``drops_sinks``: the backfill had a sink the live job
    has not (its dry-run topic's), whose state the live job drops (``--allow-non-restored-state``)."""
    kept = [o for o in overrides if o.partition("=")[0] not in (*RUN_ONLY, "history.triggers_before_ms")]
    args = ["persona", "run", "--from-savepoint", savepoint, *(["--allow-non-restored-state"] if drops_sinks else []),
            "--set", f"history.triggers_before_ms={triggers_before_ms}"]
    for o in kept:
        args += ["--set", o]
    return shlex.join(args)


@dataclass(frozen=True, slots=True)
class History:
    topic: str
    group: str
    starts: dict[int, int]   # where the backfill starts reading, per partition
    ends: dict[int, int]     # the newest offsets when it started: history is everything before

    @property
    def records(self) -> int:
        return sum(max(0, self.ends[p] - self.starts.get(p, 0)) for p in self.ends)


def history_of(kafka: KafkaSettings, starting_offsets: str, offsets: TopicOffsets) -> History:
    """The events topic's history for ``kafka.group_id``, from the same reading of the broker as the start
    (``persona.bounded_start``): from the group's committed offsets (``committed``, those it has) or the earliest
    ones, to the newest.

    >>> from types import SimpleNamespace as NS
    >>> kafka = NS(topics=NS(events="ev"), group_id="g")
    >>> history_of(kafka, "committed", TopicOffsets({0: 2, 1: 0}, {0: 9, 1: 4}, {0: 5})).records   # 9-5 + 4-0
    8
    """
    committed = offsets.committed if starting_offsets == "committed" else {}
    starts = {p: max(committed.get(p, offsets.beginnings[p]), offsets.beginnings[p]) for p in offsets.ends}
    if starting_offsets == "timestamp" and offsets.from_time is not None:   # --from
        starts = dict(offsets.from_time)
    return History(kafka.topics.events, kafka.group_id, starts, dict(offsets.ends))


def retention_ms(kafka: KafkaSettings, topic: str) -> int:
    """The topic's ``retention.ms`` (-1: kept forever)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    admin = KafkaAdminClient(**kafka.client_config(), request_timeout_ms=15_000)
    try:
        reply = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms"])])
    finally:
        admin.close()
    return int(reply["topic"][topic]["retention.ms"]["value"])


def retention_problem(topic: str, retention: int, oldest_ms: int, now_ms: int) -> str | None:
    """Why a history starting at ``oldest_ms`` would not survive in ``topic`` (Kafka deletes a segment whose newest
    record is older than the retention, while the backfill reads), or None. A day of margin.

    >>> retention_problem("ev", 7 * 86_400_000, 0, 400 * 86_400_000)[:82]
    'topic ev keeps records 7 days (retention.ms), and this history starts 400 days ago'
    >>> retention_problem("ev", -1, 0, 400 * 86_400_000) is None
    True
    """
    day = 86_400_000
    if retention < 0 or now_ms - oldest_ms + day <= retention:
        return None
    return (f"topic {topic} keeps records {retention / day:g} days (retention.ms), and this history starts "
            f"{(now_ms - oldest_ms) // day} days ago: Kafka would delete it while the backfill reads it. Raise the "
            f"topic's retention for the backfill (kafka-configs.sh --alter --entity-type topics --entity-name {topic} "
            "--add-config retention.ms=-1), and set it back once the live job runs (docs/history.md)")


def committed_offsets(kafka: KafkaSettings) -> dict[int, int]:
    """The group's committed offsets on the events topic (the job commits them at each checkpoint)."""
    from kafka.admin import KafkaAdminClient

    from persona.bounded_start import group_offsets
    admin = KafkaAdminClient(**kafka.client_config(), request_timeout_ms=15_000)
    try:
        return group_offsets(admin, kafka.group_id, kafka.topics.events)
    finally:
        admin.close()


def read_so_far(history: History, committed: Mapping[int, int]) -> int:
    """Records of the history behind the committed offsets.

    >>> read_so_far(History("ev", "g", {0: 0, 1: 10}, {0: 5, 1: 20}), {0: 5, 1: 12})
    7
    """
    return sum(min(max(committed.get(p, history.starts[p]), history.starts[p]), end) - history.starts[p]
               for p, end in history.ends.items())


def records_left(kafka: KafkaSettings, history: History, committed: Mapping[int, int], timeout_s: float = 10) -> int:
    """Records a read_committed consumer still finds between the committed offsets and the history's end. 0 when
    what is left are transaction markers (no record follows a topic's last commit marker, so the job's committed
    offset stays short of the end) or aborted records; -1 when it could not read to the end in time."""
    from kafka import KafkaConsumer, TopicPartition
    spans = {p: (max(committed.get(p, history.starts[p]), history.starts[p]), end) for p, end in history.ends.items()}
    spans = {p: span for p, span in spans.items() if span[0] < span[1]}
    if not spans:
        return 0
    consumer = KafkaConsumer(**kafka.client_config(), enable_auto_commit=False, isolation_level="read_committed")
    try:
        tps = {p: TopicPartition(history.topic, p) for p in spans}
        consumer.assign(list(tps.values()))
        for p, (start, _) in spans.items():
            consumer.seek(tps[p], start)
        found, deadline = 0, time.monotonic() + timeout_s
        while any(consumer.position(tps[p]) < end for p, (_, end) in spans.items()):
            if time.monotonic() > deadline:
                return -1
            for tp, records in consumer.poll(timeout_ms=500).items():
                found += sum(1 for r in records if r.offset < spans[tp.partition][1])
        return found
    finally:
        consumer.close()


def wait_for_history(history: History, committed: Callable[[], dict[int, int]], running: Callable[[], bool],
                     progress: bool = True, every_s: float = 1.0,
                     left: Callable[[dict[int, int]], int] | None = None, stalled_polls: int = 5) -> bool:
    """Until a checkpoint has committed every record of the history (then a savepoint holds all of it); raises
    RuntimeError if the job stops first. Shows a progress bar on a terminal, a line every 10 % otherwise.

    When the committed offsets stop moving short of the end for ``stalled_polls`` polls, ``left`` (``records_left``)
    says whether records are left or only transaction markers: the history is then read. Returns whether it ended
    so (the topic's offsets then count its markers too, so they are more than its events).

    >>> h = History("ev", "g", {0: 0}, {0: 10})
    >>> wait_for_history(h, lambda: {0: 9}, lambda: True, progress=False, every_s=0, left=lambda c: 0)
    True
    >>> wait_for_history(h, lambda: {0: 10}, lambda: True, progress=False, every_s=0)
    False
    >>> wait_for_history(h, lambda: {0: 9}, lambda: False, progress=False, every_s=0, left=lambda c: 1)
    Traceback (most recent call last):
    RuntimeError: the job stopped before the history was read (see its log)
    """
    total, shown = history.records, -1
    last, still = -1, 0
    while True:
        offsets = committed()
        done = read_so_far(history, offsets)
        still = still + 1 if done == last else 0
        last = done
        if done < total and left is not None and still >= stalled_polls and left(offsets) == 0:
            if progress:
                print(f"backfill: {done:,}/{total:,} offsets checkpointed; the {total - done:,} left hold no record "
                      "(transaction markers or aborted records)", file=sys.stderr, flush=True)
            return True
        if progress and (sys.stderr.isatty() or done * 10 // max(total, 1) != shown):
            shown = done * 10 // max(total, 1)
            bar = "#" * (30 * done // max(total, 1))
            end = "\r" if sys.stderr.isatty() and done < total else "\n"
            print(f"backfill [{bar:<30}] {done:,}/{total:,} events checkpointed", end=end, file=sys.stderr, flush=True)
        if done >= total:
            return False
        if not running():
            raise RuntimeError("the job stopped before the history was read (see its log)")
        time.sleep(every_s)


def summary_lines(history: History, counters: Mapping[str, Any], markers: bool = False) -> list[str]:
    """The backfill's summary from the job's counters (``persona.status.flink_status``): what was read, and where
    each record went, which adds up to what was read.

    The core's dead letters (``late_event``, ``processing_error``) were parsed first, so they are in ``valid`` too:

    >>> print("\\n".join(summary_lines(History("ev", "g", {0: 0}, {0: 10}), {"valid": 9,
    ...     "dead_letters": {"bad_json": 1, "late_event": 1}, "history": {"cart_abandonment": 3}, "triggers": {}})))
    history: 10 events of ev (group g)
      processed 8, dead-lettered 2 (bad_json 1, late_event 1): 10 in all
      triggers of history, suppressed and never sent: 3 (cart_abandonment 3)
      triggers sent (matches after the boundary): 0
    """
    dead = counters.get("dead_letters", {})
    dead_n = sum(dead.values())
    processed = int(counters.get("valid", 0)) - dead.get("late_event", 0) - dead.get("processing_error", 0)
    per = ", ".join(f"{k} {v:,}" for k, v in sorted(dead.items()))
    history_triggers = counters.get("history", {})
    sent = counters.get("triggers", {})
    what = "offsets (events, transaction markers and aborted records)" if markers else "events"
    lines = [f"history: {history.records:,} {what} of {history.topic} (group {history.group})",
             f"  processed {processed:,}, dead-lettered {dead_n:,}" + (f" ({per})" if per else "")
             + f": {processed + dead_n:,} in all",
             f"  triggers of history, suppressed and never sent: {sum(history_triggers.values()):,}"
             + (f" ({', '.join(f'{k} {v:,}' for k, v in sorted(history_triggers.items()))})" if history_triggers else ""),
             f"  triggers sent (matches after the boundary): {sum(sent.values()):,}"]
    return lines
