"""Named records that flow through the job: a validated ``Event`` and a ``Rejection`` for the dead-letter topic."""

from __future__ import annotations

from typing import Any

import msgspec

EVENT_TYPES = frozenset({
    "page_view", "search", "add_to_cart", "remove_from_cart", "purchase", "consent", "profile_update",
    "erasure_request",
})

REJECTION_REASONS = frozenset({
    "not_utf8", "bad_json", "not_an_object", "missing_field", "wrong_type", "invalid_value",
    "unknown_event_type", "unsupported_schema_version", "late_event", "key_mismatch",
    # Limits (README "Limits") and containment: an exception while processing one record dead-letters it.
    "record_too_large", "too_deep", "event_time_out_of_range", "processing_error",
})


class SourceRef(msgspec.Struct, frozen=True):
    """Where a record came from, so a dead-letter entry can be traced and replayed."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class Event(msgspec.Struct, frozen=True):
    """A validated, normalised event. Times are epoch ms UTC; money is integer minor units.

    ``payload`` is normalised per event type (see ``operators.validation``); ``context`` keeps the
    known context keys only, with enums lower-cased and the IP address removed. (A msgspec Struct: one
    is made per event, and a frozen dataclass sets each field through ``object.__setattr__``.)
    """

    event_id: str
    event_type: str
    user_id: str
    event_time_ms: int
    session_id: str | None = None
    context: dict[str, Any] = {}
    payload: dict[str, Any] = {}


class Rejection(msgspec.Struct, frozen=True):
    """Why a record was refused. ``field`` is a dotted path (``payload.price``) or None for the whole record."""

    reason: str
    detail: str
    field: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")
