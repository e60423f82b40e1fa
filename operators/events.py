"""Named records that flow through the job: a validated ``Event`` and a ``Rejection`` for the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVENT_TYPES = frozenset({
    "page_view", "search", "add_to_cart", "remove_from_cart", "purchase", "consent", "profile_update",
    "erasure_request",
})

REJECTION_REASONS = frozenset({
    "not_utf8", "bad_json", "not_an_object", "missing_field", "wrong_type", "invalid_value",
    "unknown_event_type", "unsupported_schema_version", "late_event", "key_mismatch",
})


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from, so a dead-letter entry can be traced and replayed."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A validated, normalised event. Times are epoch ms UTC; money is integer minor units.

    ``payload`` is normalised per event type (see ``operators.validation``); ``context`` keeps the
    known context keys only, with enums lower-cased and the IP address removed.
    """

    event_id: str
    event_type: str
    user_id: str
    event_time_ms: int
    session_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    # Kept so a decision taken later (a late event) can still dead-letter the original bytes.
    raw: bytes | None = field(default=None, repr=False, compare=False)
    source: SourceRef | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was refused. ``field`` is a dotted path (``payload.price``) or None for the whole record."""

    reason: str
    detail: str
    field: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")
