"""``persona``: the project's command line. Every misuse prints a usage message, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from bench.layouts import parse_layout
from persona.settings import (
    ConfigError,
    load_generator_settings,
    load_job_settings,
    load_stack_settings,
    parse_overrides,
)
from persona.stack.procs import StackError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona", description="Real-time personalization engine on Apache Flink.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("check", help="check the prerequisites (Python 3.11, Java 17, Maven, redis-server)")
    sub.add_parser("jars", help="resolve the connector and Kafka broker jars with Maven (once)")

    svc = sub.add_parser("services", help="local Kafka (KRaft) and Redis")
    svc.add_argument("action", choices=("up", "down", "status"))

    gen = sub.add_parser("generate", help="synthetic shoppers to Kafka or a file")
    gen.add_argument("--records", type=int, default=20_000, help="how many records (default 20000)")
    gen.add_argument("--users", type=int, help="number of users (default: conf/generator.yaml)")
    gen.add_argument("--seed", type=int, help="random seed (default: conf/generator.yaml)")
    gen.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    gen.add_argument("--out", type=Path, help="write raw records, one per line, to this file instead of Kafka")
    gen.add_argument("--topic", help="Kafka topic (default: kafka.topics.events of conf/job.yaml)")

    run = sub.add_parser("run", help="run the job on the embedded mini-cluster (foreground)")
    run.add_argument("--bounded", action="store_true", help="stop at the offsets that are latest at start")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--quiet", action="store_true", help="no live line (events/s, dead letters, triggers)")
    run.add_argument("--from-savepoint", metavar="PATH", help="restore state and offsets from a savepoint "
                     "(the command persona backfill prints)")
    run.add_argument("--allow-non-restored-state", action="store_true",
                     help="with --from-savepoint: drop state of operators this job does not have (after a backfill "
                          "with --dry-run-topic, or with history.profile_versions turned off)")

    bf = sub.add_parser("backfill", help="load history: the job over the events topic's past with no message sent, "
                        "ending in a savepoint that the live job starts from (docs/history.md)")
    bf.add_argument("--events", dest="events_file", type=Path, metavar="PATH",
                    help="a file of recorded events, one per line, put into the events topic first (as `persona "
                         "events load`)")
    bf.add_argument("--topic", metavar="T", help="the events topic to load and go live on (default: "
                    "kafka.topics.events; the same as --set kafka.topics.events=T)")
    bf.add_argument("--savepoint-dir", metavar="DIR", help="where the savepoint goes (default: .run/savepoints)")
    bf.add_argument("--history-until", type=_time_ms, metavar="TIME",
                    help="matches decided at an event time before TIME (ISO 8601 or epoch ms) are history and never "
                         "sent (default: now, when the backfill starts)")
    bf.add_argument("--from", dest="start", type=_time_ms, metavar="TIME",
                    help="only history at or after TIME: with --events, the file's events from TIME; else the topic "
                         "from each partition's first record at or after TIME (its record timestamps)")
    bf.add_argument("--to", dest="end", type=_time_ms, metavar="TIME",
                    help="with --events: only the file's events before TIME (a topic's history is read to its end, "
                         "where the live job goes on)")
    bf.add_argument("--dry-run-topic", metavar="T",
                    help="write each match of history to topic T as the trigger it would have been (marked "
                         "\"history\": true; created if missing); by default they are only counted")
    bf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="job setting, e.g. kafka.group_id=shop (the live job's: the same group continues)")
    bf.add_argument("--quiet", action="store_true", help="no live line")

    st = sub.add_parser("status", help="a running job: state, restarts, rates, dead letters, triggers, watermark, "
                        "checkpoints, Kafka lag, Redis (docs/operations.md \"Running it\")")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="job setting, e.g. kafka.group_id=my-job (finds the job and its consumer group)")
    st.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    st.add_argument("--watch", action="store_true", help="again every 5 s until Ctrl-C")
    st.add_argument("--rest", metavar="URL", help="Flink REST API (default: this checkout's `persona run`, else "
                    "its local cluster)")

    demo = sub.add_parser("demo", help="README command 1: everything end to end with live output")
    demo.add_argument("--records", type=int, default=30_000)
    demo.add_argument("--users", type=int, default=1_000)
    demo.add_argument("--rate", type=float, default=3_000.0, help="records per second")

    cl = sub.add_parser("cluster", help="local standalone Flink cluster")
    cl_sub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    cl_sub.add_parser("up")
    cl_sub.add_parser("down")
    cl_sub.add_parser("status")
    submit = cl_sub.add_parser("submit", help="submit a job with `flink run`")
    submit.add_argument("--job", choices=("jobs.personalization", "jobs.event_counter"), default="jobs.personalization")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--from-savepoint", metavar="PATH", help="restore state and offsets from a savepoint")
    submit.add_argument("--allow-non-restored-state", action="store_true",
                        help="with --from-savepoint: drop state of operators the new job does not have")
    submit.add_argument("--quiet", action="store_true", help="return at submission: no live line (events/s, dead "
                        "letters, triggers) while the job runs")
    cancel = cl_sub.add_parser("cancel", help="cancel a job (its last checkpoint is kept)")
    cancel.add_argument("job_id")
    stop = cl_sub.add_parser("stop", help="stop a job with a savepoint (for upgrades)")
    stop.add_argument("job_id")
    stop.add_argument("--savepoint", required=True, metavar="DIR", help="savepoint directory (path or Flink URI)")

    rules = sub.add_parser("rules", help="rule sets at runtime: publish, list, show, diff, roll back, and dry-run over "
                           "recorded events (docs/behaviour.md \"Rules at runtime\")")
    r_sub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    publish = r_sub.add_parser("publish", help="check a pattern file as the job would, store it as the next version "
                               "and put it in force (running jobs switch within rules.refresh_ms)")
    publish.add_argument("file", type=Path)
    publish.add_argument("--note", default="", help="why, shown by list and show")
    r_sub.add_parser("list", help="every published version, the one in force, and what each job subtask applied")
    show = r_sub.add_parser("show", help="one version: who, when, pattern versions, diff and source")
    show.add_argument("version", type=int)
    diff = r_sub.add_parser("diff", help="what changed from version A to version B")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    rollback = r_sub.add_parser("rollback", help="publish version N's rule set again, as a new version")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--note", default="")
    for registry_command in (publish, r_sub.choices["list"], show, diff, rollback):
        registry_command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="job setting, e.g. redis.key_prefix=demo:")
    dry = r_sub.add_parser("dry-run", help="run a candidate pattern file beside the live one over recorded events "
                           "(docs/behaviour.md \"Rules at runtime\")")
    dry.add_argument("file", type=Path, help="the candidate pattern file")
    source = dry.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", dest="events_file", type=Path, metavar="PATH",
                        help="a file of events, one record per line")
    source.add_argument("--topic", metavar="T", help="a Kafka topic of events (read to its end)")
    dry.add_argument("--from", dest="start", metavar="TIME", help="only events at or after this time (RFC 3339)")
    dry.add_argument("--to", dest="end", metavar="TIME", help="only events before this time (RFC 3339)")
    dry.add_argument("--live", metavar="FILE|vN|current", help="the live rule set: a pattern file, a published version, "
                     "or the one in force (default: patterns_file)")
    dry.add_argument("--out", type=Path, default=Path("reports"), help="folder for dry-run.json and dry-run.png")
    dry.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="job setting of both runs, e.g. patterns_file=live.yaml (the live rule set)")

    exps = sub.add_parser("experiments", help="experiments on triggers: per-variant conversion with 95%% intervals "
                          "(docs/behaviour.md \"Experiments\")")
    x_sub = exps.add_subparsers(dest="action", required=True, metavar="ACTION")
    x_show = x_sub.add_parser("show", help="one experiment's tallies per variant")
    x_show.add_argument("name")
    x_show.add_argument("--json", action="store_true", help="the Redis summary as JSON")
    x_list = x_sub.add_parser("list", help="the experiments of the rule set in force, with their tallies")
    for x_command in (x_show, x_list):
        x_command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                               help="job setting, e.g. redis.key_prefix=demo:")

    events = sub.add_parser("events", help="put recorded events into Kafka")
    e_sub = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = e_sub.add_parser("load", help="a file of events, one record per line, into the events topic, each record "
                            "keyed by its user and timestamped with its event time")
    load.add_argument("path", type=Path)
    load.add_argument("--topic", help="Kafka topic (default: kafka.topics.events)")
    load.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="job setting, e.g. kafka.bootstrap_servers=host:9092")

    top = sub.add_parser("topics", help="create, list or delete the job's topics (names from the settings)")
    top.add_argument("action", choices=("create", "list", "delete"))
    top.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="job setting, e.g. kafka.topics.events=my.events")
    top.add_argument("--yes", action="store_true", help="with delete: really delete (the records are lost)")

    loader = sub.add_parser("loader", help="apply the profile changelog topic to Redis (a service; docs/operations.md "
                            "\"Failures and upgrades\")")
    loader.add_argument("--rebuild", action="store_true",
                        help="read the whole changelog from its first offset into Redis, then stop")
    loader.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="job setting, e.g. redis.key_prefix=demo: (the loader needs the job's settings)")

    prof = sub.add_parser("profile", help="print a user's profile from Redis (--export: everything held about them)")
    prof.add_argument("user_id")
    what = prof.add_mutually_exclusive_group()
    what.add_argument("--export", action="store_true",
                      help="a data-access request: profile, sets, consent history, pending triggers, audit trail, "
                           "triggers sent and dead letters, as JSON (docs/privacy.md)")
    what.add_argument("--at", type=_time_ms, metavar="TIME",
                      help="the profile as the job held it before it saw anything later than TIME (RFC 3339 or "
                           "epoch ms), from the profile history (history.profile_versions; docs/history.md)")
    what.add_argument("--history", action="store_true",
                      help="every profile version the history holds, oldest first (with --from/--to: those whose "
                           "as-of time is in [FROM, TO))")
    prof.add_argument("--from", dest="start", type=_time_ms, metavar="TIME", help="with --history: from this time")
    prof.add_argument("--to", dest="end", type=_time_ms, metavar="TIME", help="with --history: before this time")
    prof.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="job setting, e.g. redis.key_prefix=demo:")

    exp = sub.add_parser("export-training", help="point-in-time training rows from the profile history: the "
                                                 "propensity features as of each decision, never later, and its label")
    exp.add_argument("--label", choices=["purchase"], default="purchase",
                     help="what the label says: a purchase within the horizon after the decision (the only one)")
    exp.add_argument("--horizon", type=_duration, default=_duration("30m"), metavar="DURATION",
                     help="the label's window after each decision, e.g. 30m, 2h, 1d (default 30m)")
    exp.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSON lines, one row per decision")
    exp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="job setting, e.g. kafka.bootstrap_servers=...")

    rec = sub.add_parser("recommend", help="a user's personal list, read from Redis as a front-end would "
                                           "(docs/recommendations.md \"Serving\")")
    rec.add_argument("user_id")
    rec.add_argument("--json", action="store_true", help="one JSON object (schemas: item, score; lookup_ms)")
    rec.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="job setting, e.g. redis.key_prefix=demo:")

    models = sub.add_parser("models", help="published model versions; pin (roll back) or unpin the served one")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="job setting, e.g. redis.key_prefix=demo:")
    m_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    m_list = m_sub.add_parser("list", help="each model's newest version, metrics with their sample size and interval, "
                              "trend against the previous version, segment descriptions, kept versions and pin")
    m_list.add_argument("--json", action="store_true")
    pin = m_sub.add_parser("pin", help="serve this kept version (a rollback if it is older) until unpinned")
    pin.add_argument("model", choices=("propensity", "segments", "bots"))
    pin.add_argument("version", type=int)
    unpin = m_sub.add_parser("unpin", help="serve the newest version again")
    unpin.add_argument("model", choices=("propensity", "segments", "bots"))

    ev = sub.add_parser("evaluate", help="replay a generated or recorded stream; prequential vs batch-hindsight AUC "
                        "(logistic regression, gradient-boosted trees), bot precision and recall, PNG")
    ev.add_argument("--records", type=int, default=60_000)
    ev.add_argument("--users", type=int, default=1_500)
    ev.add_argument("--seed", type=int, default=42)
    ev.add_argument("--out", type=Path, default=Path("reports"), help="folder for the PNG and JSON (default reports/)")
    ev.add_argument("--events", dest="events_file", type=Path, metavar="PATH",
                    help="replay this recorded stream (the event contract, one record per line) instead of a "
                         "generated one")
    ev.add_argument("--noisy", action="store_true", help="the noisier generated stream: weaker, noisier, drifting and "
                    "seasonal buying signals (docs/models.md)")
    ev.add_argument("--generator", dest="generator_overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="generator setting of the generated stream, e.g. signal_strength=0.5 (conf/generator.yaml)")
    ev.add_argument("--warm", type=_fraction, metavar="FRACTION",
                    help="forward mode: the online model learns the first FRACTION of the labelled examples (as a "
                         "backfill would), then is scored on the rest against a batch model fitted on that same "
                         "part and one fitted in hindsight (docs/models.md)")
    ev.add_argument("--recommend", action="store_true", help="next-item prediction instead: the streaming recommender's "
                    "prequential HR@10, HR@20 and MRR@20 vs item-kNN, and popularity in hindsight, on the generated "
                    "stream and its control stream (no item structure); docs/recommendations.md")

    bench = sub.add_parser("bench", help="benchmark the job, a peer engine and the plain-Python baseline on the local stack")
    bench.add_argument("--events", type=int, default=None,
                       help="pre-loaded events to drain (default 150000: a drain of ~30 s, past the JIT warm-up of a new JVM; start-up "
                            "is measured on its own)")
    bench.add_argument("--rate", type=float, default=300.0, help="fixed rate of the freshness run, events/s (default 300)")
    bench.add_argument("--seconds", type=float, default=30.0, help="length of the freshness run (default 30)")
    bench.add_argument("--rate-high", type=float, default=5_000.0, help="rate of the high-rate freshness run (default 5000)")
    bench.add_argument("--seconds-high", type=float, default=10.0, help="length of the high-rate run (default 10)")
    bench.add_argument("--ladder", type=_rates, default=(1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 6_000.0, 8_000.0,
                                                          10_000.0, 12_000.0),
                       help="rates tried in turn for the sustained rate, comma-separated (default 1000,...,12000)")
    bench.add_argument("--step-seconds", type=float, default=8.0, help="length of each ladder step (default 8)")
    bench.add_argument("--quick", action="store_true",
                       help="about 2 minutes: logic-only µs per event and a drain of the job and the baseline, as "
                            "ratios to the baseline of the same run (every change to the per-event path)")
    bench.add_argument("--out", type=Path, default=Path("reports"), help="folder for JSON, markdown and PNG")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="job setting for the job under test, e.g. flink.execution_mode=process")
    lay = sub.add_parser("bench-layouts", help="CPU per 10k events of the job on the local standalone cluster per TaskManager layout, "
                              "beside the peer and the baseline")
    lay.add_argument("--layouts", nargs="+", type=parse_layout, default=[(1, 1), (1, 2), (2, 1)], metavar="TMxSLOTS",
                     help="TaskManagers x slots each (default: 1x1 1x2 2x1)")
    lay.add_argument("--events", dest="layout_events", nargs=2, type=int, default=[10_000, 40_000],
                     metavar=("SMALL", "LARGE"), help="pre-loaded events of the two drains (default 10000 40000)")
    lay.add_argument("--no-others", action="store_true",
                     help="measure the job's layouts only, not the peer and the baseline beside them")
    lay.add_argument("--out", type=Path, default=Path("reports"), help="folder for JSON, markdown and PNG")
    return p


def _positive(parser: argparse.ArgumentParser, name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        parser.error(f"{name} must be positive")


_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _duration(text: str) -> int:
    """``30m`` -> 1,800,000 ms: a positive number of seconds, minutes, hours or days."""
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 2h or 1d")
    return int(number) * _UNITS[unit]


def _fraction(text: str) -> float:
    """``0.5`` -> 0.5: a share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and 1 (exclusive)")
    return value


