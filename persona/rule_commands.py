"""``persona rules publish | list | show | diff | rollback``: the rule-set registry from the command line.

Every command reads the registry under ``redis.key_prefix`` (``--set`` and the environment overrides apply).
Running jobs switch to a published version within ``rules.refresh_ms`` (docs/behaviour.md "Rules at runtime").
"""

from __future__ import annotations

import getpass
import os
import time
from pathlib import Path

import redis

from operators.config_files import ConfigError
from operators.rule_sets import rule_diff
from persona.rules import publish_rules, read_text, redis_client, redis_reachable
from persona.settings import JobSettings
from state.keys import RedisKeys
from state.rule_registry import all_rule_sets, applied, current_version, rule_set
from state.rule_set_record import RuleSet


def publisher() -> str:
    """Who publishes: ``PERSONA_USER``, else the login name."""
    try:
        return os.environ.get("PERSONA_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _describe(published: RuleSet, settings: JobSettings) -> str:
    lines = [f"published rule set v{published.version} by {published.published_by} at {_when(published.published_at)}"
             + (f" ({published.note})" if published.note else ""),
             f"running jobs switch to it within {settings.rules.refresh_ms} ms (rules.refresh_ms)"]
    lines += [f"  {line}" for line in published.diff] or ["  no change from the previous version"]
    return "\n".join(lines)


def _get(client: redis.Redis, keys: RedisKeys, version: int) -> RuleSet:
    found = rule_set(client, keys, version)
    if found is None:
        known = [r.version for r in all_rule_sets(client, keys)]
        raise ConfigError(f"rule set v{version} is not in the registry (known: {known or 'none'}; under "
                          f"redis.key_prefix={keys.prefix!r})")
    return found


def run_rules_command(action: str, settings: JobSettings, file: Path | None = None, versions: tuple[int, ...] = (),
                      note: str = "") -> int:
    keys = settings.redis.keys()
    with redis_reachable(settings):
        if action == "publish":
            assert file is not None
            if not file.is_file():
                raise ConfigError(f"{file}: no such pattern file")
            print(_describe(publish_rules(settings, read_text(file), str(file), publisher(), note), settings))
            return 0
        client = redis_client(settings)
        try:
            if action == "rollback":
                old = _get(client, keys, versions[0])
                published = publish_rules(settings, old.source, f"rule set v{old.version}", publisher(),
                                          note or f"rollback to v{old.version}", rollback_of=old.version)
                print(_describe(published, settings))
            elif action == "list":
                print(_listing(client, keys))
            elif action == "show":
                r = _get(client, keys, versions[0])
                print(f"v{r.version} by {r.published_by} at {_when(r.published_at)}" + (f" ({r.note})" if r.note else ""))
                print("patterns (pattern version, state version): " + ", ".join(
                    f"{name} ({pv}, {sv})" for name, (pv, sv) in sorted(r.patterns.items())))
                print(*(f"  {line}" for line in r.diff), sep="\n") if r.diff else None
                print("---")
                print(r.source.rstrip("\n"))
            elif action == "diff":
                a, b = (_get(client, keys, v) for v in versions)
                lines = rule_diff(a.source, b.source)
                print(f"v{a.version} -> v{b.version}")
                print("\n".join(f"  {line}" for line in lines) if lines else "  no difference")
            else:
                raise AssertionError(action)
            return 0
        finally:
            client.close()


def live_rules_file(settings: JobSettings, which: str, folder: Path) -> Path:
    """The pattern file of ``which``: a file path, ``vN`` (a published version) or ``current`` (the one in force);
    a registry version is written to ``folder`` for the dry-run to read."""
    if not (which == "current" or (which.startswith("v") and which[1:].isdigit())):
        path = Path(which)
        if not path.is_file():
            raise ConfigError(f"--live: {which!r} is neither a pattern file, vN nor current")
        return path.resolve()
    keys = settings.redis.keys()
    with redis_reachable(settings):
        client = redis_client(settings)
        try:
            version = current_version(client, keys) if which == "current" else int(which[1:])
            if version is None:
                raise ConfigError(f"--live current: no rule set published under redis.key_prefix={keys.prefix!r}")
            found = _get(client, keys, version)
        finally:
            client.close()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"live-rules-v{found.version}.yaml"
    path.write_text(found.source)
    return path.resolve()


def _listing(client: redis.Redis, keys: RedisKeys) -> str:
    sets = all_rule_sets(client, keys)
    if not sets:
        return f"no rule set published under redis.key_prefix={keys.prefix!r} (a job publishes its pattern file at start-up)"
    current = current_version(client, keys)
    acks = applied(client, keys)
    lines = [f"{'':2}{'version':>7}  {'published (UTC)':20}  {'by':24}  note"]
    for r in sets:
        mark = "*" if r.version == current else ""
        lines.append(f"{mark:2}{'v' + str(r.version):>7}  {_when(r.published_at):20}  {r.published_by[:24]:24}  "
                     f"{r.note or ('rollback to v' + str(r.rollback_of) if r.rollback_of else '')}")
    lines.append(f"* in force: v{current}")
    if acks:
        lines.append("job subtasks: " + ", ".join(f"{i}: v{a['version']} since {_when(a['at'])}"
                                                   for i, a in sorted(acks.items())))
    return "\n".join(lines)
