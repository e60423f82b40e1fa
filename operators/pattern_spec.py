"""Pattern definitions are data (``conf/patterns.yaml``), compiled and validated here at start-up.

Vocabulary (docs/behaviour.md "Patterns"):

- a **step** ``{event: TYPE, where: {FIELD: {OP: VALUE}, ...}}`` matches an event of that type whose
  fields satisfy every condition. ``FIELD`` is ``event.<payload field>``, ``context.<field>`` or
  ``profile.<field>`` (the profile just after the event, dotted for nested: ``profile.rfm.frequency_30d``);
  ``OP`` is one of ``eq ne gt gte lt lte in``;
- ``kind: absence``: an ``anchor`` step, then none of the ``cancel`` steps ``within`` a duration;
- ``kind: threshold``: on a ``check_on`` step, fires when ``when`` becomes true (edge-triggered: it fires
  again only after having been false);
- ``kind: escalation``: the ``count``-th match of pattern ``of`` in one session replaces that match's
  trigger with this pattern's.

Durations are ``<n>ms|s|m|h|d``. Every error names the pattern and the field, on one line.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from operators.config_files import ConfigError, mapping, only_fields, read_yaml
from operators.events import EVENT_TYPES, Event
from operators.experiments import POLICIES, ExperimentSpec
from operators.list_rules import NO_LIST_RULES, ListRules, compile_list_rules
from operators.profile_fold import PROFILE_FIELD_NAMES, WINDOWS
from state.windows import MEASURES

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt,
    "lte": operator.le, "in": lambda a, b: a in b,
}
# Scalar profile fields a condition may read, derived from the profile view (nested ones dotted).
PROFILE_FIELDS = frozenset({
    *(f for f in PROFILE_FIELD_NAMES if f not in {"schema_version", "user_id", "counts_by_type", "windows", "rfm",
                                                  "recent_sessions", "affinities", "device_mix", "demographics"}),
    *(f"rfm.{k}" for k in ("recency_days", "frequency_30d", "frequency_90d", "monetary_30d", "monetary_90d", "r", "f",
                           "m", "score")),
    *(f"windows.{w}.{m}" for w in WINDOWS for m in MEASURES),
})
CONTEXT_FIELDS = frozenset({"device", "os", "country", "region", "locale", "timezone", "referrer"})
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Condition:
    source: str      # event | context | profile
    path: tuple[str, ...]
    op: str
    value: Any

    def holds(self, event: Event, profile: Mapping[str, Any]) -> bool:
        node: Any = {"event": event.payload, "context": event.context, "profile": profile}[self.source]
        for part in self.path:
            node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
        if node is _MISSING or node is None:
            return False
        try:
            return OPS[self.op](node, self.value)
        except TypeError:
            return False


@dataclass(frozen=True, slots=True)
class Step:
    event_type: str
    where: tuple[Condition, ...] = ()

    def matches(self, event: Event, profile: Mapping[str, Any]) -> bool:
        return event.event_type == self.event_type and all(c.holds(event, profile) for c in self.where)


MAX_TRIGGER_LIST = 20   # items a trigger may carry (``include_list``); a message shows a few


@dataclass(frozen=True, slots=True)
class PatternSpec:
    name: str
    kind: str                               # absence | threshold | escalation
    reason: str
    anchor: Step | None = None              # absence
    cancel: tuple[Step, ...] = ()           # absence; threshold (optional): drops a trigger deferred by quiet hours
    within_ms: int = 0                      # absence
    on: Step | None = None                  # threshold
    when: tuple[Condition, ...] = ()        # threshold
    of: str | None = None                   # escalation
    count: int = 0                          # escalation
    include_cart: bool = False
    # From the rule-set registry (operators/rule_sets.py; 0 for a file read directly): the rule-set version in
    # which this pattern's definition last changed, and the one in which its state-defining part last changed.
    version: int = 0
    state_version: int = 0
    experiment: ExperimentSpec | None = None   # variants of this pattern's trigger (docs/behaviour.md "Experiments")
    # The trigger carries the first N items of the user's personal list when it is sent, e.g. alternatives in an
    # abandonment message (docs/recommendations.md "In triggers"); 0: none.
    include_list: int = 0


@dataclass(frozen=True, slots=True)
class GateSpec:
    frequency_cap: int
    frequency_window_ms: int
    quiet_start_hour: int
    quiet_end_hour: int
    # Optional cap per user across patterns: at most ``user_cap`` triggers per ``user_cap_window_ms`` (0: none).
    # Matches made in one step are gated in ``priority`` order (then file order), so the first pattern wins a
    # last slot: e.g. one add-to-cart that is both a cart abandonment and a high-intent mobile match.
    user_cap: int = 0
    user_cap_window_ms: int = 0
    priority: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PatternBook:
    patterns: tuple[PatternSpec, ...]
    gate: GateSpec
    version: int = 0        # the rule-set version (operators/rule_sets.py); 0 for a file read directly
    lists: ListRules = NO_LIST_RULES   # the ``recommend:`` section (operators/list_rules.py)

    def by_name(self, name: str) -> PatternSpec:
        return next(p for p in self.patterns if p.name == name)


# ----------------------------------------------------------------------------- compiling
def parse_duration(text: Any, where: str) -> int:
    match = _DURATION.match(str(text)) if isinstance(text, (str, int)) else None
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{where}: {text!r} is not a positive duration like 30m, 2h or 7d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _condition(field: str, test: Any, where: str) -> Condition:
    source, _, rest = field.partition(".")
    if source == "profile" and rest not in PROFILE_FIELDS:
        raise ConfigError(f"{where}.{field}: unknown profile field {rest!r}")
    if source == "context" and rest not in CONTEXT_FIELDS:
        raise ConfigError(f"{where}.{field}: unknown context field {rest!r}")
    if source not in ("event", "context", "profile") or not rest:
        raise ConfigError(f"{where}.{field}: a field starts with event., context. or profile.")
    test = mapping(test, f"{where}.{field}")
    if len(test) != 1 or next(iter(test)) not in OPS:
        raise ConfigError(f"{where}.{field}: expected one operator of {', '.join(OPS)}")
    op, value = next(iter(test.items()))
    if op == "in" and not isinstance(value, list):
        raise ConfigError(f"{where}.{field}.in: expected a list")
    return Condition(source, tuple(rest.split(".")), op, tuple(value) if op == "in" else value)


def _conditions(doc: Any, where: str) -> tuple[Condition, ...]:
    return tuple(_condition(f, t, where) for f, t in mapping(doc, where).items())


def _step(doc: Any, where: str) -> Step:
    doc = mapping(doc, where)
    only_fields(doc, {"event", "where"}, where)
    event_type = doc.get("event")
    if event_type not in EVENT_TYPES:
        raise ConfigError(f"{where}.event: {event_type!r} is not an event type ({', '.join(sorted(EVENT_TYPES))})")
    return Step(event_type, _conditions(doc.get("where", {}), f"{where}.where"))


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _experiment(doc: Any, where: str, pattern: str) -> ExperimentSpec:
    doc = mapping(doc, where)
    only_fields(doc, {"name", "variants", "holdout", "policy", "outcome"}, where)
    name = doc.get("name", pattern)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} is not a name of letters, digits, '_', '.' or '-'")
    variants = mapping(doc.get("variants"), f"{where}.variants")
    for variant, weight in variants.items():
        if not isinstance(variant, str) or not _NAME.match(variant):
            raise ConfigError(f"{where}.variants: {variant!r} is not a name of letters, digits, '_', '.' or '-'")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"{where}.variants.{variant}: expected a positive weight")
    holdout = doc.get("holdout")
    if holdout is not None and holdout not in variants:
        raise ConfigError(f"{where}.holdout: {holdout!r} is not one of the variants")
    if len(variants) < 2 or len([v for v in variants if v != holdout]) < 1:
        raise ConfigError(f"{where}.variants: expected at least two variants, one of them sent")
    policy = doc.get("policy", "fixed")
    if policy not in POLICIES:
        raise ConfigError(f"{where}.policy: {policy!r} is not one of {', '.join(POLICIES)}")
    outcome = mapping(doc.get("outcome"), f"{where}.outcome")
    only_fields(outcome, {"event", "where", "within"}, f"{where}.outcome")
    step = _step({k: v for k, v in outcome.items() if k != "within"}, f"{where}.outcome")
    return ExperimentSpec(name, tuple((v, float(w)) for v, w in variants.items()), holdout, policy,
                          parse_duration(outcome.get("within"), f"{where}.outcome.within"), step)


def _pattern(name: str, doc: Any, names: set[str]) -> PatternSpec:
    spec = _pattern_kind(name, doc, names)
    if isinstance(doc, dict) and doc.get("experiment") is not None:
        spec = replace(spec, experiment=_experiment(doc["experiment"], f"patterns.{name}.experiment", name))
    if isinstance(doc, dict) and doc.get("include_list") is not None:
        n = doc["include_list"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TRIGGER_LIST:
            raise ConfigError(f"patterns.{name}.include_list: expected an integer 1..{MAX_TRIGGER_LIST}, got {n!r}")
        spec = replace(spec, include_list=n)
    return spec


def _pattern_kind(name: str, doc: Any, names: set[str]) -> PatternSpec:
    where = f"patterns.{name}"
    doc = mapping(doc, where)
    doc = {k: v for k, v in doc.items() if k not in ("experiment", "include_list")}
    kind = doc.get("kind")
    common = {"kind", "reason"}
    reason = str(doc.get("reason", name.replace("_", " ")))
    if kind == "absence":
        only_fields(doc, common | {"anchor", "cancel", "within", "include_cart"}, where)
        if "anchor" not in doc or "within" not in doc:
            raise ConfigError(f"{where}: absence needs anchor and within")
        cancels = doc.get("cancel", [])
        if not isinstance(cancels, list) or not cancels:
            raise ConfigError(f"{where}.cancel: expected a non-empty list of steps")
        return PatternSpec(name, kind, reason, anchor=_step(doc["anchor"], f"{where}.anchor"),
                           cancel=tuple(_step(c, f"{where}.cancel.{i}") for i, c in enumerate(cancels)),
                           within_ms=parse_duration(doc["within"], f"{where}.within"),
                           include_cart=bool(doc.get("include_cart", False)))
    if kind == "threshold":
        only_fields(doc, common | {"check_on", "when", "include_cart", "cancel"}, where)
        if "check_on" not in doc or "when" not in doc:
            raise ConfigError(f"{where}: threshold needs check_on and when")
        cancels = doc.get("cancel", [])
        if not isinstance(cancels, list):
            raise ConfigError(f"{where}.cancel: expected a list of steps")
        return PatternSpec(name, kind, reason, on=_step(doc["check_on"], f"{where}.check_on"),
                           when=_conditions(doc["when"], f"{where}.when"),
                           cancel=tuple(_step(c, f"{where}.cancel.{i}") for i, c in enumerate(cancels)),
                           include_cart=bool(doc.get("include_cart", False)))
    if kind == "escalation":
        only_fields(doc, common | {"of", "count", "scope"}, where)
        if doc.get("of") not in names or doc.get("of") == name:
            raise ConfigError(f"{where}.of: {doc.get('of')!r} is not another pattern in this file")
        if not isinstance(doc.get("count"), int) or doc["count"] < 2:
            raise ConfigError(f"{where}.count: expected an integer of at least 2")
        if doc.get("scope", "session") != "session":
            raise ConfigError(f"{where}.scope: only 'session' is supported")
        return PatternSpec(name, kind, reason, of=doc["of"], count=doc["count"], include_cart=True)
    raise ConfigError(f"{where}.kind: {kind!r} is not one of absence, threshold, escalation")


def compile_patterns(doc: Any, source: str = "conf/patterns.yaml") -> PatternBook:
    try:
        doc = mapping(doc, "(top level)")
        only_fields(doc, {"version", "gate", "patterns", "recommend"}, "(top level)")
        if doc.get("version") != 1:
            raise ConfigError(f"version: {doc.get('version')!r} is not 1")
        gate = mapping(doc.get("gate"), "gate")
        only_fields(gate, {"frequency_cap", "quiet_hours", "max_per_user"}, "gate")
        cap = mapping(gate.get("frequency_cap"), "gate.frequency_cap")
        quiet = mapping(gate.get("quiet_hours"), "gate.quiet_hours")
        if not isinstance(cap.get("max"), int) or cap["max"] < 1:
            raise ConfigError("gate.frequency_cap.max: expected a positive integer")
        for k in ("start", "end"):
            if not isinstance(quiet.get(k), int) or not 0 <= quiet[k] <= 23:
                raise ConfigError(f"gate.quiet_hours.{k}: expected an hour 0..23")
        patterns = mapping(doc.get("patterns"), "patterns")
        if not patterns:
            raise ConfigError("patterns: at least one pattern is needed")
        names = set(patterns)
        user_cap, user_window, priority = 0, 0, ()
        if gate.get("max_per_user") is not None:
            per_user = mapping(gate["max_per_user"], "gate.max_per_user")
            only_fields(per_user, {"max", "per", "priority"}, "gate.max_per_user")
            if not isinstance(per_user.get("max"), int) or per_user["max"] < 1:
                raise ConfigError("gate.max_per_user.max: expected a positive integer")
            user_cap = per_user["max"]
            user_window = parse_duration(per_user.get("per"), "gate.max_per_user.per")
            order = per_user.get("priority", [])
            if not isinstance(order, list) or any(p not in names for p in order) or len(set(order)) != len(order):
                raise ConfigError(f"gate.max_per_user.priority: expected distinct pattern names of this file, got {order!r}")
            priority = tuple(order)
        gate_spec = GateSpec(cap["max"], parse_duration(cap.get("per"), "gate.frequency_cap.per"), quiet["start"],
                             quiet["end"], user_cap, user_window, priority)
        specs = tuple(_pattern(n, d, names) for n, d in patterns.items())
        experiments = [p.experiment.name for p in specs if p.experiment is not None]
        if len(set(experiments)) != len(experiments):
            twice = sorted({e for e in experiments if experiments.count(e) > 1})[0]
            raise ConfigError(f"patterns: experiment {twice!r} is declared by more than one pattern")
        return PatternBook(specs, gate_spec, lists=compile_list_rules(doc.get("recommend")))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


DEFAULT_PATTERNS = Path(__file__).resolve().parent.parent / "conf" / "patterns.yaml"


def load_patterns(path: Path | None = None) -> PatternBook:
    path = path or DEFAULT_PATTERNS
    return compile_patterns(read_yaml(path), str(path))
