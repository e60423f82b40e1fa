"""``persona bench``: the full job and the plain-Python baseline, measured in the same run on the local stack.

Per system:
1. drain: N generated events pre-loaded in Kafka; events/s from the first profile in Redis to the moment
   the last users' profiles reach their final versions (start-up is reported separately);
2. freshness: live events at a fixed rate; for every 10th event, the time from produce to the moment
   Redis shows its ``profile_version``: p50/p95/p99 and whether the lag stayed bounded;
3. trigger delay: abandonment deadline (10 s after an add to cart, bench/patterns.yaml) to the trigger;
4. state: checkpoint bytes per user (job), Redis ``MEMORY USAGE`` per profile (every field), process RSS;
5. the ceiling of the per-event work itself: the same functions over the same events in one process,
   with no Kafka, Redis or Flink (no system built on this Python code can drain faster on this machine).

The baseline is a kafka-python consumer calling the same functions (persona/replay.py) and writing Redis
through the same pipelined writer, without fault tolerance.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, Producer

from bench.live_events import LiveTraffic
from operators.config_files import read_yaml
from operators.list_rules import ListRules
from operators.personalize import Step
from operators.runner import Record
from persona.generator.shoppers import generate
from persona.generator.sink import history_override
from persona.replay import InlineItemPublisher, Replay, write_step
from persona.rules import recommend_rules
from persona.serving import ListRulesInForce, recommend
from persona.settings import ROOT, load_generator_settings, load_job_settings, load_stack_settings, parse_overrides
from persona.stack.prereqs import check_all
from persona.stack.procs import StackError, wait_until
from persona.stack.services import LocalServices
from persona.stack.topics import ensure_topics, read_to_end
from state.keys import RedisKeys
from state.profile_store import ProfileWriter

SAMPLE_EVERY = 10
LIVE_USERS = 3_000
SHARED_PIDS: list[int] = []   # the broker's and Redis's, once the services are up (CPU they spend for everyone)
# The settings every system of the bench runs with: one overlay file (its comments say why).
BENCH_SETTINGS: dict[str, Any] = read_yaml(ROOT / "conf" / "bench.yaml")


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1), "n": len(xs)}


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (0 for a process gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


@dataclass
class CpuMeter:
    """CPU seconds of the system under test (its whole process group: a JVM with its Python, or one Python) and
    of the services all systems share (the broker and Redis), between two readings."""

    system: Callable[[], list[int]]
    shared: list[int]

    def read(self) -> tuple[float, float]:
        return _cpu_s(self.system()), _cpu_s(self.shared)


def _group_pids(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@dataclass
class Probe:
    """Polls Redis for sampled (user, version, produced_at) until each is visible; collects latencies in ms."""

    client: redis.Redis
    keys: RedisKeys
    pending: list[tuple[str, int, float]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, user: str, version: int, produced_at: float) -> None:
        with self.lock:
            self.pending.append((user, version, produced_at))

    def run(self) -> None:
        while not self.stop.is_set() or self.pending:
            with self.lock:
                batch, self.pending = self.pending, []
            if batch:
                pipe = self.client.pipeline(transaction=False)
                for user, _, _ in batch:
                    pipe.hget(self.keys.profile(user), "profile_version")
                now = time.time()
                left = []
                for (user, version, t0), got in zip(batch, pipe.execute(), strict=True):
                    if got is not None and int(got) >= version:
                        self.latencies.append((now - t0) * 1000)
                    elif now - t0 < 60:
                        left.append((user, version, t0))
                with self.lock:
                    self.pending = left + self.pending
            if self.stop.is_set() and not self.pending:
                break
            time.sleep(0.02)


def _fast_producer(bootstrap: str) -> Producer:
    # Idempotent: a batch retried after an error of a just-created topic (its leader not known yet) keeps its
    # place. Without it, librdkafka's five requests in flight wrote a retried batch after later ones, a user's
    # early events after their later ones, and the job and the peer rightly dead-lettered them as late.
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 512 * 1024, "acks": "all",
                     "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})


class Delivery:
    """A producer's delivery reports: the first error, so a lost record stops the bench instead of a system
    under test being blamed for a user it never saw."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or f"{msg.topic()}: {err}"

    def check(self, left: int) -> None:
        if left or self.failed:
            raise StackError(f"bench: pre-loading lost records ({self.failed:,} failed, {left:,} unsent): "
                             f"{self.first_error or 'the broker did not take them in time'}")


def warm_broker(bootstrap: str, topic: str, timeout_s: float = 120) -> tuple[int, float]:
    """Read ``topic`` once to its end, before the first drain: (records, seconds).

    The broker starts with the bench, and its JIT compiles its fetch path under the first system that reads
    from it: measured per thread, the broker's compiler threads used 7.2 s of CPU during the job's quick-bench
    drain and 0.6 s during the baseline's after it, on the same two cores. Read once here, the fetch path is
    compiled before any system is timed, whichever drains first. The topic is the last system's copy: every copy
    was just written, so none is read from a colder page cache than another."""
    from kafka import KafkaConsumer, TopicPartition

    t0 = time.monotonic()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        records = sum(1 for _ in read_to_end(consumer, parts, timeout_s))
    finally:
        consumer.close()
    return records, time.monotonic() - t0


