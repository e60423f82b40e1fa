"""Command-line front of every job: settings file, overrides, deployment; usage errors, not tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from persona.settings import ConfigError, JobSettings, load_job_settings, parse_overrides


def parse_job_args(prog: str, description: str, argv: Sequence[str] | None) -> tuple[argparse.Namespace, JobSettings]:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--conf", type=Path, default=None, help="job settings file (default: conf/job.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set kafka.topics.events=my.events (repeatable)")
    parser.add_argument("--deployment", choices=("local", "cluster"), default="local",
                        help="local: embedded mini-cluster (adds the connector jars); cluster: submitted with flink run")
    parser.add_argument("--bounded", action="store_true",
                        help="stop at the offsets that are latest at start (tests, replays)")
    parser.add_argument("--quiet", action="store_true", help="no live line (events/s, dead letters, triggers)")
    parser.add_argument("--from-savepoint", metavar="PATH",
                        help="local: restore state and offsets from this savepoint (persona backfill prints it)")
    parser.add_argument("--allow-non-restored-state", action="store_true",
                        help="with --from-savepoint: drop state of operators this job does not have (a sink of the "
                             "backfill's dry-run topic)")
    parser.add_argument("--savepoint-at-end", metavar="DIR",
                        help="read the topic to the offsets that are latest at start, then stop with a savepoint in "
                             "DIR (persona backfill)")
    args = parser.parse_args(argv)
    if args.allow_non_restored_state and not args.from_savepoint:
        parser.error("--allow-non-restored-state needs --from-savepoint")
    if args.bounded and args.savepoint_at_end:
        parser.error("--bounded and --savepoint-at-end exclude each other (a finished job takes no savepoint)")
    if args.deployment == "cluster" and (args.savepoint_at_end or args.from_savepoint):
        parser.error("--savepoint-at-end and --from-savepoint are for the embedded mini-cluster; on a cluster, "
                     "persona cluster submit --from-savepoint and persona cluster stop --savepoint")
    try:
        settings = load_job_settings(parse_overrides(args.overrides), args.conf)
        if args.deployment == "local":
            settings.flink.connector_jars()
    except ConfigError as e:
        fail(prog, str(e))
    return args, settings


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
