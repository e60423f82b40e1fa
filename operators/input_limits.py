"""Bounds on what one input record may be, checked before and while it is parsed (docs/contract.md "Limits").

Each bound is a setting (``limits.*`` in ``conf/job.yaml``); past it a record is dead-lettered with a reason
of its own, never allowed to crash the job or grow a user's state without bound.

>>> lim = InputLimits(max_json_depth=3)
>>> json_depth({"a": [{"b": 1}]})
3
>>> too_deep(b'{"a":[{"b":[1]}]}', {"a": [{"b": [1]}]}, lim)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Plain values from settings (Flink pickles the functions that hold them)."""

    max_record_bytes: int = 65_536
    max_json_depth: int = 12
    max_purchase_items: int = 500
    max_event_age_ms: int = 366 * 86_400_000        # event_time at most this far before ingestion ...
    max_event_future_ms: int = 3_600_000            # ... and at most this far after it (clock skew)
    dead_letter_raw_bytes: int = 16_384             # a longer raw record is kept as a prefix + length + SHA-256
    # Privacy (docs/privacy.md): context.ip becomes a country; these fields are masked in dead letters.
    ip_geolocation: bool = True
    masked_fields: frozenset[str] = frozenset({"ip", "email", "phone", "name", "first_name", "last_name"})


def json_depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((v, depth) for v in value if isinstance(v, (dict, list)))
    return deepest


def too_deep(raw: bytes, doc: Any, limits: InputLimits) -> bool:
    """True when ``doc`` nests deeper than allowed. The count of opening brackets bounds the depth from
    above and costs two C-level scans, so the walk runs only for records with many containers."""
    if raw.count(b"{") + raw.count(b"[") <= limits.max_json_depth:
        return False
    return json_depth(doc) > limits.max_json_depth