def _preload(bootstrap: str, topic: str | list[str], n: int, users: int) -> tuple[dict[str, int], list[bytes], list[str]]:
    """Generated events (valid only) -> each topic: each user's final profile version, the records, the last users."""
    topics = [topic] if isinstance(topic, str) else topic
    gen = load_generator_settings({"users": users, "seed": 7, "malformed_fraction": 0.0, "late_fraction": 0.0,
                                   "out_of_order_fraction": 0.0, "span_hours": 72})
    producer = _fast_producer(bootstrap)
    delivery = Delivery()
    final: dict[str, int] = {}
    values: list[bytes] = []
    last: list[str] = []
    for rec in generate(gen, max_records=n):
        ev = rec.event
        assert ev is not None
        final[ev["user_id"]] = 0 if ev["event_type"] == "erasure_request" else final.get(ev["user_id"], 0) + 1
        for t in topics:
            producer.produce(t, key=rec.key, value=rec.value, timestamp=rec.event_time_ms, on_delivery=delivery)
        producer.poll(0)
        values.append(rec.value)
        last = [*last[-199:], ev["user_id"]]
    delivery.check(producer.flush(60))
    return final, values, sorted(set(last))


def _logic_only(values: list[bytes]) -> dict[str, Any]:
    """``Replay.process`` over the records in this process: parse, profile, models (training in line), patterns."""
    replay = Replay(load_job_settings(BENCH_SETTINGS))
    start = time.perf_counter()
    for value in values:
        replay.process(value)
    seconds = time.perf_counter() - start
    return {"events": len(values), "seconds": round(seconds, 1), "events_per_s": round(len(values) / seconds),
            "us_per_event": round(seconds / len(values) * 1e6)}


def _profile_versions(client: redis.Redis, keys: RedisKeys, users: list[str]) -> list[int | None]:
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.hget(keys.profile(u), "profile_version")
    return [int(v) if v is not None else None for v in pipe.execute()]


def _all_final(client: redis.Redis, keys: RedisKeys, final: dict[str, int], users: list[str]) -> bool:
    return all(v is not None and v >= final[u]
               for u, v in zip(users, _profile_versions(client, keys, users), strict=True))


@dataclass(frozen=True)
class Watched:
    """A system under test seen from the harness: whether it is still running, and where its log is.

    A system that dies mid-drain ends the wait at once, with its log's last lines, instead of at the deadline.
    """

    name: str
    exit_code: Callable[[], int | None]
    log: Path | None = None
    status: Path | None = None   # a file the system rewrites with its counts (the peer's heartbeat)

    def log_tail(self, lines: int = 25) -> str:
        said = ""
        if self.status is not None and self.status.exists():
            said = f"\nits last status ({self.status}): {self.status.read_text(errors='replace').strip()}"
        if self.log is None or not self.log.exists():
            return said
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return said + (f"\nthe last lines of {self.log}:\n" + "\n".join(text) if text else f" ({self.log} is empty)")

    def problem(self) -> str | None:
        code = self.exit_code()
        return None if code is None else f"bench: the {self.name} exited with {code} before it drained{self.log_tail()}"


def _wait_drained(client: redis.Redis, keys: RedisKeys, final: dict[str, int], tail: list[str],
                  deadline_s: float, at_first: Callable[[], None] = lambda: None,
                  watched: Watched | None = None) -> tuple[float, float]:
    """(time the first profile appeared, time every user reached its final version), wall clock seconds.

    Only ``tail`` (the users of the stream's last events) is polled often: polling everyone would take
    CPU from the system under test on a 2-core machine.
    """
    users = [u for u, v in final.items() if v > 0]
    tail = [u for u in tail if final[u] > 0]
    t_first = None
    end = time.time() + deadline_s
    while time.time() < end:
        if watched is not None and (problem := watched.problem()) is not None:
            raise StackError(problem)
        if t_first is None:
            if any(client.exists(keys.profile(u)) for u in users[:20]):
                t_first = time.time()
                at_first()
        elif _all_final(client, keys, final, tail):
            t_done = time.time()
            if _all_final(client, keys, final, users):
                return t_first, t_done
        time.sleep(0.1)
    raise StackError(f"bench: the events were not all in Redis after {deadline_s:.0f} s: "
                     f"{_short_of_final(client, keys, final, users)}"
                     + (f"; the {watched.name} still runs{watched.log_tail()}" if watched is not None else ""))


def _short_of_final(client: redis.Redis, keys: RedisKeys, final: dict[str, int], users: list[str]) -> str:
    """How far the slowest users are from their final versions, for the deadline's message."""
    short = [(u, v) for u, v in zip(users, _profile_versions(client, keys, users), strict=True)
             if v is None or v < final[u]]
    missing = sum(1 for _, v in short if v is None)
    shown = ", ".join(f"{u} at {v} of {final[u]}" for u, v in short[:5])
    return f"{len(short):,} of {len(users):,} users short of their final version ({missing:,} with no profile; {shown})"


