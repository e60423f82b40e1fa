"""``persona bench --quick``: the per-event path's cost in about two minutes, as ratios to the baseline of the same run.

For every change to the per-event path (docs/performance.md): the logic-only loop's µs per event, and a drain
of the job and of the plain-Python baseline over the same pre-loaded events, with the CPU each spent. A machine
that is busier or quieter moves the job and the baseline alike, so the ratios compare across runs where the
absolute figures do not.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import (
    BENCH_SETTINGS,
    CpuMeter,
    _cleanup,
    _drain,
    _group_pids,
    _logic_only,
    _preload,
    _say,
)
from persona.generator.sink import history_override
from persona.settings import load_job_settings, load_stack_settings
from persona.stack.prereqs import check_all
from persona.stack.services import LocalServices


def _job_drain(bootstrap: str, redis_url: str, topics: dict[str, str], prefix: str, events: int,
               final: dict[str, int], tail: list[str], out: Path, extra: dict[str, str]) -> dict[str, Any]:
    overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
        f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={prefix}",
        "kafka.starting_offsets=earliest", f"kafka.group_id={prefix}job", *(f"{k}={v}" for k, v in BENCH_SETTINGS.items()),
        "flink.checkpoint_interval_ms=5000",
        history_override(), *(f"{k}={v}" for k, v in extra.items())]
    cmd = [sys.executable, "-m", "jobs.personalization", "--quiet", *(a for o in overrides for a in ("--set", o))]
    with harness._system_process("job", cmd, out / "bench-quick-job.log", redis_url, prefix) as (proc, client, keys):
        _say(f"job: draining {events:,} pre-loaded events")
        drain = _drain(client, keys, final, tail, events, time.time(),
                       CpuMeter(lambda: _group_pids(proc.pid), harness.SHARED_PIDS),
                       harness.Watched("job", proc.poll, out / "bench-quick-job.log"))
        drain["rss_mb"] = harness._rss_mb(_group_pids(proc.pid))   # every user's state held, at the drain's end
    return drain


def run_quick(events: int, out: Path, job_overrides: dict[str, str] | None = None) -> int:
    job_overrides = job_overrides or {}
    load_job_settings(job_overrides)   # a bad override fails here, before anything starts
    check_all()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    services = LocalServices.from_settings(load_stack_settings())
    started = (services.kafka.running() is None, services.redis.running() is None)
    for line in services.up():
        _say(line)
    harness.SHARED_PIDS[:] = [p for p in (services.kafka.running(), services.redis.running()) if p is not None]
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = harness.bench_topics(bootstrap, f"quick-{run_id}", ("job", "baseline"))
    try:
        _say(f"pre-loading {events:,} generated events (one copy per system)")
        final, values, tail = _preload(bootstrap, [topics[n]["events"] for n in topics], events,
                                       users=max(events // 30, 100))
        _say("warmed the broker's fetch path: {:,} records read in {:.1f} s".format(
            *harness.warm_broker(bootstrap, topics["baseline"]["events"])))
        logic = _logic_only(values)
        _say(f"logic only: {logic['us_per_event']} µs per event")
        job = _job_drain(bootstrap, redis_url, topics["job"], f"quick:{run_id}:job:", len(values), final, tail, out,
                         job_overrides)
        _say(f"job: drained at {job['events_per_s']:,} events/s, {job.get('cpu_s_per_10k')} CPU s per 10k events")
        t_start = time.time()
        with harness.baseline_process(bootstrap, redis_url, topics["baseline"], f"quick:{run_id}:base:") as (
                proc, client, keys):
            base = harness.baseline_drain(proc, client, keys, final, tail, len(values), t_start)
            base["rss_mb"] = harness._rss_mb([proc.pid or 0])
    finally:
        _cleanup(services, started, bootstrap, [t for n in topics for t in topics[n].values()])
    base_us = 1e6 / base["events_per_s"]
    result = {"run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": harness._machine(),
              "job_settings": job_overrides, "logic_only": logic, "job": {"drain": job}, "baseline": {"drain": base},
              "ratios": {"logic_us_to_baseline_us": round(logic["us_per_event"] / base_us, 3),
                         "job_drain_to_baseline_drain": round(job["events_per_s"] / base["events_per_s"], 3),
                         "job_cpu_to_baseline_cpu": round(job["cpu_s_per_10k"] / base["cpu_s_per_10k"], 3)
                         if job.get("cpu_s_per_10k") and base.get("cpu_s_per_10k") else None},
              "wall_s": round(time.time() - t0, 1)}
    harness.write_report(out, "bench-quick", result, quick_table(result), plot_quick)
    return 0


def quick_table(r: dict[str, Any]) -> str:
    j, b, q = r["job"]["drain"], r["baseline"]["drain"], r["ratios"]
    return "\n".join([
        f"persona bench --quick, {r['run_at']}, {r['machine']['cores']} cores",
        "",
        "| figure | job | baseline | job / baseline |",
        "|---|---|---|---|",
        f"| drain, events/s | {j['events_per_s']:,} | {b['events_per_s']:,} | {q['job_drain_to_baseline_drain']} |",
        f"| drain, CPU s per 10k events (shared broker + Redis) | {j.get('cpu_s_per_10k')} "
        f"({j.get('shared_cpu_s_per_10k')}) | {b.get('cpu_s_per_10k')} ({b.get('shared_cpu_s_per_10k')}) "
        f"| {q['job_cpu_to_baseline_cpu']} |",
        f"| RSS at the end of the drain, MB | {j.get('rss_mb')} | {b.get('rss_mb')} | "
        f"{round(j['rss_mb'] / b['rss_mb'], 2) if j.get('rss_mb') and b.get('rss_mb') else None} |",
        f"| logic only, µs per event (vs the baseline's µs per drained event) | {r['logic_only']['us_per_event']} | "
        f"{round(1e6 / b['events_per_s'])} | {q['logic_us_to_baseline_us']} |",
        "",
    ])


def plot_quick(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    q = r["ratios"]
    names = ["job drain / baseline", "job CPU / baseline", "logic µs / baseline µs"]
    values = [q["job_drain_to_baseline_drain"], q["job_cpu_to_baseline_cpu"] or 0, q["logic_us_to_baseline_us"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, values, color=["tab:blue", "tab:red", "tab:olive"])
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_title(f"persona bench --quick, {r['run_at']}: ratios to the baseline of the same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