def _rates(text: str) -> tuple[float, ...]:
    """``1000,2000`` -> (1000.0, 2000.0): ascending positive rates."""
    try:
        rates = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of rates") from None
    if not rates or any(r <= 0 for r in rates) or list(rates) != sorted(rates):
        raise argparse.ArgumentTypeError(f"{text!r}: rates must be positive and ascending")
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("records", "users", "rate", "events", "seconds"):
        _positive(parser, f"--{name}", getattr(args, name, None))
    if args.command == "profile" and not args.history and (args.start is not None or args.end is not None):
        parser.error("--from and --to go with --history")
    if args.command == "backfill" and args.end is not None and args.events_file is None:
        parser.error("--to goes with --events: a topic's history is read to its end, where the live job goes on")
    if args.command in ("backfill", "profile") and None not in (args.start, args.end) and args.start >= args.end:
        parser.error("--from must be before --to")
    if args.command == "evaluate" and args.recommend and args.warm is not None:
        parser.error("--warm applies to the propensity model's evaluation, not to --recommend")
    if args.command == "bench-layouts" and not 0 < args.layout_events[0] < args.layout_events[1]:
        parser.error("--events: SMALL must be positive and less than LARGE")
    log_file = _setup_logging()
    try:
        return _dispatch(args)
    except (ConfigError, StackError) as e:
        print(f"persona {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if log_file is not None:
            log_file.close()


OUR_LOGGERS = ("persona", "jobs", "bench", "operators", "state")
# Events of a `persona bench` drain. 40,000 (the default until 2026-12-06) drained in ~10 s, most of it the JIT
# warm-up of a new JVM: the C2 compiler threads used ~117 µs per event there, ~40 at 150,000 (docs/performance.md).
BENCH_EVENTS = 150_000


class _OursOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OUR_LOGGERS


def _setup_logging() -> logging.Handler | None:
    """Our own messages on the terminal; every library's (kafka-python, py4j, Beam) in the log file only
    (``{run_dir}/logs/persona-cli.log``), so they do not mix into a command's output."""
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(_OursOnly())
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(console)
    try:
        folder = load_stack_settings().run_path / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(folder / "persona-cli.log")
    except (OSError, ConfigError):
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def _dispatch(args: argparse.Namespace) -> int:  # noqa: C901 - a flat command switch reads best
    if args.command == "check":
        from persona.stack.prereqs import check_all
        check_all()
        print("prerequisites ok: Python 3.11, Java 17+, Maven, redis-server")
        return 0
    if args.command == "jars":
        from persona.stack.jars import ensure_jars
        for group, path in ensure_jars(load_stack_settings().jars_path).items():
            print(f"{group}: {path}")
        return 0
    if args.command == "services":
        from persona.stack.services import LocalServices
        services = LocalServices.from_settings(load_stack_settings())
        lines = {"up": lambda: services.up(load_job_settings({"kafka.bootstrap_servers": services.kafka.bootstrap})),
                 "down": services.down, "status": services.status}[args.action]()
        print("\n".join(lines))
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "run":
        from jobs.personalization import main as job_main
        if args.bounded and args.from_savepoint:
            raise ConfigError("--bounded and --from-savepoint exclude each other: the savepoint's offsets are "
                              "where the live job goes on")
        job_main([*(["--bounded"] if args.bounded else []), *(["--quiet"] if args.quiet else []),
                  *(["--from-savepoint", args.from_savepoint] if args.from_savepoint else []),
                  *(["--allow-non-restored-state"] if args.allow_non_restored_state else []),
                  *(a for o in args.overrides for a in ("--set", o))])
        return 0
    if args.command == "backfill":
        return _backfill(args)
    if args.command == "status":
        return _status(args)
    if args.command == "demo":
        from persona.demo import DemoOptions, run_demo
        return run_demo(DemoOptions(records=args.records, users=args.users, rate=args.rate))
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "profile" and args.at is None and not args.history:
        return _profile(args.user_id, args.overrides, args.export)
    if args.command == "profile":
        return _profile_history(args.user_id, args.overrides, args.at, args.start, args.end)
    if args.command == "recommend":
        return _recommend(args.user_id, args.overrides, args.json)
    if args.command == "export-training":
        return _export_training(args.horizon, args.out, args.overrides)
    if args.command == "topics":
        return _topics(args.action, args.overrides, args.yes)
    if args.command == "rules":
        if args.action == "dry-run":
            return _dry_run(args)
        from persona.rule_commands import run_rules_command
        versions = (args.a, args.b) if args.action == "diff" else (getattr(args, "version", 0),)
        return run_rules_command(args.action, load_job_settings(parse_overrides(args.overrides)),
                                 getattr(args, "file", None), versions, getattr(args, "note", ""))
    if args.command == "experiments":
        from persona.experiment_commands import run_experiments_command
        return run_experiments_command(args.action, load_job_settings(parse_overrides(args.overrides)),
                                       getattr(args, "name", None), getattr(args, "json", False))
    if args.command == "events":
        return _load_events(args.path, args.topic, args.overrides)
    if args.command == "loader":
        return _loader(args.rebuild, args.overrides)
    if args.command == "models":
        return _models(args)
    if args.command == "evaluate":
        from persona.evaluate import run_evaluation
        if args.events_file is not None and not args.events_file.is_file():
            raise ConfigError(f"--events: {args.events_file}: no such file")
        from persona.evaluate import NOISY
        generator = {**(NOISY if args.noisy else {}), **parse_overrides(args.generator_overrides)}
        if args.recommend:
            from persona.recommend_eval import run_recommend_evaluation
            return run_recommend_evaluation(args.records, args.users, args.seed, args.out, args.events_file, generator)
        return run_evaluation(args.records, args.users, args.seed, args.out, args.events_file, generator, args.warm)
    if args.command == "bench" and args.quick:
        from bench.quick import run_quick
        return run_quick(args.events or BENCH_EVENTS, args.out, parse_overrides(args.overrides))
    if args.command == "bench":
        from bench.harness import LivePlan, run_bench
        plan = LivePlan(args.rate, args.seconds, args.rate_high, args.seconds_high, args.ladder, args.step_seconds)
        return run_bench(args.events or BENCH_EVENTS, plan, args.out, parse_overrides(args.overrides))
    if args.command == "bench-layouts":
        from bench.layouts import run_layouts
        return run_layouts(args.layouts, *args.layout_events, args.out, others=not args.no_others)
    raise AssertionError(args.command)


def _topics(action: str, overrides: list[str], yes: bool) -> int:
    from kafka.errors import KafkaError

    from persona.stack.topics import create_job_topics, delete_job_topics, describe_job_topics
    settings = load_job_settings(parse_overrides(overrides))
    try:
        if action == "create":
            created = create_job_topics(settings)
            print(f"created: {', '.join(created)}" if created else "all topics exist already")
        elif action == "list":
            for key, name, partitions in describe_job_topics(settings):
                print(f"kafka.topics.{key:<12} {name:<40} " + (f"{partitions} partition(s)" if partitions else "missing"))
        else:
            if not yes:
                print("persona topics delete: add --yes to delete the job's topics and their records", file=sys.stderr)
                return 2
            deleted = delete_job_topics(settings)
            print(f"deleted: {', '.join(deleted)}" if deleted else "none of the job's topics exists")
    except KafkaError as e:
        raise ConfigError(f"kafka.bootstrap_servers: {settings.kafka.bootstrap_servers}: {e}") from None
    return 0


def _loader(rebuild: bool, overrides: list[str]) -> int:
    """Until Ctrl-C or SIGTERM (``--rebuild``: until the end seen at start), with a progress line."""
    import signal
    import threading

    from confluent_kafka import KafkaException

    from persona.loader import ProfileLoader, format_progress
    settings = load_job_settings(parse_overrides(overrides))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        from persona.loader_metrics import serve_loader_metrics
        loader = ProfileLoader(settings, rebuild=rebuild)
        print(f"loader: {settings.kafka.topics.profiles} -> {settings.redis.masked_url} "
              f"(prefix {settings.redis.key_prefix!r}){', rebuild' if rebuild else ''}", flush=True)
        port = None if rebuild else serve_loader_metrics(loader.stats, settings.loader.metrics_host,
                                                         settings.loader.metrics_port)
        if port is not None:
            print(f"loader metrics (Prometheus): http://{settings.loader.metrics_host}:{port}/metrics", flush=True)
        stats = loader.run(stop, until_end=rebuild, progress=lambda st, total: print(format_progress(st, total),
                                                                                    flush=True),
                           progress_every_s=2 if rebuild else 10)
    except KafkaException as e:
        raise ConfigError(f"kafka.topics.profiles: {e}") from None
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(format_progress(stats, None), flush=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    from persona.status import StatusError, collect, format_status
    settings = load_job_settings(parse_overrides(args.overrides))
    while True:
        try:
            status = collect(settings, args.rest)
        except StatusError as e:
            raise StackError(str(e)) from None
        print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status), flush=True)
        if not args.watch:
            return 0
        time.sleep(5)   # the refresh cadence of --watch
        print()