def _drain(client: redis.Redis, keys: RedisKeys, final: dict[str, int], tail: list[str], events: int,
           t_start: float, cpu: CpuMeter | None = None, watched: Watched | None = None) -> dict[str, Any]:
    """Events/s from the first profile to the last users' final versions; with ``cpu``, the CPU seconds per
    10,000 events the system and the shared services used over the same span (docs/performance.md)."""
    first: list[tuple[float, float]] = []
    t_first, t_done = _wait_drained(client, keys, final, tail, deadline_s=400,
                                    at_first=lambda: first.append(cpu.read()) if cpu is not None else None,
                                    watched=watched)
    out: dict[str, Any] = {"events": events, "startup_s": round(t_first - t_start, 1),
                           "seconds": round(t_done - t_first, 1), "events_per_s": round(events / (t_done - t_first))}
    if cpu is not None and first:
        done = cpu.read()
        # Over the same span as the throughput (first profile to done), which counts every event in it.
        out["cpu_s_per_10k"] = round((done[0] - first[0][0]) / events * 10_000, 2)
        out["shared_cpu_s_per_10k"] = round((done[1] - first[0][1]) / events * 10_000, 2)
    return out


def _live(bootstrap: str, topic: str, rate: float, seconds: float, prefix: str, probe: Probe) -> int:
    traffic = LiveTraffic(prefix, LIVE_USERS, seed=11)
    producer = _fast_producer(bootstrap)
    start = time.time()
    sent = 0
    next_report = start + 5
    while True:
        now = time.time()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        while sent < due:
            t_ms = int(time.time() * 1000)
            user, key, value, version = traffic.next(t_ms)
            producer.produce(topic, key=key, value=value, timestamp=t_ms)
            if sent % SAMPLE_EVERY == 0:
                producer.poll(0)
                probe.add(user, version, t_ms / 1000)
            sent += 1
        if now >= next_report:
            _say(f"  live: {sent:,} events at {sent / (now - start):,.0f}/s, {len(probe.latencies):,} freshness samples")
            next_report += 5
        time.sleep(0.002)
    producer.flush(30)
    return sent


class TriggerClock:
    """Reads the triggers topic; delay = arrival - the trigger's event time (its deadline)."""

    def __init__(self, bootstrap: str, topic: str, group: str, user_prefix: str) -> None:
        self.delays: list[float] = []
        self.samples: list[dict[str, Any]] = []
        self._prefix = user_prefix
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "latest"})
        self._consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is not None and msg.error() is None and msg.value() is not None:   # None: an erasure's tombstone
                doc = json.loads(msg.value())
                if doc["user_id"].startswith(self._prefix):   # not the replayed history's triggers
                    now = time.time() * 1000
                    self.delays.append(now - doc["event_time"])
                    if len(self.samples) < 20:
                        self.samples.append({"received": round(now), **{k: doc[k] for k in ("event_time", "emitted_at",
                                                                                             "trigger_id", "user_id")}})

    def close(self) -> list[float]:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
        return self.delays


def _state_sizes(client: redis.Redis, keys: RedisKeys, users: list[str], checkpoint_dir: Path | None) -> dict[str, Any]:
    sample = users[:300]
    # SAMPLES 0: every field counted. The default estimates a hash from 5 sampled fields; with a few large
    # JSON fields among many small ones it undercounted by 9-26% here, varying with the server's hash seed.
    mem = [client.memory_usage(keys.profile(u), samples=0) or 0 for u in sample]
    out: dict[str, Any] = {"redis_bytes_per_profile": round(statistics.mean(mem)) if mem else None,
                           "recommend_lookup_ms": _lookup_ms(client, keys, sample)}
    if checkpoint_dir is not None:
        # Completed ones only (their _metadata is written last): the newest directory may be one being written,
        # which once measured 286 B per user against 1,442.
        chks = sorted((p for p in checkpoint_dir.glob("*/chk-*") if (p / "_metadata").is_file()),
                      key=lambda p: p.stat().st_mtime)
        if chks:
            size = sum(f.stat().st_size for f in chks[-1].rglob("*") if f.is_file())
            shared = sum(f.stat().st_size for f in checkpoint_dir.glob("*/shared/**/*") if f.is_file())
            out["checkpoint_bytes"] = size + shared
    return out


