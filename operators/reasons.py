"""Why a record was dead-lettered, why a trigger was suppressed, what a limit kept out: the values consumers see
(the dead-letter ``reason``, the counters ``ingest.rejected.<reason>``, ``personalize.suppressed.<reason>`` and
``personalize.dropped.<what>``). ``StrEnum``s: each member is its string, in JSON and in metric names.

>>> RejectReason("bad_json") is RejectReason.BAD_JSON, f"{SuppressReason.FREQUENCY_CAP}"
(True, 'frequency_cap')
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    LATE_EVENT = "late_event"
    KEY_MISMATCH = "key_mismatch"
    # Limits (docs/contract.md "Limits") and containment: an exception while processing one record dead-letters it.
    RECORD_TOO_LARGE = "record_too_large"
    TOO_DEEP = "too_deep"
    EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
    PROCESSING_ERROR = "processing_error"


class SuppressReason(StrEnum):
    # The trigger gate (operators/trigger_gate.py).
    NO_CONSENT = "no_consent"
    FREQUENCY_CAP = "frequency_cap"
    USER_CAP = "user_cap"
    # The pattern engine (operators/pattern_engine.py).
    BOT = "bot"
    CANCELLED_BEFORE_RELEASE = "cancelled_before_release"
    NO_CONSENT_AT_RELEASE = "no_consent_at_release"
    EXPERIMENT_HOLDOUT = "experiment_holdout"
    # A rule switch (docs/behaviour.md "Rules at runtime"): a pending match of a pattern removed, or whose state was reset.
    PATTERN_REMOVED = "pattern_removed"
    PATTERN_RESET = "pattern_reset"
    # Loading history (docs/history.md): a match decided at an event time before ``history.triggers_before_ms``.
    HISTORY = "history"


class Dropped(StrEnum):
    """What the profile fold kept out of a state (``operators/profile_fold.py``)."""

    CART_ITEM = "cart_item"
    DEMOGRAPHIC_ATTRIBUTE = "demographic_attribute"
    PII_ATTRIBUTE = "pii_attribute"