def _time_arg(text: str | None, flag: str) -> int | None:
    from operators.validation import parse_time_ms
    if text is None:
        return None
    try:
        return parse_time_ms(text, flag)
    except Exception:   # noqa: BLE001 - a usage error, not a traceback
        raise ConfigError(f"{flag}: {text!r} is not RFC 3339 with a UTC offset, e.g. 2026-11-02T00:00:00Z") from None


def _dry_run(args: argparse.Namespace) -> int:
    from persona.dry_run import dry_run, in_range, read_lines, read_topic, table, write_outputs
    from persona.rules import check_patterns
    live = load_job_settings(parse_overrides(args.overrides))
    if not args.file.is_file():
        raise ConfigError(f"{args.file}: no such pattern file")
    if args.live is not None:
        from persona.rule_commands import live_rules_file
        live = live.model_copy(update={"patterns_file": str(live_rules_file(live, args.live, args.out))})
    candidate = live.model_copy(update={"patterns_file": str(args.file.resolve())})
    check_patterns(candidate)   # the start-up checks, with the file named in the message
    start, end = _time_arg(args.start, "--from"), _time_arg(args.end, "--to")
    if args.events_file is not None:
        if not args.events_file.is_file():
            raise ConfigError(f"--events: {args.events_file}: no such file")
        records = read_lines(args.events_file)
    else:
        records = (value for value, _ in read_topic(live, args.topic))
    live_run, candidate_run, n = dry_run(live, candidate, in_range(records, start, end))
    doc = write_outputs(live_run, candidate_run, n, args.out)
    print(table(doc))
    print(f"{n:,} records; wrote {args.out / 'dry-run.json'} and {args.out / 'dry-run.png'}")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from jobs.personalization import main as job_main
    from persona.backfill import backfill_overrides, retention_ms, retention_problem
    if args.topic:   # the live job reads the same topic: it goes into the overrides the live command keeps
        args.overrides = [*args.overrides, f"kafka.topics.events={args.topic}"]
    job = load_job_settings(parse_overrides(args.overrides))   # a bad setting is named before anything runs
    now_ms = int(time.time() * 1000)
    if args.events_file is not None:
        if not args.events_file.is_file():
            raise ConfigError(f"--events: {args.events_file}: no such file")
        oldest = min((ts for _, ts in _keys_and_times(args.events_file)
                      if ts is not None and (args.start is None or ts >= args.start)), default=now_ms)
        topic = job.kafka.topics.events
        try:
            problem = retention_problem(topic, retention_ms(job.kafka, topic), oldest, now_ms)
        except Exception as e:  # noqa: BLE001 - a missing topic or a broker that does not answer: said below
            raise StackError(f"kafka at {job.kafka.bootstrap_servers}: cannot read topic {topic}'s retention ({e})") from None
        if problem:
            raise ConfigError(problem)
        _load_events(args.events_file, None, args.overrides, args.start, args.end)
    elif args.start is not None:   # the topic from each partition's first record at or after --from
        args.overrides = [*args.overrides, "kafka.starting_offsets=timestamp", f"kafka.starting_timestamp_ms={args.start}"]
    history = backfill_overrides(now_ms, args.history_until)
    until = history["history.triggers_before_ms"]
    extra: dict[str, int | str] = dict(history)
    at = datetime.fromtimestamp(until / 1000, UTC).isoformat(timespec="seconds")
    print(f"backfill of {job.kafka.topics.events} for group {job.kafka.group_id}, for this run only:\n"
          f"  limits.max_event_age_ms={extra['limits.max_event_age_ms']} (any event since 1970; the live job keeps "
          f"{job.limits.max_event_age_ms})\n"
          f"  history.triggers_before_ms={until} ({at}): a match decided before it is history, counted and never sent",
          flush=True)
    if args.start is not None or args.end is not None:
        span = " to ".join(datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="seconds") if t is not None
                           else "…" for t in (args.start, args.end))
        print(f"  history from {span}: " + ("the file's events in that span" if args.events_file is not None else
                                            "the topic from each partition's first record at or after it"), flush=True)
    if args.dry_run_topic:
        extra["history.dry_run_topic"] = args.dry_run_topic
        print(f"  history.dry_run_topic={args.dry_run_topic}: each match of history goes there as the trigger it "
              "would have been (\"history\": true)", flush=True)
    folder = Path(args.savepoint_dir) if args.savepoint_dir else load_stack_settings().run_path / "savepoints"
    folder.mkdir(parents=True, exist_ok=True)
    job_main(["--savepoint-at-end", folder.resolve().as_uri(), *(["--quiet"] if args.quiet else []),
              *(a for o in [*args.overrides, *(f"{k}={v}" for k, v in extra.items())] for a in ("--set", o))])
    return 0


