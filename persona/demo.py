"""README command 1: the personalization job end to end on the embedded mini-cluster, fed by synthetic shoppers.

Starts what is missing (jars, Kafka, Redis), creates this run's topics, runs the job in a child process,
produces generated traffic, and prints a live summary (events/s, dead letters, triggers by pattern)
until the job has caught up, then a sample profile. On exit, Ctrl-C included, it stops the job and the
services it started, and deletes its topics.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from operators.pattern_spec import load_patterns
from persona.generator.items import PLANTED
from persona.generator.shoppers import generate
from persona.generator.sink import history_override, send_to_kafka
from persona.rules import check_patterns, recommend_rules
from persona.serving import ListRulesInForce, recommend
from persona.settings import ROOT, load_generator_settings, load_job_settings, load_stack_settings, resolve_path
from persona.stack.prereqs import check_all
from persona.stack.procs import StackError, stop_process_group
from persona.stack.services import LocalServices
from persona.stack.topics import ensure_topics
from persona.status import flink_status
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
              "models": f"demo-{run_id}.models", "profiles": f"demo-{run_id}.profiles", "audit": f"demo-{run_id}.audit"}
    prefix = f"demo:{run_id}:"
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    job = load_job_settings({"kafka.bootstrap_servers": bootstrap, "redis.url": redis_url})
    # The profile changelog (compacted) and the audit topic are created by the job itself.
    ensure_topics(bootstrap, [t for k, t in topics.items() if k not in ("profiles", "audit")], job.kafka.partitions)
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={prefix}",
        "kafka.starting_offsets=earliest", f"kafka.group_id=demo-{run_id}",
        # The demo replays generated history from conf/generator.yaml's start: admit its age at ingestion.
        history_override(),
        # The recommender, off by default for its cost (docs/recommendations.md), is part of what the demo shows.
        "recommend.enabled=true"]
    cmd = [sys.executable, "-m", "jobs.personalization"] + [a for o in overrides for a in ("--set", o)]
    log_path = stack.run_path / f"demo-job-{run_id}.log"
    log = open(log_path, "wb")
    job_proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"job started (pid {job_proc.pid}); log: {log_path}")
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(prefix)
    try:
        return _feed_and_watch(opts, job_proc, client, keys, bootstrap, topics, log_path)
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
                    bootstrap: str, topics: dict[str, str], log_path: Path) -> int:
    # With the planted item structure of `persona evaluate --recommend`: it changes which products are viewed, nothing
    # else, so the counts are those of the default stream.
    gen = load_generator_settings({"users": opts.users, "seed": opts.seed, **PLANTED})
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
    first_profile: float | None = None
    timeline: list[tuple[float, float, float | None, int]] = []   # (s since start, ev/s, freshness s, triggers)
    while True:
        time.sleep(2)  # refresh cadence of the live summary
        if job_proc.poll() is not None:
            raise StackError(f"the job exited with code {job_proc.returncode}; see its log")
        for msg in triggers:
            if msg.value is not None:   # a tombstone: an erased user's key
                by_pattern[json.loads(msg.value)["pattern"]] += 1
        applied = _applied_events(client, keys)
        if first_profile is None and applied:
            first_profile = time.monotonic() - start
            print(f"first profile in Redis {first_profile:.1f} s after the stream started", flush=True)
        dlq = _topic_end(offsets, topics["dead_letter"])
        produced = _topic_end(offsets, topics["events"])
        now = time.monotonic()
        done = applied + dlq
        rate = (done - prev_done) / (now - prev_t)
        prev_done, prev_t = done, now
        print(f"[{now - start:5.0f}s] produced {produced:,}  job {rate:,.0f} ev/s  in profiles {applied:,}  "
              f"dead-lettered {dlq:,}  triggers {dict(by_pattern) or 0}", flush=True)
        timeline.append((now - start, rate, _freshness(log_path), sum(by_pattern.values())))
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
    counters = _job_counters(log_path, sum(sent.values()))
    _print_summary(client, keys, sent, by_pattern, counters)
    png = ROOT / "reports" / f"demo-{log_path.stem.removeprefix('demo-job-')}.png"
    plot_run(timeline, first_profile, png)
    print(f"\nthe run as a plot: {png}")
    return 0


def _freshness(log_path: Path) -> float | None:
    """The embedded loader's freshness (seconds), from the Prometheus endpoint the job's log announced."""
    match = re.search(r"loader metrics \(Prometheus\): (http://\S+/metrics)", log_path.read_text(errors="replace"))
    if match is None:
        return None
    try:
        with urllib.request.urlopen(match.group(1), timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found = re.search(r"^persona_loader_freshness_seconds (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def plot_run(timeline: list[tuple[float, float, float | None, int]], first_profile: float | None, path: Path) -> None:
    """Events/s, freshness and triggers over the run, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    t = [x[0] for x in timeline]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [x[1] for x in timeline])
    axes[0].set_ylabel("events/s (job)")
    axes[1].plot([x[0] for x in timeline if x[2] is not None], [x[2] for x in timeline if x[2] is not None])
    axes[1].set_ylabel("freshness, s\n(change to Redis)")
    axes[2].plot(t, [x[3] for x in timeline])
    axes[2].set_ylabel("triggers (total)")
    axes[2].set_xlabel("seconds since the stream started")
    if first_profile is not None:
        for ax in axes:
            ax.axvline(first_profile, color="grey", linestyle=":", linewidth=1)
        axes[0].annotate(f"first profile {first_profile:.0f} s", (first_profile, 0), fontsize=8)
    fig.suptitle("persona demo: the run", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _job_counters(log_path: Path, sent: int) -> dict[str, Any] | None:
    """The job's own counters (``persona status``), from the REST address its log announced. The REST API serves
    metrics it fetched from the TaskManagers up to ``metrics.fetcher.update-interval`` ago, so this polls until
    the job has counted every record sent (valid or refused), for up to 40 s, and returns the last reading."""
    text = log_path.read_text(errors="replace")
    match = re.search(r"web UI and REST API: (http://\S+)", text)
    if match is None:
        return None
    deadline, last, error = time.monotonic() + 40, None, None
    while time.monotonic() < deadline:
        try:
            last = dict(flink_status(match.group(1))["counters"])
            refused = sum(v for k, v in last["dead_letters"].items() if k != "late_event")
            if last["valid"] + refused >= sent:
                return last
        except Exception as e:  # noqa: BLE001 - the summary goes on without them
            error = e
        time.sleep(1)   # the poll's pace
    if last is None:
        print(f"could not read the job's counters: {error}", file=sys.stderr)
    return last


def accounting(sent: int, counters: Mapping[str, Any], in_profiles: int) -> list[str]:
    """Lines that account for every record sent: each side is counted on its own (the producer, the job's
    validation, its per-user step, Redis), so the sums are checks, not definitions.

    >>> c = {"valid": 95, "dead_letters": {"bad_json": 3, "not_utf8": 2, "late_event": 4}, "late_events": 4,
    ...      "duplicates": 1, "erasures": 2, "consent_changes": 3}
    >>> print("\\n".join(accounting(100, c, 80)))
    sent 100 = valid 95 + refused at validation 5 (bad_json 3, not_utf8 2): adds up
    valid 95 = applied 90 + late 4 + duplicates 1
    applied 90 = in profiles 80 + forgotten 10 (2 erasure requests; withdrawn analytics consent clears a profile too)
    """
    refused = {k: v for k, v in counters["dead_letters"].items() if k != "late_event"}
    valid, late, dup = counters["valid"], counters["late_events"], counters["duplicates"]
    applied = valid - late - dup
    check = "adds up" if sent == valid + sum(refused.values()) else f"DOES NOT ADD UP (off by {sent - valid - sum(refused.values())})"
    return [f"sent {sent:,} = valid {valid:,} + refused at validation {sum(refused.values()):,} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())) + f"): {check}",
            f"valid {valid:,} = applied {applied:,} + late {late:,} + duplicates {dup:,}",
            f"applied {applied:,} = in profiles {in_profiles:,} + forgotten {applied - in_profiles:,} "
            f"({counters['erasures']:,} erasure requests; withdrawn analytics consent clears a profile too)"]


