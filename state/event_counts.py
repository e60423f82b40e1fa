"""Per-user state of the first vertical-slice job: event counts by type. One compact value per user."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from state.keys import PROFILE_SCHEMA_VERSION

# Persisted state names: renaming one loses state on restore from a savepoint.
EVENT_COUNTS_STATE = "event_counts_v1"


@dataclass(slots=True)
class EventCounts:
    """``version`` is the profile_version: it increases by one with every event applied."""

    version: int = 0
    events_total: int = 0
    last_event_time_ms: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def count_event(state: EventCounts | None, event_type: str, event_time_ms: int) -> EventCounts:
    """Apply one event. Mutates and returns ``state`` (a fresh one for a new user).

    >>> s = count_event(None, "page_view", 10)
    >>> s = count_event(s, "search", 5)
    >>> s.version, s.events_total, s.last_event_time_ms, s.by_type
    (2, 2, 10, {'page_view': 1, 'search': 1})
    """
    s = state if state is not None else EventCounts()
    s.version += 1
    s.events_total += 1
    s.last_event_time_ms = max(s.last_event_time_ms, event_time_ms)
    s.by_type[event_type] = s.by_type.get(event_type, 0) + 1
    return s


def profile_fields(user_id: str, s: EventCounts, now_ms: int) -> dict[str, str]:
    """The Redis hash fields (schemas/profile.v1.json) for this state."""
    return {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "user_id": user_id,
        "profile_version": str(s.version),
        "updated_at": str(now_ms),
        "last_event_time": str(s.last_event_time_ms),
        "events_total": str(s.events_total),
        "counts_by_type": json.dumps(s.by_type, sort_keys=True, separators=(",", ":")),
    }