def _time_ms(text: str) -> int:
    """An argparse type: epoch milliseconds, or an ISO 8601 time with its zone."""
    from operators.validation import parse_time_ms
    if text.isdigit():
        return int(text)
    try:
        return parse_time_ms(text, "--history-until")
    except Exception:  # noqa: BLE001 - the validator's own error type: any failure is a usage error here
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time with a zone") from None


def _keys_and_times(path: Path) -> Iterator[tuple[bytes | None, int | None]]:
    """Per line of an events file, the key and timestamp the contract asks producers for (None, None for a line
    that is not a readable event: the job dead-letters it with its reason)."""
    from operators.validation import parse_time_ms
    from persona.dry_run import read_lines
    for raw in read_lines(path):
        try:
            doc = json.loads(raw)
            yield str(doc["user_id"]).encode(), parse_time_ms(doc["event_time"])
        except Exception:   # noqa: BLE001 - any unreadable line
            yield None, None


def _load_events(path: Path, topic: str | None, overrides: list[str], start: int | None = None,
                 end: int | None = None) -> int:
    """Put the events of ``path`` into the topic (``start``/``end``: only those whose event time is in [start, end);
    an unreadable line is put in anyway, for the job to dead-letter with its reason)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    from persona.dry_run import read_lines
    from persona.generator.shoppers import GeneratedRecord
    from persona.generator.sink import send_to_kafka
    job = load_job_settings(parse_overrides(overrides))
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    topic = topic or job.kafka.topics.events
    try:
        admin = KafkaAdminClient(**job.kafka.client_config(), request_timeout_ms=15_000)
        try:
            exists = topic in set(admin.list_topics())
        finally:
            admin.close()
    except KafkaError as e:
        raise StackError(f"kafka at {job.kafka.bootstrap_servers} did not answer ({e})") from None
    if not exists:
        raise ConfigError(f"topic {topic!r} does not exist on {job.kafka.bootstrap_servers} (persona topics create)")

    def wanted(ts: int | None) -> bool:
        return ts is None or ((start is None or ts >= start) and (end is None or ts < end))

    def records() -> Iterator[GeneratedRecord]:
        for raw, (user, ts) in zip(read_lines(path), _keys_and_times(path), strict=True):
            if wanted(ts):
                yield GeneratedRecord(user, raw, None, ts, malformed=None if user else "unreadable")  # type: ignore[arg-type]
    total = sum(1 for _, ts in _keys_and_times(path) if wanted(ts))
    kinds = send_to_kafka(records(), job.kafka.bootstrap_servers, topic, total=total,
                          client_config=job.kafka.client_config())
    print(json.dumps(dict(kinds), sort_keys=True))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from persona.generator.shoppers import generate
    from persona.generator.sink import send_to_kafka, write_lines
    overrides = {k: v for k, v in (("users", args.users), ("seed", args.seed)) if v is not None}
    records = generate(load_generator_settings(overrides), max_records=args.records)
    if args.out:
        kinds = write_lines(records, args.out)
    else:
        job = load_job_settings()
        kinds = send_to_kafka(records, job.kafka.bootstrap_servers, args.topic or job.kafka.topics.events,
                              rate=args.rate, total=args.records, client_config=job.kafka.client_config())
    print(json.dumps(dict(kinds), sort_keys=True))
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from persona.stack.flink_cluster import FlinkCluster
    stack = load_stack_settings()
    cluster = FlinkCluster(stack.run_path / "flink", stack.flink_cluster)
    if args.action == "up":
        print(cluster.up())
    elif args.action == "down":
        print(cluster.down())
    elif args.action == "status":
        print(f"running; web UI {cluster.rest_url}" if cluster.running() else "stopped")
        if cluster.running():
            for job in cluster.rest("/jobs/overview")["jobs"]:
                print(f"  {job['jid']}  {job['state']:<10} {job['name']}")
    elif args.action == "submit":
        from persona.settings import parse_overrides
        job = load_job_settings(parse_overrides(args.overrides))
        job_args = [a for o in args.overrides for a in ("--set", o)]
        if args.allow_non_restored_state and not args.from_savepoint:
            raise ConfigError("--allow-non-restored-state needs --from-savepoint")
        job_id = cluster.submit(args.job, job_args, job.flink.connector_jars(), from_savepoint=args.from_savepoint,
                                allow_non_restored_state=args.allow_non_restored_state)
        print(f"submitted job {job_id}; web UI {cluster.rest_url}/#/job/running/{job_id}/overview", flush=True)
        print(f"Prometheus: the cluster's JobManager and TaskManagers on 127.0.0.1 ports "
              f"{stack.flink_cluster.prometheus_ports} (/metrics)", flush=True)
        if not args.quiet:
            from persona.status import follow
            follow(cluster.rest_url, job_id)
    elif args.action == "stop":
        print(f"stopped {args.job_id}; savepoint {cluster.stop_with_savepoint(args.job_id, args.savepoint)}")
    elif args.action == "cancel":
        cluster.cancel(args.job_id)
        print(f"cancelled {args.job_id}")
    return 0


def _profile(user_id: str, overrides: list[str], export: bool = False) -> int:
    from state.profile_store import read_profile
    job = load_job_settings(parse_overrides(overrides))
    if export:
        from kafka.errors import KafkaError

        from persona.subject_access import export_subject
        try:
            print(json.dumps(export_subject(job, user_id), indent=2, sort_keys=True))
        except redis.exceptions.ConnectionError:
            raise StackError(f"redis at {job.redis.masked_url} did not answer") from None
        except KafkaError as e:
            raise StackError(f"kafka at {job.kafka.bootstrap_servers}: {e}") from None
        return 0
    client = job.redis.client()
    try:
        profile = read_profile(client, job.redis.keys(), user_id)
    except redis.exceptions.ConnectionError:
        raise StackError(f"redis at {job.redis.masked_url} did not answer") from None
    if profile is None:
        print(f"no profile for user {user_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(profile, indent=2, sort_keys=True))
    return 0


def _profile_history(user_id: str, overrides: list[str], at_ms: int | None, start: int | None, end: int | None) -> int:
    from kafka.errors import KafkaError

    from persona.history_reader import in_range, iso, read_history, version_doc
    from persona.rules import profile_rules
    from state.profile_history import at
    job = load_job_settings(parse_overrides(overrides))
    try:
        versions = read_history(job, user_id)
    except KafkaError as e:
        raise StackError(f"kafka at {job.kafka.bootstrap_servers}: {e}") from None
    rules = profile_rules(job)
    if at_ms is not None:
        found = at(versions, at_ms)
        if found is None:
            print(f"no profile of user {user_id!r} at {iso(at_ms)} in the history "
                  f"({len(versions)} versions held; retention {job.privacy.retention.profile_history_days:g} days)",
                  file=sys.stderr)
            return 1
        print(json.dumps(version_doc(found, rules), indent=2, sort_keys=True))
        return 0
    shown = in_range(versions, start, end)
    if not shown:
        print(f"no profile version of user {user_id!r} in the history for that range ({len(versions)} held)",
              file=sys.stderr)
        return 1
    print(json.dumps([version_doc(v, rules) for v in shown], indent=2, sort_keys=True))
    return 0


def _export_training(horizon_ms: int, out: Path, overrides: list[str]) -> int:
    from kafka.errors import KafkaError

    from persona.training_export import export_training
    job = load_job_settings(parse_overrides(overrides))
    try:
        summary = export_training(job, horizon_ms, out)
    except KafkaError as e:
        raise StackError(f"kafka at {job.kafka.bootstrap_servers}: {e}") from None
    except ValueError as e:   # a history record of a build whose feature set differs
        raise StackError(f"{job.kafka.topics.history}: {e}") from None
    print(summary.line(out))
    return 0


def _recommend(user_id: str, overrides: list[str], as_json: bool) -> int:
    from persona.rules import check_patterns, recommend_rules
    from persona.serving import ListRulesInForce, recommend
    job = load_job_settings(parse_overrides(overrides))
    in_force = ListRulesInForce(check_patterns(job).lists)
    client = job.redis.client()
    try:
        rec = recommend(client, job.redis.keys(), user_id, recommend_rules(job), in_force=in_force)
    except redis.exceptions.ConnectionError:
        raise StackError(f"redis at {job.redis.masked_url} did not answer") from None
    finally:
        client.close()
    if as_json:
        print(rec.to_json())
        return 0
    who = f"user {user_id!r}" if rec.known else f"user {user_id!r} (no profile: the shop's best items)"
    rules = f"rule set v{rec.rules_version}" if rec.rules_version else "the pattern file's list rules"
    print(f"{who}, as of event time {rec.as_of}, {rules}, looked up in {rec.lookup_ms:.1f} ms:")
    for rank, (item, score) in enumerate(rec.items, 1):
        print(f"  {rank:>2}. {item}  {score:.4f}")
    if not rec.items:
        print("  (nothing yet: no item has been seen)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _models(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from state.model_registry import kept_record, model_info, set_pinned
    settings = load_job_settings(parse_overrides(args.overrides))
    client = settings.redis.client()
    keys = settings.redis.keys()
    try:
        if args.action == "list":
            from persona.model_listing import model_listing
            print(model_listing(client, keys, as_json=args.json))
            return 0
        if args.action == "pin":
            record = kept_record(client, keys, args.model, args.version)
            if record is None:
                info = model_info(client, keys, args.model)
                kept = info["versions"] if info else []
                raise ConfigError(f"{args.model} version {args.version} is not kept (kept: {kept or 'none'})")
            record = {**record, "kind": "pin"}
        else:
            record = {"schema_version": 1, "kind": "unpin", "model": args.model}
        # Scorers follow Redis within models.refresh_ms; the models topic keeps the record for its readers.
        set_pinned(client, keys, args.model, args.version if args.action == "pin" else None)
        try:
            producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
            producer.send(settings.kafka.topics.models, key=f"{args.model}:pin".encode(),
                          value=json.dumps(record).encode())
            producer.flush(timeout=30)
            producer.close()
        except KafkaError as e:
            print(f"persona models: warning: the pin is in effect but was not recorded on the models topic ({e})",
                  file=sys.stderr)
        print(f"{args.model}: " + (f"pinned to version {args.version}" if args.action == "pin" else "serving the newest version"))
        return 0
    except redis.RedisError as e:
        raise ConfigError(f"redis.url: {settings.redis.masked_url} did not answer ({e})") from None
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
