"""The profile loader: the profile changelog topic into Redis (``persona loader``).

The job does no Redis I/O for profiles: it writes each change to the compacted changelog topic
(``state/profile_changelog.py``), whose Kafka sink flushes at every checkpoint. This service reads it and
applies it to Redis:

- in pipelines, coalesced per user within a batch (the newest state wins; an erasure deletes first);
- through the version guard (``state/profile_store.py``): a replayed or older state never replaces a newer one;
- committing the offsets only after Redis acknowledged the batch, so a crash of the loader re-applies, never skips;
- while Redis is down it keeps the batch, pauses the partitions and retries with backoff (0.5 s doubling
  to 10 s), then catches up; the job is not affected at all.

``--rebuild`` reads the whole topic from its first offset into Redis and stops at the end it saw at start.
On the embedded mini-cluster, ``persona run`` runs a loader thread in its own process (``loader.embedded``);
on a cluster, run ``persona loader`` as a service next to the job (one group per Redis; more processes share
the partitions).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from operators.config_files import ConfigError
from operators.profile_fold import ProfileRules, profile_fingerprint, profile_record, profile_sets
from persona.loader_metrics import serve_loader_metrics
from persona.rules import profile_rules
from persona.settings import JobSettings
from state.profile_changelog import Change, coalesce, read_change
from state.profile_store import ProfileWriter

log = logging.getLogger("persona.loader")
LINGER_S = 0.02   # how long a batch may fill after its first record


@dataclass
class LoaderStats:
    records: int = 0          # changelog records read
    written: int = 0          # profiles that replaced the stored one
    stale: int = 0            # refused by the version guard (a replay, or an older state)
    erased: int = 0           # tombstones applied
    malformed: int = 0        # records this code cannot read (logged, skipped)
    redis_errors: int = 0     # failed flushes (retried with backoff)
    batches: int = 0
    freshness_ms: int = 0     # the last batch: how old its newest change was when Redis acknowledged it
    last_batch_at_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def loader_group(settings: JobSettings) -> str:
    return f"{settings.kafka.group_id}.loader"


class ProfileLoader:
    """Apply the changelog to Redis until ``stop`` is set (or, with ``until_end``, until the end seen at start)."""

    def __init__(self, settings: JobSettings, rebuild: bool = False, group_id: str | None = None) -> None:
        self._settings = settings
        self._topic = settings.kafka.topics.profiles
        self._rules: ProfileRules = profile_rules(settings)
        self._fingerprint = profile_fingerprint(self._rules)
        r = settings.redis
        self._max_batch = r.flush_max_batch
        self._writer = ProfileWriter(r.client(), r.keys(), r.profile_ttl_s,
                                              r.flush_interval_ms, r.flush_max_batch,
                                              segments=profile_sets(settings.models.segments))
        self._masked = r.masked_url
        self._rebuild = rebuild
        config = {**settings.kafka.librdkafka_config(), "group.id": group_id or loader_group(settings),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 50}
        self._consumer = Consumer(config, logger=logging.getLogger("persona.loader.kafka"))
        self.stats = LoaderStats()
        self._next_offsets: dict[int, int] = {}     # partition -> next offset, applied to Redis
        self._backoff_s = 0.0
        self._next_malformed_log = 0.0
        self._drain = threading.Event()
        self._next_commit = 0.0
        self._drain_deadline = float("inf")

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None, until_end: bool = False,
            progress: Callable[[LoaderStats, int | None], None] | None = None, progress_every_s: float = 10) -> LoaderStats:
        """Until ``stop`` is set; with ``until_end`` (or after ``request_drain``), until the end of the changelog
        as it was then is in Redis. Every call on the consumer happens in this thread."""
        stop = stop or threading.Event()
        partitions = self._wait_for_topic(stop)
        if partitions is None:
            self.close()
            return self.stats
        if self._rebuild:
            self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
        else:
            self._consumer.subscribe([self._topic])
        ends: dict[int, int] | None = None
        next_progress = time.monotonic() + progress_every_s
        try:
            while True:
                if ends is None and (until_end or self._drain.is_set()):
                    ends = self._ends(partitions)
                    self._seed_from_committed(sorted(ends))
                if ends is not None and self._reached(ends):
                    break
                if stop.is_set() and ends is None:
                    break
                if ends is not None and time.monotonic() > self._drain_deadline:
                    log.error("loader: the changelog was not applied to its end in time (Redis down?); "
                              "the rest is applied by the next loader of group %s", loader_group(self._settings))
                    break
                batch = self._poll()
                if batch:
                    self._apply(batch)
                if progress and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + progress_every_s
                    progress(self.stats, sum(ends.values()) if ends else None)
        finally:
            self.close()
        return self.stats

    def request_drain(self, deadline_s: float) -> None:
        """From another thread: apply the changelog up to its current end, then stop (a bounded run's end)."""
        self._drain_deadline = time.monotonic() + deadline_s
        self._drain.set()

    def _wait_for_topic(self, stop: threading.Event) -> list[int] | None:
        """A loader started before its job waits for the job to create the changelog topic."""
        if self._rebuild:   # a rebuild of a topic that does not exist is a mistake, said at once
            return self._partitions()
        said = False
        while not stop.is_set():
            try:
                return self._partitions()
            except KafkaException as e:
                if not said:
                    log.warning("loader: waiting for the changelog topic %s (the job creates it): %s", self._topic, e)
                    said = True
                stop.wait(1.0)
        return None

    def _partitions(self) -> list[int]:
        meta = self._consumer.list_topics(self._topic, timeout=15)
        topic = meta.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise KafkaException(f"changelog topic {self._topic!r}: {topic.error if topic else 'missing'}")
        return sorted(topic.partitions)

    def _ends(self, partitions: list[int]) -> dict[int, int]:
        ends = {}
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=15)
            if high > low:
                ends[p] = high
        return ends

    def _reached(self, ends: dict[int, int]) -> bool:
        return all(self._next_offsets.get(p, -1) >= end for p, end in ends.items())

    def _seed_from_committed(self, partitions: list[int]) -> None:
        """A partition with nothing new since this group's last commit is at its end already."""
        if self._rebuild:
            return
        for _ in range(30):   # the group coordinator may not be ready yet
            try:
                committed = self._consumer.committed([TopicPartition(self._topic, p) for p in partitions], timeout=10)
                break
            except KafkaException as e:
                log.debug("loader: committed offsets not readable yet: %s", e)
                time.sleep(0.5)
        else:
            return
        for tp in committed:
            if tp.offset >= 0:
                self._next_offsets[tp.partition] = max(self._next_offsets.get(tp.partition, -1), tp.offset)

    def _poll(self) -> list[Message]:
        # The first record waits up to 50 ms; then the batch fills for at most LINGER_S: under load, one Redis
        # pipeline carries tens of records instead of a handful (a pipeline and a commit per few records cost
        # the drain ~30%, on the cores the job needs), at the price of those milliseconds of freshness.
        first = self._consumer.poll(0.05)
        if first is None:
            return []
        batch = [first]
        until = time.monotonic() + LINGER_S
        while len(batch) < self._max_batch:
            more = self._consumer.consume(self._max_batch - len(batch), max(0.0, until - time.monotonic()))
            batch += more
            if not more or time.monotonic() >= until:
                break
        out = []
        for m in batch:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("loader: kafka: %s", err)
        return out

    def _apply(self, batch: list[Message]) -> None:
        changes: list[Change] = []
        offsets: dict[int, int] = {}
        now_ms = int(time.time() * 1000)
        for m in batch:
            offsets[m.partition()] = m.offset() + 1
            try:
                changes.append(read_change(m.key(), m.value()))
            except Exception as e:   # noqa: BLE001 - one unreadable record never stops the loader
                self.stats.malformed += 1
                if time.monotonic() >= self._next_malformed_log:
                    self._next_malformed_log = time.monotonic() + 60
                    log.error("loader: skipped an unreadable changelog record at %s/%d/%d (%d so far): %s",
                              m.topic(), m.partition(), m.offset(), self.stats.malformed, e)
        self.stats.records += len(batch)
        self._check_fingerprints(changes)
        for user_id, pending in coalesce(changes).items():
            if pending.erase:
                self._writer.erase(user_id, now_ms)
                self.stats.erased += 1
            change = pending.last
            if change is not None and change.state is not None:
                state = change.state
                self._writer.put(user_id, state.version,
                                 partial(profile_record, user_id, state, self._rules, change.updated_at_ms),
                                 now_ms, epoch=state.epoch_ms)
        self._flush_until_acknowledged()
        done_ms = int(time.time() * 1000)
        newest = max((c.updated_at_ms for c in changes if c.state is not None), default=None)
        if newest is not None:
            self.stats.freshness_ms = max(done_ms - newest, 0)
        self.stats.last_batch_at_ms = done_ms
        self._next_offsets |= offsets
        if not self._rebuild and time.monotonic() >= self._next_commit:   # at most twice a second; at close too
            self._next_commit = time.monotonic() + 0.5
            self._consumer.commit(offsets=[TopicPartition(self._topic, p, o) for p, o in self._next_offsets.items()],
                                  asynchronous=True)
        self.stats.batches += 1

    def _check_fingerprints(self, changes: list[Change]) -> None:
        """A loader deployed with other profile settings than the job's would publish profiles the job did not
        decide: it stops before writing anything of the batch (format-1 records, from older builds, carry none)."""
        for change in changes:
            if change.fingerprint is not None and change.fingerprint != self._fingerprint:
                raise ConfigError(
                    f"loader: the changelog record of user {change.user_id!r} was made under other profile settings "
                    f"(fingerprint {change.fingerprint.hex()}, this loader's {self._fingerprint.hex()}): run the loader "
                    "with the job's profile.* and privacy.* settings (conf/job.yaml and its --set overrides)")

    def _flush_until_acknowledged(self) -> None:
        """Redis down: the batch waits (partitions paused, the group membership kept by polling), then goes."""
        paused: list[TopicPartition] = []
        while True:
            written, stale = self._writer.written, self._writer.skipped_stale
            try:
                self._writer.flush()
            except redis.RedisError as e:
                self.stats.redis_errors += 1
                self._backoff_s = min(max(self._backoff_s * 2, 0.5), 10.0)
                log.warning("loader: redis at %s: %s; %d profile(s) wait, next try in %.1f s", self._masked, e,
                            self._writer.pending, self._backoff_s)
                if not paused:
                    paused = self._consumer.assignment()
                    self._consumer.pause(paused)
                until = time.monotonic() + self._backoff_s
                while time.monotonic() < until:
                    self._consumer.poll(min(0.5, max(0.0, until - time.monotonic())))   # paused: returns nothing
                continue
            self.stats.written += self._writer.written - written
            self.stats.stale += self._writer.skipped_stale - stale
            if self._backoff_s:
                log.warning("loader: redis at %s answers again; catching up", self._masked)
                self._backoff_s = 0.0
            if paused:
                self._consumer.resume(paused)
            return

    def close(self) -> None:
        try:
            if not self._rebuild and self._next_offsets:
                try:
                    self._consumer.commit(offsets=[TopicPartition(self._topic, p, o)
                                                   for p, o in self._next_offsets.items()], asynchronous=False)
                except KafkaException as e:
                    log.warning("loader: final offset commit failed (%s); the last batch will be applied again", e)
            self._consumer.close()
        finally:
            try:
                self._writer.close()
            except redis.RedisError:
                pass


