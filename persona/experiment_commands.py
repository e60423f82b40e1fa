"""``persona experiments show NAME | list``: per-variant tallies of experiments on triggers, from Redis."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from operators.config_files import ConfigError
from operators.rule_sets import book_of
from persona.rules import redis_client, redis_reachable
from persona.settings import JobSettings
from state.keys import RedisKeys
from state.rule_registry import current_rule_set


def read_experiment(client: redis.Redis, keys: RedisKeys, name: str) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.hget(keys.experiment(name), "summary"))
    return json.loads(raw) if raw else None


def table(name: str, summary: dict[str, Any]) -> str:
    lines = [f"experiment {name}",
             f"  {'variant':12} {'exposed':>8} {'converted':>9} {'rate':>7}  {'95% interval':17} {'share':>6}"]
    for variant, x in summary.items():
        rate = f"{x['rate']:.1%}" if x["rate"] is not None else "-"
        low, high = x["ci95"]
        label = f"{variant} (holdout)" if x.get("holdout") else variant
        lines.append(f"  {label:12} {x['exposed']:>8,} {x['converted']:>9,} {rate:>7}  [{low:.1%}, {high:.1%}]"
                     f"{'':2} {x['share']:>6.1%}")
    sent = {v: x for v, x in summary.items() if not x.get("holdout") and x["exposed"]}
    if sent:
        best = max(sent, key=lambda v: sent[v]["rate"] or 0)
        lines.append(f"  ahead: {best}" + ("" if _separated(best, summary) else " (intervals overlap: not yet clear)"))
    return "\n".join(lines)


def _separated(best: str, summary: dict[str, Any]) -> bool:
    low = summary[best]["ci95"][0]
    return all(x["ci95"][1] < low for v, x in summary.items() if v != best and x["exposed"])


def run_experiments_command(action: str, settings: JobSettings, name: str | None, as_json: bool) -> int:
    keys = settings.redis.keys()
    with redis_reachable(settings):
        client = redis_client(settings)
        try:
            if action == "show":
                assert name is not None
                summary = read_experiment(client, keys, name)
                if summary is None:
                    raise ConfigError(f"experiment {name!r} has no outcome yet under redis.key_prefix={keys.prefix!r}")
                print(json.dumps(summary, sort_keys=True, indent=2) if as_json else table(name, summary))
                return 0
            rules = current_rule_set(client, keys)
            names = sorted(p.experiment.name for p in book_of(rules).patterns if p.experiment) if rules else []
            if not names:
                print("no experiment in the rule set in force")
            for n in names:
                summary = read_experiment(client, keys, n)
                print(table(n, summary) if summary else f"experiment {n}: no outcome yet")
            return 0
        finally:
            client.close()
