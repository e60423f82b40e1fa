"""README command 1: the personalization job end to end on the embedded mini-cluster, fed by synthetic shoppers.

Starts what is missing (jars, Kafka, Redis), creates this run's topics, runs the job in a child process,
produces generated traffic, and prints a live summary (events/s, dead letters, triggers by pattern)
until the job has caught up, then a sample profile. On exit, Ctrl-C included, it stops the job and the
services it started, and deletes its topics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from persona.generator.shoppers import generate
from persona.generator.sink import history_override, send_to_kafka
from persona.settings import ROOT, load_generator_settings, load_job_settings, load_stack_settings
from persona.stack.prereqs import check_all
from persona.stack.procs import StackError, wait_until
from persona.stack.services import LocalServices
from persona.stack.topics import ensure_topics
from state.keys import RedisKeys
from state.model_registry import model_info


@dataclass
class DemoOptions:
    records: int = 30_000
    users: int = 1_000
    rate: float = 3_000.0
    seed: int = 42
    drain_timeout_s: float = 120.0


def _topic_end(consumer: KafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic) or set()
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    return sum(ends.values())


def run_demo(opts: DemoOptions) -> int:
    check_all()
    stack = load_stack_settings()
    services = LocalServices.from_settings(stack)
    started_kafka = services.kafka.running() is None
    started_redis = services.redis.running() is None
    for line in services.up():
        print(line)
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = {"events": f"demo-{run_id}.events", "dead_letter": f"demo-{run_id}.dlq", "triggers": f"demo-{run_id}.triggers",
              "models": f"demo-{run_id}.models", "profiles": f"demo-{run_id}.profiles"}
    prefix = f"demo:{run_id}:"
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    job = load_job_settings({"kafka.bootstrap_servers": bootstrap, "redis.url": redis_url})
    # The profile changelog is created (compacted) by the job itself.
    ensure_topics(bootstrap, [t for k, t in topics.items() if k != "profiles"], job.kafka.partitions)
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={prefix}",
        "kafka.starting_offsets=earliest", f"kafka.group_id=demo-{run_id}",
        # The demo replays generated history from conf/generator.yaml's start: admit its age at ingestion.
        history_override()]
    cmd = [sys.executable, "-m", "jobs.personalization"] + [a for o in overrides for a in ("--set", o)]
    log_path = stack.run_path / f"demo-job-{run_id}.log"
    log = open(log_path, "wb")
    job_proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"job started (pid {job_proc.pid}); log: {log_path}")
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(prefix)
    try:
        return _feed_and_watch(opts, job_proc, client, keys, bootstrap, topics)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up")
        return 130
    finally:
        _stop(job_proc)
        log.close()
        _delete_topics(bootstrap, list(topics.values()))
        if started_kafka:
            print(services.kafka.down())
        if started_redis:
            print(services.redis.down())


def _feed_and_watch(opts: DemoOptions, job_proc: subprocess.Popen[bytes], client: redis.Redis, keys: RedisKeys,
                    bootstrap: str, topics: dict[str, str]) -> int:
    gen = load_generator_settings({"users": opts.users, "seed": opts.seed})
    sent: Counter[str] = Counter()
    producer = threading.Thread(
        target=lambda: sent.update(send_to_kafka(generate(gen, max_records=opts.records), bootstrap, topics["events"],
                                                 rate=opts.rate, progress=False)),
        daemon=True)
    producer.start()
    triggers = KafkaConsumer(topics["triggers"], bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=200)
    offsets = KafkaConsumer(bootstrap_servers=bootstrap)
    by_pattern: Counter[str] = Counter()
    start = prev_t = time.monotonic()
    prev_done = 0
    deadline, last, steady = None, None, 0
    while True:
        time.sleep(2)  # refresh cadence of the live summary
        if job_proc.poll() is not None:
            raise StackError(f"the job exited with code {job_proc.returncode}; see its log")
        for msg in triggers:
            if msg.value is not None:   # a tombstone: an erased user's key
                by_pattern[json.loads(msg.value)["pattern"]] += 1
        applied = _applied_events(client, keys)
        dlq = _topic_end(offsets, topics["dead_letter"])
        produced = _topic_end(offsets, topics["events"])
        now = time.monotonic()
        done = applied + dlq
        rate = (done - prev_done) / (now - prev_t)
        prev_done, prev_t = done, now
        print(f"[{now - start:5.0f}s] produced {produced:,}  job {rate:,.0f} ev/s  in profiles {applied:,}  "
              f"dead-lettered {dlq:,}  triggers {dict(by_pattern) or 0}", flush=True)
        if not producer.is_alive():
            deadline = deadline or time.monotonic() + opts.drain_timeout_s
            # Caught up: the job has written something, and that stopped changing for three refreshes.
            steady = steady + 1 if (applied, dlq) == last and applied + dlq > 0 else 0
            last = (applied, dlq)
            if steady >= 3:
                break
            if time.monotonic() > deadline:
                print("the job did not catch up before the drain timeout", file=sys.stderr)
                return 1
    triggers.close()
    offsets.close()
    _print_summary(client, keys, sent, by_pattern)
    return 0


def _applied_events(client: redis.Redis, keys: RedisKeys) -> int:
    total = 0
    for key in client.scan_iter(match=keys.profile_pattern(), count=1000):
        total += int(client.hget(key, "events_total") or 0)
    return total


def _print_summary(client: redis.Redis, keys: RedisKeys, sent: Counter[str], by_pattern: Counter[str]) -> None:
    print(f"\nsent: {dict(sent)}")
    print(f"triggers by pattern: {dict(by_pattern)}")
    users = [k.decode().removeprefix(keys.profile("")) for k in client.scan_iter(match=keys.profile_pattern(), count=1000)]
    print(f"profiles in Redis: {len(users)}")
    for stage in ("browsing", "considering", "cart_abandoned", "purchased", "loyal"):
        print(f"  segment {stage:<15} {client.scard(keys.segment(stage)):>6}")
    for i in range(load_job_settings().models.segments):
        print(f"  segment seg{i:<12} {client.scard(keys.segment(f'seg{i}')):>6}   (online KMeans)")
    for name in ("propensity", "segments", "bots"):
        info = model_info(client, keys, name)
        print(f"model {name}: " + ("not published yet" if info is None else
              f"version {info['version']}, {info['examples']:,} examples"
              + "".join(f", {k} {v:.3f}" for k, v in sorted(info["metrics"].items()))))
    if users:
        busiest = max(users, key=lambda u: int(client.hget(keys.profile(u), "events_total") or 0))
        profile = {k.decode(): v.decode() for k, v in client.hgetall(keys.profile(busiest)).items()}
        print(f"\nsample profile ({keys.profile(busiest)}):")
        for name in sorted(profile):
            print(f"  {name:<34} {profile[name]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # The mini-cluster's JVM is in the same process group; wait until the group is gone.
    wait_until(lambda: not _group_alive(proc.pid), 20, "stopping the job's JVM")
    print("job stopped")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics(names)
        admin.close()
    except Exception as e:  # noqa: BLE001 - best-effort cleanup must not hide the demo's own result
        print(f"could not delete demo topics: {e}", file=sys.stderr)