class EmbeddedLoader:
    """A loader thread in the process that runs the mini-cluster (``loader.embedded``): the job's Python worker
    runs inside the JVM, so this thread uses the other core, not the job's interpreter."""

    def __init__(self, settings: JobSettings) -> None:
        self._stop = threading.Event()
        self.loader = ProfileLoader(settings)
        self.metrics_port = serve_loader_metrics(self.loader.stats, settings.loader.metrics_host,
                                                 settings.loader.metrics_port)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="persona-loader", daemon=True)

    def _run(self) -> None:
        try:
            self.loader.run(self._stop, progress=_log_progress, progress_every_s=30)
        except BaseException as e:   # noqa: BLE001 - reported by finish()
            self._error = e
            log.exception("loader: stopped by an error")

    def start(self) -> EmbeddedLoader:
        self._thread.start()
        return self

    def finish(self, catch_up: bool, deadline_s: float = 120) -> LoaderStats:
        """Stop; with ``catch_up``, first apply everything the job wrote (the end of a bounded run)."""
        if catch_up:
            self.loader.request_drain(deadline_s)
            self._thread.join(timeout=deadline_s + 30)
        self._stop.set()
        self._thread.join(timeout=30)
        log.info("loader: %s", self.loader.stats.as_dict())
        return self.loader.stats


def _log_progress(stats: LoaderStats, total: int | None) -> None:
    log.info("loader: %s%s", stats.as_dict(), f" of about {total:,} records" if total else "")


def format_progress(stats: LoaderStats, total: int | None) -> str:
    of = f" of ~{total:,}" if total else ""
    return (f"loader: {stats.records:,}{of} records, {stats.written:,} profiles written, {stats.stale:,} stale, "
            f"{stats.erased:,} erased, {stats.malformed:,} unreadable, {stats.redis_errors:,} redis errors")