def _lookup_ms(client: redis.Redis, keys: RedisKeys, users: list[str]) -> dict[str, float] | None:
    """The front-end's lookup of a personal list (``persona.serving.recommend``: the rule set in force, the profile,
    the list's inputs in two pipelines, and the scoring), timed per user from this process."""
    rules = recommend_rules(load_job_settings(BENCH_SETTINGS))
    in_force = ListRulesInForce(ListRules())
    times = [recommend(client, keys, user, rules, in_force=in_force).lookup_ms for user in users]
    if not times:
        return None
    times.sort()
    return {"p50": round(times[len(times) // 2], 2), "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
            "n": len(times)}


def _run_job(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, events: int, final: dict[str, int],
             tail: list[str], plan: LivePlan, out: Path, extra: dict[str, str]) -> dict[str, Any]:
    ckpt = out / "bench-checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={prefix}",
        "kafka.starting_offsets=earliest", f"kafka.group_id={prefix}job", *(f"{k}={v}" for k, v in BENCH_SETTINGS.items()),
        f"flink.checkpoint_dir={ckpt.resolve().as_uri()}", "flink.checkpoint_interval_ms=5000",
        # The drained events are generated history from conf/generator.yaml's start (the live phases are now).
        history_override(),
        *(f"{k}={v}" for k, v in extra.items())]
    # --quiet: no live line (its REST polls would be measured with the job).
    cmd = [sys.executable, "-m", "jobs.personalization", "--quiet", *(a for o in overrides for a in ("--set", o))]
    with _system_process("job", cmd, out / "bench-job.log", redis_url, prefix) as (proc, client, keys):
        drain, live = _drain_and_live("job", proc, client, keys, bootstrap, topics, events, final, tail, plan,
                                      out / "bench-job.log")
        wait_until(lambda: any(ckpt.glob("*/chk-*")), 30, "a completed checkpoint")
        time.sleep(6)   # one more checkpoint interval, so the last one holds the live users too
        sizes = _state_sizes(client, keys, list(final), ckpt)
        users = len([u for u, v in final.items() if v > 0]) + live.pop("live_users")
        if "checkpoint_bytes" in sizes:
            sizes["checkpoint_bytes_per_user"] = round(sizes["checkpoint_bytes"] / users)
    loader = _loader_rebuild(overrides, prefix)
    return {"drain": drain, **live, "state": sizes, "loader": loader}


def _loader_rebuild(job_overrides: list[str], prefix: str) -> dict[str, Any]:
    """The profile loader's own throughput: the job's whole changelog (drain and live phases) rebuilt into an
    empty key prefix, in this process, as `persona loader --rebuild` does."""
    from persona.loader import ProfileLoader
    settings = load_job_settings({**parse_overrides(job_overrides), "redis.key_prefix": f"{prefix}rebuild:"})
    _say("job: the profile loader rebuilds Redis from the job's changelog")
    start = time.perf_counter()
    stats = ProfileLoader(settings, rebuild=True).run(until_end=True)
    seconds = time.perf_counter() - start
    out = {"records": stats.records, "profiles_written": stats.written, "seconds": round(seconds, 2),
           "records_per_s": round(stats.records / seconds) if seconds > 0 else None}
    _say(f"job: loader rebuild {stats.records:,} changelog records in {seconds:.1f} s "
         f"({out['records_per_s']:,} records/s, {stats.written:,} profiles written)")
    return out


@contextlib.contextmanager
def _system_process(name: str, cmd: list[str], log_path: Path, redis_url: str, prefix: str
                    ) -> Iterator[tuple[subprocess.Popen[bytes], redis.Redis, RedisKeys]]:
    """A system under test in its own process group, stopped (with its children) however the block ends."""
    log = open(log_path, "wb")
    client = redis.Redis.from_url(redis_url)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, client, RedisKeys(prefix)
    finally:
        _stop_group(proc)
        log.close()
        client.close()


def _drain_and_live(name: str, proc: subprocess.Popen[bytes], client: redis.Redis, keys: RedisKeys, bootstrap: str,
                    topics: dict[str, str], events: int, final: dict[str, int], tail: list[str], plan: LivePlan,
                    log_path: Path, status: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    t_start = time.time()
    _say(f"{name}: draining {events:,} pre-loaded events")
    drain = _drain(client, keys, final, tail, events, t_start, CpuMeter(lambda: _group_pids(proc.pid), SHARED_PIDS),
                   Watched(name, proc.poll, log_path, status))
    _say(f"{name}: start-up {drain['startup_s']} s, drained at {drain['events_per_s']:,} events/s, "
         f"{drain.get('cpu_s_per_10k')} CPU s per 10k events")
    live = _measure_live(bootstrap, topics, client, keys, plan, keys.prefix + "live-",
                         rss=lambda: _rss_mb(_group_pids(proc.pid)), name=name)
    if proc.poll() is not None:
        raise StackError(f"bench: the {name} exited with {proc.returncode}; see {log_path}")
    return drain, live


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the job and its mini-cluster JVM (one process group)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class LivePlan:
    """The live phases every system goes through after its drain (docs/performance.md)."""

    rate: float                  # the freshness run, with trigger delays and RSS
    seconds: float
    high_rate: float             # freshness at a high rate (5,000 events/s by default)
    high_seconds: float
    ladder: tuple[float, ...]    # rates tried in turn for the sustained rate; the first unbounded one ends it
    step_seconds: float


def _bounded(lat: list[float]) -> bool:
    """Lag stays bounded: the last quarter's median is under a second and not far above the first quarter's."""
    if not lat:
        return False
    q = max(len(lat) // 4, 1)
    last = statistics.median(lat[-q:])
    return last < 1000 and last < max(4 * statistics.median(lat[:q]), 250)


def _freshness(bootstrap: str, topic: str, client: redis.Redis, keys: RedisKeys, rate: float, seconds: float,
               prefix: str, settle_s: float = 0.0) -> dict[str, Any]:
    """Live traffic at ``rate`` for ``seconds``; freshness of every 10th event. ``settle_s``: wait after sending."""
    probe = Probe(client, keys)
    poller = threading.Thread(target=probe.run, daemon=True)
    poller.start()
    sent = _live(bootstrap, topic, rate, seconds, prefix, probe)
    if settle_s:
        time.sleep(settle_s)
    probe.stop.set()
    poller.join(70)
    lat = probe.latencies
    return {"rate": rate, "seconds": seconds, "sent": sent, "freshness_ms": _percentiles(lat),
            "lost_samples": sent // SAMPLE_EVERY - len(lat), "lag_bounded": _bounded(lat)}


def _measure_live(bootstrap: str, topics: dict[str, str], client: redis.Redis, keys: RedisKeys, plan: LivePlan,
                  live_prefix: str, rss: Callable[[], float], name: str) -> dict[str, Any]:
    clock = TriggerClock(bootstrap, topics["triggers"], f"bench-clock-{time.time_ns()}", live_prefix)
    _say(f"{name}: live traffic at {plan.rate:,.0f} events/s for {plan.seconds:.0f} s")
    # The last adds' abandonment deadlines (10 s) pass while the probe catches up.
    live = _freshness(bootstrap, topics["events"], client, keys, plan.rate, plan.seconds, live_prefix, settle_s=12.0)
    memory = rss()
    delays = clock.close()
    out: dict[str, Any] = {"live": live, "trigger_delay_ms": _percentiles(delays), "trigger_samples": clock.samples,
                           "rss_mb": memory}
    if plan.high_seconds:
        _say(f"{name}: live traffic at {plan.high_rate:,.0f} events/s for {plan.high_seconds:.0f} s")
        high = _freshness(bootstrap, topics["events"], client, keys, plan.high_rate, plan.high_seconds,
                          live_prefix.replace("live-", "high-"))
        out["live_high"] = high
        out["rss_mb_high"] = rss()
        _say(f"{name}: at {plan.high_rate:,.0f}/s freshness p99 {high['freshness_ms']['p99']} ms, "
             f"lag bounded: {high['lag_bounded']}")
    steps: list[dict[str, Any]] = []
    for rate in plan.ladder:
        step = _freshness(bootstrap, topics["events"], client, keys, rate, plan.step_seconds,
                          live_prefix.replace("live-", f"lad{int(rate)}-"))
        steps.append({k: step[k] for k in ("rate", "sent", "freshness_ms", "lag_bounded")})
        _say(f"{name}: sustained-rate ladder {rate:,.0f}/s: p50 {step['freshness_ms']['p50']} ms, "
             f"bounded: {step['lag_bounded']}")
        if not step["lag_bounded"]:
            break
    bounded_rates = [s["rate"] for s in steps if s["lag_bounded"]]
    out["sustained"] = {"events_per_s": max(bounded_rates) if bounded_rates else 0, "steps": steps,
                        "ladder_exhausted": bool(steps) and all(s["lag_bounded"] for s in steps)}
    # Each phase has users of its own (a prefix per phase): all of them are in the system's state.
    phases = [live, out.get("live_high", {}), *steps]
    out["live_users"] = sum(min(LIVE_USERS, phase.get("sent", 0)) for phase in phases)
    return out


class Baseline:
    """kafka-python consumer -> the same per-event functions -> pipelined Redis writes. No fault tolerance."""

    def __init__(self, bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        settings = load_job_settings(BENCH_SETTINGS)
        self.keys = RedisKeys(prefix)
        r = settings.redis
        self.triggers = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.trigger_topic = topics["triggers"]
        self.items = InlineItemPublisher(settings, redis.Redis.from_url(redis_url), self.keys)
        self.replay = Replay(settings, on_trigger=lambda t: self.triggers.send(
            self.trigger_topic, key=t.user_id.encode(), value=t.to_json().encode()), on_step=self._write,
            on_items=self.items.add)
        self.now = int(time.time() * 1000)
        self.writer = ProfileWriter.from_url(redis_url, self.keys, r.profile_ttl_s, r.flush_interval_ms,
                                             r.flush_max_batch, self.replay.core.memberships_known)
        self.consumer = KafkaConsumer(topics["events"], bootstrap_servers=bootstrap, group_id=f"{prefix}baseline",
                                      auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000)
        self.stop: Any = threading.Event()

    def _write(self, user: str, step: Step) -> None:
        write_step(self.writer, self.replay.core, user, step, self.now)

    def run(self) -> None:
        while not self.stop.is_set():
            batches = self.consumer.poll(timeout_ms=50)
            self.now = int(time.time() * 1000)
            for records in batches.values():
                self.replay.process_batch([Record(None, rec.value or b"", rec.topic, rec.partition, rec.offset)
                                           for rec in records], self.now)
            # Silent partitions: the wall clock stands in for an idle source's watermark.
            if not batches:
                self.replay.idle(int(time.time() * 1000))
            if self.writer.due(int(time.time() * 1000)):
                self.writer.flush()
            self.items.publish_due(time.time())
        self.writer.flush()
        self.items.publish_due(time.time(), force=True)
        self.consumer.close()
        self.triggers.close()


@contextlib.contextmanager
def baseline_process(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str
                     ) -> Iterator[tuple[Any, redis.Redis, RedisKeys]]:
    """The baseline in its own process, like the job (in the harness's process it would share a GIL with the
    probes); stopped however the block ends. Yields (process, Redis client, keys)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_baseline_main, args=(bootstrap, redis_url, topics, prefix, stop), daemon=True)
    client = redis.Redis.from_url(redis_url)
    proc.start()
    try:
        yield proc, client, RedisKeys(prefix)
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        client.close()


def baseline_drain(proc: Any, client: redis.Redis, keys: RedisKeys, final: dict[str, int], tail: list[str],
                   events: int, t_start: float) -> dict[str, Any]:
    _say(f"baseline: draining {events:,} pre-loaded events")
    drain = _drain(client, keys, final, tail, events, t_start, CpuMeter(lambda: [proc.pid or 0], SHARED_PIDS),
                   Watched("baseline", lambda: proc.exitcode))
    _say(f"baseline: drained at {drain['events_per_s']:,} events/s, {drain.get('cpu_s_per_10k')} CPU s per 10k events")
    return drain


def _run_baseline(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, events: int,
                  final: dict[str, int], tail: list[str], plan: LivePlan) -> dict[str, Any]:
    t_start = time.time()
    with baseline_process(bootstrap, redis_url, topics, prefix) as (proc, client, keys):
        drain = baseline_drain(proc, client, keys, final, tail, events, t_start)
        live = _measure_live(bootstrap, topics, client, keys, plan, prefix + "live-",
                             rss=lambda: _rss_mb([proc.pid or 0]), name="baseline")
        live.pop("live_users")
        return {"drain": drain, **live, "state": _state_sizes(client, keys, list(final), None)}


def _run_peer(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, events: int,
               final: dict[str, int], tail: list[str], plan: LivePlan, out: Path) -> dict[str, Any]:
    """The peer engine (Bytewax, bench/peer_bytewax.py) in its own process, measured like the others."""
    with peer_process(bootstrap, redis_url, topics, prefix, out) as (proc, client, keys):
        drain, live = _drain_and_live("peer (Bytewax)", proc, client, keys, bootstrap, topics, events, final, tail,
                                      plan, out / "bench-peer.log", out / "bench-peer.heartbeat")
        live.pop("live_users")
        return {"drain": drain, **live, "state": _state_sizes(client, keys, list(final), None)}


def peer_process(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, out: Path
                 ) -> contextlib.AbstractContextManager[tuple[subprocess.Popen[bytes], redis.Redis, RedisKeys]]:
    """The peer engine (Bytewax, bench/peer_bytewax.py) in its own process group, stopped however the block ends."""
    try:
        import bytewax  # noqa: F401 - only to say how to get it
    except ImportError:
        raise StackError("bench: the peer engine needs the bench extra: pip install -e '.[bench]' "
                         "(./dev installs it)") from None
    cmd = [sys.executable, "-m", "bench.peer_bytewax", "--bootstrap", bootstrap, "--redis-url", redis_url,
           "--events-topic", topics["events"], "--triggers-topic", topics["triggers"], "--prefix", prefix,
           "--heartbeat", str(out / "bench-peer.heartbeat")]
    return _system_process("peer", cmd, out / "bench-peer.log", redis_url, prefix)


def _baseline_main(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, stop: Any) -> None:
    base = Baseline(bootstrap, redis_url, topics, prefix)
    base.stop = stop
    base.run()


def _versions(redis_url: str) -> dict[str, str]:
    from importlib.metadata import version
    client = redis.Redis.from_url(redis_url)
    server = client.info("server")["redis_version"]
    client.close()
    return {"python": sys.version.split()[0], "apache-flink": version("apache-flink"), "river": version("river"),
            "kafka": "4.2.0 (KRaft)", "redis-server": server, "kafka-python": version("kafka-python"),
            "confluent-kafka (load producer)": version("confluent-kafka")}


def _machine() -> dict[str, Any]:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "ram_gib": round(mem_kb / 1024 / 1024, 1)}


SYSTEMS = ("job", "peer", "baseline")
NAMES = {"job": "Flink job", "peer": "peer: Bytewax", "baseline": "plain-Python baseline"}


def bench_topics(bootstrap: str, stem: str, systems: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Each system's topics, created: each reads its own copy of the events and gets its own live traffic, so
    none waits for another's. The job creates its changelog (compacted) itself."""
    topics = {name: {"events": f"{stem}.{name}.events", "triggers": f"{stem}.{name}.triggers"} for name in systems}
    if "job" in topics:
        topics["job"] |= {"dead_letter": f"{stem}.job.dlq", "models": f"{stem}.job.models",
                          "profiles": f"{stem}.job.profiles"}
        ensure_topics(bootstrap, [topics["job"]["models"]], 1)
    ensure_topics(bootstrap, [t for name in systems for k, t in topics[name].items() if k not in ("models", "profiles")], 2)
    return topics


def run_bench(events: int, plan: LivePlan, out: Path, job_overrides: dict[str, str] | None = None) -> int:
    job_overrides = job_overrides or {}
    load_job_settings(job_overrides)   # a bad override fails here, before anything starts
    check_all()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stack = load_stack_settings()
    services = LocalServices.from_settings(stack)
    started = (services.kafka.running() is None, services.redis.running() is None)
    for line in services.up():
        _say(line)
    SHARED_PIDS[:] = [p for p in (services.kafka.running(), services.redis.running()) if p is not None]
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = bench_topics(bootstrap, f"bench-{run_id}", SYSTEMS)
    try:
        _say(f"pre-loading {events:,} generated events (one copy per system)")
        final, values, tail = _preload(bootstrap, [topics[n]["events"] for n in SYSTEMS], events,
                                       users=max(events // 30, 100))
        count = len(values)
        _say("warmed the broker's fetch path: {:,} records read in {:.1f} s".format(
            *warm_broker(bootstrap, topics[SYSTEMS[-1]]["events"])))
        _say("logic only: the per-event core over the same events in this process")
        logic = _logic_only(values)
        _say(f"logic only: {logic['events_per_s']:,} events/s ({logic['us_per_event']} µs per event)")
        job = _run_job(bootstrap, redis_url, topics["job"], f"bench:{run_id}:job:", count, final, tail, plan, out,
                       job_overrides)
        peer = _run_peer(bootstrap, redis_url, topics["peer"], f"bench:{run_id}:peer:", count, final, tail, plan, out)
        baseline = _run_baseline(bootstrap, redis_url, topics["baseline"], f"bench:{run_id}:base:", count, final, tail,
                                 plan)
        command = (f"persona bench --events {events} --rate {plan.rate:g} --seconds {plan.seconds:g} "
                   f"--rate-high {plan.high_rate:g} --seconds-high {plan.high_seconds:g} "
                   f"--ladder {','.join(f'{r:g}' for r in plan.ladder)} --step-seconds {plan.step_seconds:g}"
                   + "".join(f" --set {k}={v}" for k, v in job_overrides.items()))
        result = {"run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": _machine(),
                  "versions": _versions(redis_url), "command": command, "job_settings": job_overrides,
                  "job": job, "peer": peer, "baseline": baseline, "logic_only": logic,
                  "ratio_job_to_baseline_drain": round(job["drain"]["events_per_s"] / baseline["drain"]["events_per_s"], 3),
                  "ratio_job_to_peer_drain": round(job["drain"]["events_per_s"] / peer["drain"]["events_per_s"], 3),
                  "wall_s": round(time.time() - t0, 1)}
        js = load_job_settings(job_overrides)
        result["job_mode"] = f"{js.flink.execution_mode} mode, parallelism {js.flink.parallelism}"
    finally:
        _cleanup(services, started, bootstrap, [t for name in SYSTEMS for t in topics[name].values()])
    write_report(out, "bench", result, markdown_table(result), plot)
    return 0


def write_report(out: Path, stem: str, result: dict[str, Any], table: str,
                 plot_to: Callable[[dict[str, Any], Path], None]) -> None:
    """``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` in ``out``; the table also goes to stdout."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    plot_to(result, out / f"{stem}.png")
    print(table)
    _say(f"wrote {out / stem}.json, .md and .png" + (f" in {result['wall_s']:.0f} s" if "wall_s" in result else ""))


def _cleanup(services: LocalServices, started: tuple[bool, bool], bootstrap: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient
    try:
        if names:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.delete_topics(names)
            admin.close()
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the result
        _say(f"could not delete the bench topics: {e}")
    if started[0]:
        _say(services.kafka.down())
    if started[1]:
        _say(services.redis.down())


def markdown_table(r: dict[str, Any]) -> str:
    """The Performance table (README, docs/performance.md): one column per system, the JSON field of each row in the last column."""
    systems = [n for n in SYSTEMS if n in r]

    def row(name: str, get: Callable[[dict[str, Any]], Any], field_name: str, unit: str = "") -> str:
        cells = []
        for n in systems:
            try:
                cells.append(f"{get(r[n])}{unit}")
            except (KeyError, TypeError):
                cells.append("n/a")
        return f"| {name} | " + " | ".join(cells) + f" | `{field_name}` |"

    def pcts(d: dict[str, Any]) -> str:
        return " / ".join(str(d[p]) for p in ("p50", "p95", "p99"))

    j = r["job"]
    high = j.get("live_high", {}).get("rate", 0)
    lines = [
        f"Machine: {r['machine']['cores']} cores, {r['machine']['ram_gib']} GiB RAM. Versions: "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + f". Run {r['run_at']}, `{r['command']}`.",
        "",
        f"| metric | {NAMES['job']} ({r['job_mode']}, with models) | "
        + " | ".join(NAMES[n] for n in systems[1:]) + " | JSON field (per system) |",
        "|---|" + "---|" * len(systems) + "---|",
        row("drain: events/s", lambda x: f"{x['drain']['events_per_s']:,}", "drain.events_per_s"),
        row("drain: events, seconds", lambda x: f"{x['drain']['events']:,} in {x['drain']['seconds']} s", "drain.seconds"),
        row("start-up to first profile", lambda x: x["drain"]["startup_s"], "drain.startup_s", " s"),
        row("drain: CPU s per 10k events, system (shared broker + Redis)",
            lambda x: f"{x['drain'].get('cpu_s_per_10k', 'n/a')} ({x['drain'].get('shared_cpu_s_per_10k', 'n/a')})",
            "drain.cpu_s_per_10k"),
        row("sustained rate (lag bounded)", lambda x: f"{x['sustained']['events_per_s']:,.0f}"
            + ("+" if x["sustained"]["ladder_exhausted"] else ""), "sustained.events_per_s", " events/s"),
        row(f"freshness at {j['live']['rate']:,.0f} events/s: p50 / p95 / p99",
            lambda x: pcts(x["live"]["freshness_ms"]), "live.freshness_ms", " ms"),
        row(f"freshness at {high:,.0f} events/s: p50 / p95 / p99", lambda x: pcts(x["live_high"]["freshness_ms"]),
            "live_high.freshness_ms", " ms"),
        row(f"lag bounded at {high:,.0f} events/s", lambda x: "yes" if x["live_high"]["lag_bounded"] else "no",
            "live_high.lag_bounded"),
        row("trigger delay after the deadline: p50 / p99",
            lambda x: " / ".join(str(x["trigger_delay_ms"][p]) for p in ("p50", "p99")) + f" ms (n={x['trigger_delay_ms']['n']})",
            "trigger_delay_ms"),
        row("profile loader: changelog records/s (rebuild)",
            lambda x: f"{x['loader']['records_per_s']:,} ({x['loader']['records']:,} records)", "loader.records_per_s"),
        row("checkpoint bytes per user", lambda x: x["state"].get("checkpoint_bytes_per_user", "n/a (no checkpoints)"),
            "state.checkpoint_bytes_per_user"),
        row("Redis MEMORY USAGE per profile (SAMPLES 0)", lambda x: x["state"]["redis_bytes_per_profile"],
            "state.redis_bytes_per_profile", " B"),
        row("personal list lookup from Redis (`persona recommend`): p50 / p99",
            lambda x: (lambda t: f"{t['p50']} / {t['p99']} ms (n={t['n']})" if t else "n/a")(x["state"].get("recommend_lookup_ms")),
            "state.recommend_lookup_ms"),
        row(f"RSS at {j['live']['rate']:,.0f} / {high:,.0f} events/s", lambda x: f"{x['rss_mb']} / {x['rss_mb_high']}",
            "rss_mb, rss_mb_high", " MB"),
        "",
        f"Job / peer drain throughput: {r['ratio_job_to_peer_drain']:.2f}; job / baseline: "
        f"{r['ratio_job_to_baseline_drain']:.2f}. The job checkpoints every 5 s; the peer and the baseline keep "
        "their state in memory only.",
        "",
        f"The per-event core alone (`persona/replay.py` over the same events in one process: parse, profile, models "
        f"with training, patterns; no Kafka, Redis or Flink; `logic_only`): {r['logic_only']['events_per_s']:,} "
        f"events/s, {r['logic_only']['us_per_event']} µs per event.",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    systems = [n for n in SYSTEMS if n in r]
    colors = {"job": "tab:blue", "peer": "tab:orange", "baseline": "tab:gray"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    a1, a2, a3, a4 = axes
    a1.bar([NAMES[n] for n in systems] + ["core alone"],
           [r[n]["drain"]["events_per_s"] for n in systems] + [r["logic_only"]["events_per_s"]],
           color=[colors[n] for n in systems] + ["tab:olive"])
    a1.set_title("drain throughput (events/s)")
    a1.tick_params(axis="x", labelrotation=15)
    a2.bar([NAMES[n] for n in systems], [r[n]["sustained"]["events_per_s"] for n in systems],
           color=[colors[n] for n in systems])
    a2.set_title("sustained rate, lag bounded (events/s)")
    a2.tick_params(axis="x", labelrotation=15)
    ps = ("p50", "p95", "p99")
    width = 0.8 / len(systems)
    for ax, key, title in ((a3, "live", "freshness at {:,.0f} events/s (ms)"),
                           (a4, "live_high", "freshness at {:,.0f} events/s (ms)")):
        for i, n in enumerate(systems):
            ax.bar([x + (i - (len(systems) - 1) / 2) * width for x in range(3)],
                   [r[n][key]["freshness_ms"][p] or 0 for p in ps], width, label=NAMES[n], color=colors[n])
        ax.set_xticks(range(3), ps)
        ax.set_title(title.format(r["job"][key]["rate"]))
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"persona bench, {r['machine']['cores']} cores, {r['run_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
