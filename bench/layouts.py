"""``persona bench-layouts``: what the job costs per event on the local standalone cluster, per TaskManager layout,
beside the peer and the baseline on the same services (docs/scaling.md).

PyFlink's thread mode runs every Python operator of a TaskManager in that process's one interpreter (one GIL),
so on a machine with few cores wall-clock throughput says more about the machine than about the layout. The
figure that carries to other machines is the CPU the system spends per event: **CPU seconds per 10,000 events**,
which is also the number of cores the system keeps busy per 10,000 events/s.

Per layout (TaskManagers x slots, parallelism = all slots), after a warm-up job, the bounded job drains a small
and a large pre-loaded topic through ``flink run``, and the profile loader applies each run's changelog to Redis:

- the system's CPU is the cluster's processes (JobManager, TaskManagers with their Python, and any Python
  workers they start) plus the loader's; the broker's and Redis's are reported apart (shared services);
- the *marginal* figures, (large - small) over the difference, cancel what does not grow with the events: the
  client, the submission, the job's start-up and its end, which waits for a final checkpoint (up to one
  checkpoint interval of idle wall time: the wall-clock rate is only given when the difference is well above it).

The peer (Bytewax) and the plain-Python baseline drain the large topic the way ``persona bench`` measures them:
CPU from their first profile in Redis to the last, which leaves out their start-up the same way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The CLI imports this module to parse its arguments: the stack and the harness are imported when it runs.

Layout = tuple[int, int]   # (TaskManagers, slots each)
CHECKPOINT_INTERVAL_MS = 2000   # the layouts' job: a short wait for the final checkpoint, the same for both drains


def parse_layout(text: str) -> Layout:
    """``"2x1"`` -> (2, 1): two TaskManagers with one slot each.

    >>> parse_layout("2x1")
    (2, 1)
    """
    tms, sep, slots = text.partition("x")
    if not (sep and tms.isdigit() and slots.isdigit() and int(tms) >= 1 and int(slots) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a layout like 2x1 (TaskManagers x slots, both >= 1)")
    return int(tms), int(slots)


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every live descendant (a TaskManager's Python workers in process mode), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo += children.get(pid, [])
    return out


def marginal_per_10k(small: int, large: int, small_value: float, large_value: float) -> float | None:
    """(large - small) of a cost over (large - small) events, per 10,000 events; None when it did not grow.

    >>> marginal_per_10k(1_000, 11_000, 2.5, 5.5)
    3.0
    >>> marginal_per_10k(1_000, 11_000, 2.5, 2.4) is None
    True
    """
    extra = large_value - small_value
    return round(extra / (large - small) * 10_000, 2) if extra > 0 else None


def _drain(cluster: Any, bootstrap: str, redis_url: str, events: int, parallelism: int, tag: str,
           cpu_of: Callable[[], tuple[float, float]]) -> dict[str, float]:
    """One bounded drain of ``events`` pre-loaded events, then the loader over its changelog: wall seconds of the
    job, and the CPU seconds of the cluster, the loader and the shared services it took."""
    from kafka.admin import KafkaAdminClient

    from bench.harness import _preload
    from persona.generator.sink import history_override
    from persona.loader import ProfileLoader
    from persona.settings import load_job_settings, parse_overrides
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
            f"flink.checkpoint_interval_ms={CHECKPOINT_INTERVAL_MS}", history_override()]
        settings = load_job_settings(parse_overrides(overrides))
        jars = settings.flink.connector_jars()
        cluster_cpu0, shared_cpu0 = cpu_of()
        start = time.time()
        cluster.submit("jobs.personalization", ["--bounded", *(a for o in overrides for a in ("--set", o))], jars,
                       detach=False)
        seconds = time.time() - start
        cluster_cpu1 = cpu_of()[0]
        loader_cpu0 = time.process_time()
        stats = ProfileLoader(settings, rebuild=True).run(until_end=True)
        loader_cpu = time.process_time() - loader_cpu0
        if stats.written == 0:
            raise RuntimeError(f"bench-layouts: the job wrote no profile for {events:,} events ({tag})")
        return {"seconds": seconds, "cluster_cpu_s": cluster_cpu1 - cluster_cpu0, "loader_cpu_s": loader_cpu,
                "shared_cpu_s": cpu_of()[1] - shared_cpu0}   # the broker's and Redis's, for the job and the loader
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics(list(topics.values()))
        admin.close()


def run_layouts(layouts: list[Layout], small: int, large: int, out: Path, others: bool = True) -> int:
    from bench import harness
    from bench.harness import _cleanup, _machine, _say, write_report
    from persona.settings import load_stack_settings
    from persona.stack.prereqs import check_all
    from persona.stack.services import LocalServices

    if not 0 < small < large:
        raise ValueError("the small run must have fewer events than the large one")
    check_all()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stack = load_stack_settings()
    services = LocalServices.from_settings(stack)
    started = (services.kafka.running() is None, services.redis.running() is None)
    for line in services.up():
        _say(line)
    harness.SHARED_PIDS[:] = [p for p in (services.kafka.running(), services.redis.running()) if p is not None]
    try:
        rows = _measure(layouts, small, large, stack, services)
        peers = _others(services, large, out) if others else {}
    finally:
        _cleanup(services, started, services.kafka.bootstrap, [])
    result = {"run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": _machine(),
              "command": f"persona bench-layouts --layouts {' '.join(f'{t}x{s}' for t, s in layouts)} "
                         f"--events {small} {large}" + ("" if others else " --no-others"),
              "layouts": rows, "others": peers, "wall_s": round(time.time() - t0, 1)}
    write_report(out, "layouts", result, markdown_table(result), plot)
    return 0


def _measure(layouts: list[Layout], small: int, large: int, stack: Any, services: Any) -> list[dict[str, Any]]:
    from bench import harness
    from bench.harness import _cpu_s, _say
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

        def cpu_of(c: FlinkCluster = cluster) -> tuple[float, float]:
            return _cpu_s(process_tree(c.pids())), _cpu_s(harness.SHARED_PIDS)
        name = f"{tms} TaskManager(s) x {slots} slot(s)"
        try:
            # The first job on fresh TaskManagers also pays for starting their Python: not measured.
            _say(f"{name}: warm-up job")
            _drain(cluster, services.kafka.bootstrap, services.redis.url, 200, tms * slots,
                   f"layouts-{run_id}-{tms}x{slots}-warm-up", cpu_of)
            runs = {}
            for n in (small, large):
                _say(f"{name}: draining {n:,} events at parallelism {tms * slots}")
                runs[n] = _drain(cluster, services.kafka.bootstrap, services.redis.url, n, tms * slots,
                                 f"layouts-{run_id}-{tms}x{slots}-{n}", cpu_of)
                _say(f"  {runs[n]['seconds']:.1f} s from submission to the job's end; CPU s: cluster "
                     f"{runs[n]['cluster_cpu_s']:.1f}, loader {runs[n]['loader_cpu_s']:.1f}, shared "
                     f"{runs[n]['shared_cpu_s']:.1f}")
        finally:
            _say(cluster.down())
        row = layout_row(tms, slots, small, large, runs)
        rows.append(row)
        rate = row["events_per_s"]
        _say(f"{name}: {row['cpu_s_per_10k']} CPU s per 10k events (cluster {row['cluster_cpu_s_per_10k']}, loader "
             f"{row['loader_cpu_s_per_10k']}); " + (f"{rate:,} events/s (marginal)" if rate else
                                                     "no wall-clock rate: the drains differ by less than start-up noise"))
    return rows


def layout_row(tms: int, slots: int, small: int, large: int, runs: dict[int, dict[str, float]]) -> dict[str, Any]:
    """One layout's marginal figures from its two drains.

    >>> runs = {1000: {"seconds": 9.0, "cluster_cpu_s": 6.0, "loader_cpu_s": 0.2, "shared_cpu_s": 0.5},
    ...         21000: {"seconds": 19.0, "cluster_cpu_s": 12.0, "loader_cpu_s": 1.2, "shared_cpu_s": 2.5}}
    >>> r = layout_row(2, 1, 1000, 21000, runs)
    >>> (r["cpu_s_per_10k"], r["cluster_cpu_s_per_10k"], r["loader_cpu_s_per_10k"], r["events_per_s"])
    (3.5, 3.0, 0.5, 2000)
    """
    def per_10k(key: str) -> float | None:
        return marginal_per_10k(small, large, runs[small][key], runs[large][key])
    system = {n: runs[n]["cluster_cpu_s"] + runs[n]["loader_cpu_s"] for n in (small, large)}
    extra_s = runs[large]["seconds"] - runs[small]["seconds"]
    # A difference within the final checkpoint's wait (and the start-up's jitter) gives no rate: none, not a wild one.
    rate = round((large - small) / extra_s) if extra_s > 2 * CHECKPOINT_INTERVAL_MS / 1000 else None
    return {"taskmanagers": tms, "slots": slots, "parallelism": tms * slots,
            "seconds": {str(n): round(runs[n]["seconds"], 1) for n in (small, large)},
            "cpu_s": {str(n): {k: round(v, 2) for k, v in runs[n].items() if k != "seconds"} for n in (small, large)},
            "cpu_s_per_10k": marginal_per_10k(small, large, system[small], system[large]),
            "cluster_cpu_s_per_10k": per_10k("cluster_cpu_s"), "loader_cpu_s_per_10k": per_10k("loader_cpu_s"),
            "shared_cpu_s_per_10k": per_10k("shared_cpu_s"), "events_per_s": rate}


def _others(services: Any, events: int, out: Path) -> dict[str, dict[str, Any]]:
    """The peer's and the baseline's drains of ``events`` pre-loaded events (CPU per 10k from their first profile)."""
    from bench import harness
    from bench.harness import _drain, _preload, _say
    run_id = time.strftime("%Y%m%d%H%M%S")
    bootstrap, redis_url = services.kafka.bootstrap, services.redis.url
    topics = harness.bench_topics(bootstrap, f"layouts-{run_id}", ("peer", "baseline"))
    try:
        _say(f"peer and baseline: pre-loading {events:,} events (one copy each)")
        final, values, tail = _preload(bootstrap, [topics[n]["events"] for n in topics], events,
                                       users=max(events // 30, 100))
        peer = harness.peer_process(bootstrap, redis_url, topics["peer"], f"layouts:{run_id}:peer:", out)
        with peer as (proc, client, keys):
            _say(f"peer (Bytewax): draining {len(values):,} events")
            p = _drain(client, keys, final, tail, len(values), time.time(),
                       harness.CpuMeter(lambda: harness._group_pids(proc.pid), harness.SHARED_PIDS),
                       harness.Watched("peer", proc.poll, out / "bench-peer.log",
                                       out / "bench-peer.heartbeat"))
        with harness.baseline_process(bootstrap, redis_url, topics["baseline"], f"layouts:{run_id}:base:") as (
                proc, client, keys):
            b = harness.baseline_drain(proc, client, keys, final, tail, len(values), time.time())
    finally:
        from kafka.admin import KafkaAdminClient
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics([t for n in topics for t in topics[n].values()])
        admin.close()
    _say(f"peer: {p.get('cpu_s_per_10k')} CPU s per 10k events; baseline: {b.get('cpu_s_per_10k')}")
    return {"peer": p, "baseline": b}


def _num(x: float | int | None, fmt: str = "") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown_table(r: dict[str, Any]) -> str:
    """The layouts table (README "Scaling out", docs/scaling.md)."""
    lines = [f"Machine: {r['machine']['cores']} cores, {r['machine']['ram_gib']} GiB RAM. Run {r['run_at']}, "
             f"`{r['command']}`.", "",
             "| system | parallelism | CPU s per 10k events (cores per 10k events/s) | of which the loader | "
             "shared broker + Redis | events/s |", "|---|---|---|---|---|---|"]
    lines += [f"| job, {x['taskmanagers']} TaskManager(s) x {x['slots']} slot(s) | {x['parallelism']} | "
              f"{_num(x['cpu_s_per_10k'])} | {_num(x['loader_cpu_s_per_10k'])} | {_num(x['shared_cpu_s_per_10k'])} | "
              f"{_num(x['events_per_s'], ',')} |" for x in r["layouts"]]
    names = {"peer": "peer: Bytewax", "baseline": "plain-Python baseline"}
    lines += [f"| {names[k]} | 1 | {_num(d.get('cpu_s_per_10k'))} | (writes Redis itself) | "
              f"{_num(d.get('shared_cpu_s_per_10k'))} | {_num(d.get('events_per_s'), ',')} |"
              for k, d in r.get("others", {}).items()]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [f"job {x['taskmanagers']}x{x['slots']}" for x in r["layouts"]] + list(r.get("others", {}))
    system = [x["cpu_s_per_10k"] or 0 for x in r["layouts"]] + [d.get("cpu_s_per_10k") or 0
                                                                  for d in r.get("others", {}).values()]
    shared = [x["shared_cpu_s_per_10k"] or 0 for x in r["layouts"]] + [d.get("shared_cpu_s_per_10k") or 0
                                                                        for d in r.get("others", {}).values()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, system, color="tab:blue", label="system under test")
    ax.bar(names, shared, bottom=system, color="tab:gray", label="shared broker + Redis")
    ax.set_ylabel("CPU seconds per 10k events")
    ax.set_title(f"CPU per event by layout, {r['machine']['cores']} cores, {r['run_at']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
