"""``persona bench-layouts``: the job's drain throughput on the local standalone cluster, per TaskManager layout.

PyFlink's thread mode runs every Python operator of a TaskManager in that process's one interpreter (one
GIL). This measures what adds throughput: slots or TaskManager processes. Per layout (TaskManagers x
slots, parallelism = all slots) the bounded job drains a small and a large pre-loaded topic through
``flink run``, after a warm-up job; the marginal rate, (large - small) events over the difference in wall
time, cancels the client's start-up, the submission and the job's start-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

# The CLI imports this module to parse its arguments: the stack and the harness are imported when it runs.

Layout = tuple[int, int]   # (TaskManagers, slots each)


def parse_layout(text: str) -> Layout:
    """``"2x1"`` -> (2, 1): two TaskManagers with one slot each.

    >>> parse_layout("2x1")
    (2, 1)
    """
    tms, sep, slots = text.partition("x")
    if not (sep and tms.isdigit() and slots.isdigit() and int(tms) >= 1 and int(slots) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a layout like 2x1 (TaskManagers x slots, both >= 1)")
    return int(tms), int(slots)


def _drain_seconds(cluster: Any, bootstrap: str, redis_url: str, events: int, parallelism: int, tag: str) -> float:
    from kafka.admin import KafkaAdminClient

    from bench.harness import _preload
    from persona.generator.sink import history_override
    from persona.settings import load_job_settings
    from persona.stack.topics import ensure_topics
    topics = {"events": f"{tag}.events", "dead_letter": f"{tag}.dlq", "triggers": f"{tag}.triggers",
              "models": f"{tag}.models", "profiles": f"{tag}.profiles"}
    ensure_topics(bootstrap, [topics["events"], topics["dead_letter"], topics["triggers"]], 2)
    ensure_topics(bootstrap, [topics["models"]], 1)
    try:
        _preload(bootstrap, topics["events"], events, users=max(events // 30, 100))
        overrides = [f"kafka.topics.{k}={v}" for k, v in topics.items()] + [
            f"kafka.bootstrap_servers={bootstrap}", f"redis.url={redis_url}", f"redis.key_prefix={tag}:",
            "kafka.starting_offsets=earliest", f"kafka.group_id={tag}", f"flink.parallelism={parallelism}",
            history_override()]
        jars = load_job_settings({}).flink.connector_jars()
        start = time.time()
        cluster.submit("jobs.personalization", ["--bounded", *(a for o in overrides for a in ("--set", o))], jars,
                       detach=False)
        return time.time() - start
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics(list(topics.values()))
        admin.close()


def run_layouts(layouts: list[Layout], small: int, large: int, out: Path) -> int:
    from bench.harness import _cleanup, _machine, _say, write_report
    from persona.settings import load_stack_settings
    from persona.stack.prereqs import check_all
    from persona.stack.services import LocalServices

    if not 0 < small < large:
        raise ValueError("the small run must have fewer events than the large one")
    check_all()
    out.mkdir(parents=True, exist_ok=True)
    stack = load_stack_settings()
    services = LocalServices.from_settings(stack)
    started = (services.kafka.running() is None, services.redis.running() is None)
    for line in services.up():
        _say(line)
    try:
        rows = _measure(layouts, small, large, stack, services)
    finally:
        _cleanup(services, started, services.kafka.bootstrap, [])
    result = {"run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": _machine(),
              "command": f"persona bench-layouts --layouts {' '.join(f'{t}x{s}' for t, s in layouts)} "
                         f"--events {small} {large}", "layouts": rows}
    write_report(out, "layouts", result, markdown_table(result), plot)
    return 0


def _measure(layouts: list[Layout], small: int, large: int, stack: Any, services: Any) -> list[dict[str, Any]]:
    from bench.harness import _say
    from persona.stack.flink_cluster import FlinkCluster
    from persona.stack.procs import StackError

    run_id = time.strftime("%Y%m%d%H%M%S")
    rows: list[dict[str, Any]] = []
    for tms, slots in layouts:
        settings = stack.flink_cluster.model_copy(update={"taskmanagers": tms, "taskmanager_slots": slots})
        cluster = FlinkCluster(stack.run_path / "flink-layouts", settings)
        if cluster.running():   # another layout than the one to measure, and not ours to stop
            raise StackError(f"a Flink cluster already answers at {cluster.rest_url}; stop it first "
                             "(`persona cluster down`)")
        _say(cluster.up())
        try:
            # The first job on fresh TaskManagers also pays for starting their Python: not measured.
            _say(f"{tms} TaskManager(s) x {slots} slot(s): warm-up job")
            _drain_seconds(cluster, services.kafka.bootstrap, services.redis.url, 200, tms * slots,
                           f"layouts-{run_id}-{tms}x{slots}-warm-up")
            seconds = {}
            for n in (small, large):
                _say(f"{tms} TaskManager(s) x {slots} slot(s): draining {n:,} events at parallelism {tms * slots}")
                seconds[n] = _drain_seconds(cluster, services.kafka.bootstrap, services.redis.url, n, tms * slots,
                                            f"layouts-{run_id}-{tms}x{slots}-{n}")
                _say(f"  {seconds[n]:.1f} s from submission to the job's end")
        finally:
            _say(cluster.down())
        extra_s = seconds[large] - seconds[small]
        # A difference within the start-up noise gives no rate: report none rather than a wild one.
        rate = round((large - small) / extra_s) if extra_s > 1.0 else None
        rows.append({"taskmanagers": tms, "slots": slots, "parallelism": tms * slots,
                     "seconds": {str(k): round(v, 1) for k, v in seconds.items()}, "events_per_s": rate})
        _say(f"{tms} x {slots}: " + (f"{rate:,} events/s (marginal)" if rate else
                                     "no rate: the two drains differ by less than start-up noise; use more events"))
    return rows


def markdown_table(r: dict[str, Any]) -> str:
    lines = [f"Machine: {r['machine']['cores']} cores, {r['machine']['ram_gib']} GiB RAM. Run {r['run_at']}, "
             f"`{r['command']}`.", "", "| layout | parallelism | events/s |", "|---|---|---|"]
    lines += [f"| {x['taskmanagers']} TaskManager(s) x {x['slots']} slot(s) | {x['parallelism']} | "
              f"{format(x['events_per_s'], ',') if x['events_per_s'] else 'n/a'} |" for x in r["layouts"]]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [f"{x['taskmanagers']} TM x {x['slots']} slot" for x in r["layouts"]]
    ax.bar(names, [x["events_per_s"] or 0 for x in r["layouts"]], color="tab:blue")
    ax.set_ylabel("events/s (marginal drain rate)")
    ax.set_title(f"job throughput per TaskManager layout, {r['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
