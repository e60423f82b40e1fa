"""One published version of the pattern file, as the rule-set registry stores it (``state/rule_registry.py``).

Its patterns are compiled by ``operators.rule_sets.book_of``; its numbering and diff are derived there too.

>>> r = RuleSet(2, "version: 1", "ana", 5, {"p": (2, 1)}, ["~ patterns.p.within: 30m -> 10m"])
>>> RuleSet.from_json(r.to_json()) == r
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

RULE_SET_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One published version of the pattern file."""

    version: int
    source: str                              # the YAML text as published
    published_by: str
    published_at: int                        # epoch ms
    patterns: dict[str, tuple[int, int]]     # name -> (pattern version, state version)
    diff: list[str] = field(default_factory=list)   # against version - 1
    note: str = ""
    rollback_of: int | None = None

    def to_json(self) -> str:
        return json.dumps({"schema_version": RULE_SET_SCHEMA_VERSION, "version": self.version, "source": self.source,
                           "published_by": self.published_by, "published_at": self.published_at,
                           "patterns": {k: list(v) for k, v in self.patterns.items()}, "diff": self.diff,
                           "note": self.note, "rollback_of": self.rollback_of}, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> RuleSet:
        doc = json.loads(text)
        return RuleSet(int(doc["version"]), doc["source"], doc["published_by"], int(doc["published_at"]),
                       {k: (int(v[0]), int(v[1])) for k, v in doc["patterns"].items()}, list(doc.get("diff", [])),
                       doc.get("note", ""), doc.get("rollback_of"))