def _applied_events(client: redis.Redis, keys: RedisKeys) -> int:
    total = 0
    for key in client.scan_iter(match=keys.profile_pattern(), count=1000):
        total += int(client.hget(key, "events_total") or 0)
    return total


def _print_summary(client: redis.Redis, keys: RedisKeys, sent: Counter[str], by_pattern: Counter[str],
                   counters: Mapping[str, Any] | None) -> None:
    print(f"\nsent: {dict(sent)}")
    if counters is not None:
        for line in accounting(sum(sent.values()), counters, _applied_events(client, keys)):
            print(line)
    # Every pattern of the file, escalations included, with its count (0 too).
    for spec in load_patterns(resolve_path(load_job_settings().patterns_file)).patterns:
        print(f"  triggers {spec.name:<32} {by_pattern.get(spec.name, 0):>6}")
    if counters is not None:
        print("suppressed: " + (", ".join(f"{k} {v:,}" for k, v in sorted(counters["suppressed"].items())) or "none"))
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
    # The sample: the busiest active human (a bot, or a profile with only consent flags, says little).
    humans = [u for u in users if client.hget(keys.profile(u), "bot") != b"true"
              and client.hget(keys.profile(u), "events_total") is not None]
    if humans:
        busiest = max(humans, key=lambda u: int(client.hget(keys.profile(u), "events_total") or 0))
        profile = {k.decode(): v.decode() for k, v in client.hgetall(keys.profile(busiest)).items()}
        print(f"\nsample profile ({keys.profile(busiest)}):")
        for name in sorted(profile):
            print(f"  {name:<34} {profile[name]}")
        job = load_job_settings({"recommend.enabled": True})
        # Items reach Redis every recommend.publish_ms: a short demo may end before the first publication.
        deadline = time.monotonic() + job.recommend.publish_ms / 1000 + 5
        while not client.exists(keys.item_weights()) and time.monotonic() < deadline:
            time.sleep(0.5)
        rec = recommend(client, keys, busiest, recommend_rules(job), in_force=ListRulesInForce(check_patterns(job).lists))
        print(f"\ntheir personal list (persona recommend {busiest}, looked up in {rec.lookup_ms:.1f} ms):")
        for rank, (item, score) in enumerate(rec.items[:5], 1):
            print(f"  {rank}. {item:<24} {score:.4f}")
        if not rec.items:
            print("  (no item published yet)")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The mini-cluster's JVM is in the job's process group: stopped with it.
    if stop_process_group(proc):
        print("job stopped")


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics(names)
        admin.close()
    except Exception as e:  # noqa: BLE001 - best-effort cleanup must not hide the demo's own result
        print(f"could not delete demo topics: {e}", file=sys.stderr)
