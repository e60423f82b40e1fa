"""Named records that flow through the job: a validated ``Event`` and a ``Rejection`` for the dead-letter topic."""

from __future__ import annotations

from typing import Any

import msgspec

from operators.reasons import RejectReason

EVENT_TYPES = frozenset({
    "page_view", "search", "add_to_cart", "remove_from_cart", "purchase", "consent", "profile_update",
    "erasure_request",
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

    reason: RejectReason
    detail: str
    field: str | None = None

    def __post_init__(self) -> None:
        RejectReason(self.reason)   # a ValueError for a reason that is not one
