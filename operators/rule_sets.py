"""Rule sets as versioned data: a pattern file published as version N, with its pattern versions and a diff.

Pure (no Redis): ``state/rule_registry.py`` stores the records, ``persona rules`` publishes them and the job
switches to the newest one at runtime (docs/behaviour.md "Rules at runtime").

Two numbers per pattern are derived at publication against version N-1:

- its **pattern version**: the rule-set version in which its definition last changed (any field);
- its **state version**: the rule-set version in which the part of its definition that its per-user state
  depends on last changed (an absence pattern's anchor and cancel steps, a threshold's ``check_on`` and
  ``when``, an escalation's ``of`` and ``count``). A user's pattern state built under version M stays valid
  under N when the pattern's state version in N is at most M; otherwise it is reset, and said so.

A change of ``within``, ``reason`` or ``include_cart`` keeps the state: matches armed before the change keep
the deadline they were armed with, new anchors get the new one.

>>> v1 = next_rule_set(None, "version: 1\\ngate: {frequency_cap: {max: 1, per: 24h}, quiet_hours: {start: 22, end: 8}}\\n"
...                    "patterns: {p: {kind: absence, anchor: {event: add_to_cart}, cancel: [{event: purchase}], within: 30m}}",
...                    "ana", 0)
>>> v2 = next_rule_set(v1, v1.source.replace("30m", "10m"), "ana", 1)
>>> v2.version, v2.patterns["p"], v2.diff
(2, (2, 1), ['~ patterns.p.within: 30m -> 10m (pattern state kept)'])
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import yaml

from operators.config_files import ConfigError
from operators.pattern_spec import PatternBook, compile_patterns
from state.rule_set_record import RuleSet

# The fields of a pattern that its per-user state depends on (see the module docstring).
STATE_FIELDS = {"absence": ("kind", "anchor", "cancel"), "threshold": ("kind", "check_on", "when"),
                "escalation": ("kind", "of", "count", "scope")}


def book_of(rule_set: RuleSet) -> PatternBook:
    """The compiled patterns of a published rule set, each stamped with its versions, and the book with the
    rule-set version."""
    where = f"rule set v{rule_set.version}"
    book = compile_patterns(parse_source(rule_set.source, where), where)
    specs = tuple(replace(p, version=rule_set.patterns[p.name][0], state_version=rule_set.patterns[p.name][1])
                  for p in book.patterns)
    return replace(book, patterns=specs, version=rule_set.version)



def parse_source(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from None


def _patterns_doc(source: str) -> dict[str, Any]:
    doc = yaml.safe_load(source) or {}
    return dict(doc.get("patterns") or {})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _state_part(doc: dict[str, Any]) -> str:
    kind = doc.get("kind")
    return _canonical({k: doc.get(k) for k in STATE_FIELDS.get(str(kind), ("kind",))})


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to scalar leaves (lists by index), for a readable diff."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out |= flatten(v, f"{prefix}.{i}")
        return out or {prefix: []}
    return {prefix: value}


def rule_diff(old_source: str | None, new_source: str) -> list[str]:
    """One line per changed setting (``+`` added, ``-`` removed, ``~`` changed), with what happens to the state
    of the pattern it belongs to."""
    old_doc = yaml.safe_load(old_source) if old_source else {}
    new_doc = yaml.safe_load(new_source) or {}
    old_patterns, new_patterns = dict((old_doc or {}).get("patterns") or {}), dict(new_doc.get("patterns") or {})
    lines = []
    for name in sorted(old_patterns.keys() - new_patterns.keys()):
        lines.append(f"- patterns.{name} (removed: its pending matches are dropped and counted; triggers already "
                     "deferred by quiet hours are still released)")
    for name in sorted(new_patterns.keys() - old_patterns.keys()):
        lines.append(f"+ patterns.{name} ({new_patterns[name].get('kind')})")
    a, b = flatten({k: v for k, v in (old_doc or {}).items() if k != "patterns"}), \
        flatten({k: v for k, v in new_doc.items() if k != "patterns"})
    lines += [_change(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    for name in sorted(old_patterns.keys() & new_patterns.keys()):
        a, b = flatten(old_patterns[name], f"patterns.{name}"), flatten(new_patterns[name], f"patterns.{name}")
        changed = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        if not changed:
            continue
        kept = _state_part(old_patterns[name]) == _state_part(new_patterns[name])
        note = "pattern state kept" if kept else "pattern state reset: its pending matches are dropped and counted"
        lines += [f"{_change(k, a.get(k), b.get(k))} ({note})" for k in changed]
    return lines


def _change(key: str, old: Any, new: Any) -> str:
    if old is None:
        return f"+ {key}: {new}"
    if new is None:
        return f"- {key}: {old}"
    return f"~ {key}: {old} -> {new}"


def next_rule_set(previous: RuleSet | None, source: str, published_by: str, published_at: int, note: str = "",
                  rollback_of: int | None = None) -> RuleSet:
    """Version ``previous.version + 1`` of ``source`` (compiled first: a broken file is a ConfigError)."""
    version = previous.version + 1 if previous else 1
    compile_patterns(parse_source(source, "rule set"), "rule set")
    new = _patterns_doc(source)
    old = _patterns_doc(previous.source) if previous else {}
    versions: dict[str, tuple[int, int]] = {}
    for name, doc in new.items():
        if previous is None or name not in old or name not in previous.patterns:
            versions[name] = (version, version)
            continue
        pattern_version, state_version = previous.patterns[name]
        if _canonical(doc) != _canonical(old[name]):
            pattern_version = version
        if _state_part(doc) != _state_part(old[name]):
            state_version = version
        versions[name] = (pattern_version, state_version)
    return RuleSet(version, source, published_by, published_at, versions,
                   rule_diff(previous.source if previous else None, source), note, rollback_of)
