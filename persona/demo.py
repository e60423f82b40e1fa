"""README command 1: the job end to end on the embedded mini-cluster, fed by synthetic shoppers.

Starts what is missing (jars, Kafka, Redis), creates this run's topics, runs the job in a child process,
produces generated traffic, prints a live summary, and waits until Redis holds the count of every valid
event. On exit, Ctrl-C included, it stops the job and the services it started, and deletes its topics.
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
from persona.generator.sink import send_to_kafka
from persona.settings import ROOT, load_generator_settings, load_job_settings, load_stack_settings
from persona.stack.prereqs import check_all
from persona.stack.procs import StackError, wait_until
from persona.stack.services import LocalServices
from persona.stack.topics import ensure_topics
from state.keys import RedisKeys


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
    topics = {"events": f"demo-{run_id}.events", "dead_letter": f"demo-{run_id}.dlq", "triggers": f"demo-{run_id}.triggers"}
    prefix = f"demo:{run_id}:"
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    job = load_job_settings({"kafka.bootstrap_servers": bootstrap, "redis.url": redis_url})
    ensure_topics(bootstrap, topics.values(), job.kafka.partitions)
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={prefix}",
        f"kafka.group_id=demo-{run_id}"]
    cmd = [sys.executable, "-m", "jobs.event_counter"] + [a for o in overrides for a in ("--set", o)]
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
    valid_by_user: Counter[str] = Counter()

    def records():  # type: ignore[no-untyped-def]
        for rec in generate(gen, max_records=opts.records):
            if rec.event is not None:
                valid_by_user[rec.event["user_id"]] += 1
            yield rec

    producer = threading.Thread(
        target=lambda: sent.update(send_to_kafka(records(), bootstrap, topics["events"], rate=opts.rate, progress=False)),
        daemon=True)
    producer.start()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    start = time.monotonic()
    deadline = None
    while True:
        time.sleep(2)  # refresh cadence of the live summary
        if job_proc.poll() is not None:
            raise StackError(f"the job exited with code {job_proc.returncode}; see its log")
        applied = _applied_events(client, keys)
        dlq = _topic_end(consumer, topics["dead_letter"])
        produced = _topic_end(consumer, topics["events"])
        elapsed = time.monotonic() - start
        print(f"[{elapsed:5.0f}s] produced {produced:,}  ({produced / elapsed:,.0f} ev/s)  "
              f"applied to profiles {applied:,}  dead-lettered {dlq:,}  users {len(valid_by_user):,}", flush=True)
        if not producer.is_alive():
            deadline = deadline or time.monotonic() + opts.drain_timeout_s
            if applied >= sum(valid_by_user.values()) and dlq >= opts.records - sum(valid_by_user.values()):
                break
            if time.monotonic() > deadline:
                print("the job did not catch up before the drain timeout", file=sys.stderr)
                return 1
    consumer.close()
    _print_summary(client, keys, valid_by_user, sent)
    return 0


def _applied_events(client: redis.Redis, keys: RedisKeys) -> int:
    total = 0
    for key in client.scan_iter(match=keys.profile_pattern(), count=1000):
        total += int(client.hget(key, "events_total") or 0)
    return total


def _print_summary(client: redis.Redis, keys: RedisKeys, expected: Counter[str], sent: Counter[str]) -> None:
    print(f"\nsent: {dict(sent)}")
    print(f"{'user':<10} {'events in Redis':>15} {'events sent':>12}  counts by type")
    for user, n in expected.most_common(10):
        prof = client.hgetall(keys.profile(user))
        by_type = json.loads(prof.get(b"counts_by_type", b"{}"))
        print(f"{user:<10} {int(prof.get(b'events_total', 0)):>15} {n:>12}  {by_type}")
    mismatched = [u for u, n in expected.items() if int(client.hget(keys.profile(u), "events_total") or 0) != n]
    print(f"\n{len(expected)} users; {len(mismatched)} with a count different from what was sent")


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
