"""Ways a real event gets broken on its way to Kafka, each with the dead-letter reason the job must give it."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

EXPECTED_REASON = {
    "bad_json": "bad_json",
    "not_utf8": "not_utf8",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "unknown_event_type": "unknown_event_type",
    "absurd_value": "invalid_value",
}
UNKNOWN_TYPES = ("click", "wishlist_add", "page_vue", "checkout_started")

# Per event type: payload fields that are required, and absurd values that break a bound of the schema.
_REQUIRED_PAYLOAD = {
    "page_view": ("page_type",), "search": ("query",),
    "add_to_cart": ("product_id", "category", "price", "currency", "quantity"),
    "remove_from_cart": ("product_id", "category", "price", "currency", "quantity"),
    "purchase": ("order_id", "items", "total", "currency"), "profile_update": ("attributes",),
}
_ABSURD_PAYLOAD: dict[str, tuple[tuple[str, Any], ...]] = {
    "page_view": (("dwell_ms", -1200), ("dwell_ms", 10**12)),
    "add_to_cart": (("price", -19.99), ("quantity", 100_000), ("price", 5e9)),
    "remove_from_cart": (("price", -4.5), ("quantity", 0)),
    "purchase": (("total", -10.0), ("total", 1e13)),
}


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def corrupt(event: dict[str, Any], kind: str, rng: random.Random) -> tuple[bytes, bool]:
    """Return (bytes, whether the user_id key is still meaningful). Never mutates ``event``."""
    doc = copy.deepcopy(event)
    if kind == "bad_json":
        text = _dumps(doc)
        return text[: rng.randint(1, len(text) - 1)], True
    if kind == "not_utf8":
        text = _dumps(doc)
        pos = rng.randint(0, len(text))
        return text[:pos] + rng.choice((b"\xff", b"\xc3\x28", b"\xfe\xfe")) + text[pos:], True
    if kind == "missing_field":
        required = _REQUIRED_PAYLOAD.get(doc["event_type"], ())
        if required and rng.random() < 0.5:
            del doc["payload"][rng.choice(required)]
            return _dumps(doc), True
        victim = rng.choice(("event_id", "event_type", "user_id", "event_time", "schema_version", "payload"))
        del doc[victim]
        return _dumps(doc), victim != "user_id"
    if kind == "wrong_type":
        victim, value = rng.choice((("user_id", 12345), ("event_time", 1_762_000_000), ("payload", "oops"),
                                    ("event_id", ["e"]), ("session_id", 7)))
        doc[victim] = value
        return _dumps(doc), victim != "user_id"
    if kind == "unknown_event_type":
        doc["event_type"] = rng.choice(UNKNOWN_TYPES)
        return _dumps(doc), True
    if kind == "absurd_value":
        options = _ABSURD_PAYLOAD.get(doc["event_type"])
        if options:
            key, value = rng.choice(options)
            doc["payload"][key] = value
        else:
            doc["event_time"] = rng.choice(("2026-13-45T25:61:00+00:00", "2026-11-02T08:00:00"))
        return _dumps(doc), True
    raise ValueError(f"unknown malformation kind {kind!r}")
