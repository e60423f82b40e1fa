"""Parse, validate and normalise raw event bytes against ``schemas/event.v1.json``.

This is a hand-written validator for the hot path (a generic JSON Schema validator costs far more per
event); ``tests/unit/test_validation.py`` checks that it agrees with the schema on every example.

>>> ev = parse_event(b'{"event_id":"e1","event_type":"ADD_TO_CART","user_id":"u1","schema_version":1,'
...     b'"event_time":"2026-11-02T09:00:00+01:00","payload":{"product_id":"p1","category":"shoes",'
...     b'"price":19.99,"currency":"eur","quantity":2}}')
>>> ev.event_type, ev.event_time_ms, ev.payload["price_minor"], ev.payload["currency"]
('add_to_cart', 1793606400000, 1999, 'EUR')
>>> str(parse_event(b'{"event_id":"e1"').reason)
'bad_json'
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from operators.events import EVENT_TYPES, Event, Rejection
from operators.input_limits import InputLimits, too_deep
from operators.ip_geo import country_of
from operators.reasons import RejectReason

DEVICES = frozenset({"mobile", "desktop", "tablet"})
PAGE_TYPES = frozenset({"home", "category", "product", "search_results", "cart", "checkout", "other"})
CONSENT_CATEGORIES = frozenset({"marketing", "analytics", "personalization"})
MAX_ID = 128
MAX_PRICE = 1_000_000
MAX_TOTAL = 10_000_000
MAX_QUANTITY = 1000
MAX_DWELL_MS = 86_400_000
# ISO 4217 minor-unit exponents that differ from the usual 2.
CURRENCY_EXPONENT = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# The same pattern as event_time in schemas/event.v1.json: RFC 3339 with a mandatory UTC offset.
_RFC3339 = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_CONTEXT_STRINGS = {"os": 64, "referrer": 2048, "locale": 35, "timezone": 64}


class _Invalid(Exception):
    """Internal: carries a Rejection out of nested checks; never escapes ``parse_event``."""

    def __init__(self, reason: RejectReason, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail, field)


DEFAULT_LIMITS = InputLimits()


def parse_event(raw: bytes, limits: InputLimits = DEFAULT_LIMITS, now_ms: int | None = None) -> Event | Rejection:
    """Turn raw record bytes into an ``Event``, or a ``Rejection`` saying what is wrong and where.

    ``now_ms`` is the wall clock at ingestion: with it, an ``event_time`` outside
    [now - max_event_age_ms, now + max_event_future_ms] is refused (``event_time_out_of_range``). Replays
    of recorded streams pass None.
    """
    if len(raw) > limits.max_record_bytes:
        return Rejection(RejectReason.RECORD_TOO_LARGE, f"{len(raw)} bytes; limits.max_record_bytes is {limits.max_record_bytes}")
    try:
        doc = orjson.loads(raw)   # the fast path: valid UTF-8 JSON in C
    except orjson.JSONDecodeError:
        # The slow path decides what is wrong, exactly as before orjson: NaN literals and integers past
        # 64 bits are JSON the standard library reads (the checks below then judge the values).
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection(RejectReason.NOT_UTF8, f"byte {e.start} is not UTF-8")
        try:
            doc = json.loads(text)
        except RecursionError:   # nesting past the interpreter's stack: not a ValueError
            return Rejection(RejectReason.TOO_DEEP, f"nested deeper than limits.max_json_depth ({limits.max_json_depth})")
        except ValueError as e:
            return Rejection(RejectReason.BAD_JSON, str(e).split(":")[0])
    if not isinstance(doc, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"top level is {type(doc).__name__}, expected an object")
    if too_deep(raw, doc, limits):
        return Rejection(RejectReason.TOO_DEEP, f"nested deeper than limits.max_json_depth ({limits.max_json_depth})")
    try:
        event = _event(doc, limits)
    except _Invalid as e:
        return e.rejection
    if now_ms is not None and not (now_ms - limits.max_event_age_ms <= event.event_time_ms
                                   <= now_ms + limits.max_event_future_ms):
        return Rejection(RejectReason.EVENT_TIME_OUT_OF_RANGE,
                         f"event_time {event.event_time_ms} is outside [now - {limits.max_event_age_ms}, now + "
                         f"{limits.max_event_future_ms}] ms at ingestion (now {now_ms})", "event_time")
    return event


def _event(doc: dict[str, Any], limits: InputLimits) -> Event:
    version = _required(doc, "schema_version", "")
    if type(version) is not int or version != 1:
        raise _Invalid(RejectReason.UNSUPPORTED_SCHEMA_VERSION, "schema_version", f"schema_version {version!r} is not 1")
    event_type = _string(doc, "event_type", "")
    event_type = event_type.lower()
    if event_type not in EVENT_TYPES:
        raise _Invalid(RejectReason.UNKNOWN_EVENT_TYPE, "event_type", f"unknown event_type {event_type!r}")
    event_id = _string(doc, "event_id", "", max_len=MAX_ID)
    user_id = _string(doc, "user_id", "", max_len=MAX_ID)
    session_id = _string(doc, "session_id", "", max_len=MAX_ID, required=False)
    event_time_ms = parse_time_ms(_string(doc, "event_time", ""), "event_time")
    context = _context(doc.get("context"), limits.ip_geolocation)
    payload_doc = _required(doc, "payload", "")
    if not isinstance(payload_doc, dict):
        raise _Invalid(RejectReason.WRONG_TYPE, "payload", "payload must be an object")
    payload = _PAYLOADS[event_type](payload_doc, limits)
    return Event(event_id, event_type, user_id, event_time_ms, session_id, context, payload)


def parse_time_ms(text: str, field: str = "event_time") -> int:
    """ISO 8601 with a UTC offset -> epoch ms UTC. A time without an offset is ambiguous and refused."""
    if not _RFC3339.match(text):
        raise _Invalid(RejectReason.INVALID_VALUE, field, f"{field} {text!r} is not RFC 3339 with a UTC offset")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(RejectReason.INVALID_VALUE, field, f"{field} {text!r} is not ISO 8601") from None
    # Integer arithmetic: float timestamps are not exact to the millisecond.
    return (dt - _EPOCH) // _MS


def to_minor_units(amount: float, currency: str) -> int:
    """12.5 EUR -> 1250; 1200 JPY -> 1200. Rounds half away from zero, as tills do."""
    scaled = amount * 10 ** CURRENCY_EXPONENT.get(currency, 2)
    return int(math.floor(abs(scaled) + 0.5 + 1e-9)) * (1 if scaled >= 0 else -1)


# ----------------------------------------------------------------------------- field helpers
def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _required(doc: dict[str, Any], key: str, prefix: str) -> Any:
    if key not in doc or doc[key] is None:
        raise _Invalid(RejectReason.MISSING_FIELD, _path(prefix, key), f"{_path(prefix, key)} is required")
    return doc[key]


def _string(doc: dict[str, Any], key: str, prefix: str, *, max_len: int = 10_000, required: bool = True) -> Any:
    if not required and doc.get(key) is None:
        return None
    value = _required(doc, key, prefix)
    if not isinstance(value, str):
        raise _Invalid(RejectReason.WRONG_TYPE, _path(prefix, key), f"{_path(prefix, key)} must be a string")
    if not value or len(value) > max_len:
        raise _Invalid(RejectReason.INVALID_VALUE, _path(prefix, key), f"{_path(prefix, key)} must have 1..{max_len} characters")
    return value


def _number(doc: dict[str, Any], key: str, prefix: str, lo: float, hi: float, *, integer: bool) -> Any:
    value = _required(doc, key, prefix)
    ok = type(value) is int if integer else type(value) in (int, float)
    if not ok:
        raise _Invalid(RejectReason.WRONG_TYPE, _path(prefix, key), f"{_path(prefix, key)} must be {'an integer' if integer else 'a number'}")
    if not (lo <= value <= hi) or value != value:
        raise _Invalid(RejectReason.INVALID_VALUE, _path(prefix, key), f"{_path(prefix, key)} {value!r} is outside {lo}..{hi}")
    return value


def _enum(value: Any, allowed: frozenset[str], path: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(RejectReason.WRONG_TYPE, path, f"{path} must be a string")
    low = value.lower()
    if low not in allowed:
        raise _Invalid(RejectReason.INVALID_VALUE, path, f"{path} {value!r} is not one of {sorted(allowed)}")
    return low


def _currency(doc: dict[str, Any], prefix: str) -> str:
    value = _string(doc, "currency", prefix, max_len=3)
    if not _CURRENCY.match(value):
        raise _Invalid(RejectReason.INVALID_VALUE, _path(prefix, "currency"), f"currency {value!r} is not an ISO 4217 code")
    return str(value.upper())


# ----------------------------------------------------------------------------- context
def _context(ctx: Any, geolocate: bool = True) -> dict[str, Any]:
    if ctx is None:
        return {}
    if not isinstance(ctx, dict):
        raise _Invalid(RejectReason.WRONG_TYPE, "context", "context must be an object")
    out: dict[str, Any] = {}
    if ctx.get("device") is not None:
        out["device"] = _enum(ctx["device"], DEVICES, "context.device")
    for key, max_len in _CONTEXT_STRINGS.items():
        if ctx.get(key) is not None:
            out[key] = _string(ctx, key, "context", max_len=max_len)
    geo = ctx.get("geo")
    if geo is not None:
        if not isinstance(geo, dict):
            raise _Invalid(RejectReason.WRONG_TYPE, "context.geo", "context.geo must be an object")
        if geo.get("country") is not None:
            country = _string(geo, "country", "context.geo", max_len=2)
            if not _COUNTRY.match(country):
                raise _Invalid(RejectReason.INVALID_VALUE, "context.geo.country", f"country {country!r} is not ISO 3166-1 alpha-2")
            out["country"] = country.upper()
        if geo.get("region") is not None:
            out["region"] = _string(geo, "region", "context.geo", max_len=64)
    # The IP address is personal data: reduced to a country when the event has none, and never carried past here.
    ip = ctx.get("ip")
    if geolocate and isinstance(ip, str) and "country" not in out:
        country = country_of(ip[:45])
        if country is not None:
            out["country"] = country
    return out


# ----------------------------------------------------------------------------- payloads
def _page_view(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    out: dict[str, Any] = {"page_type": _enum(_required(p, "page_type", "payload"), PAGE_TYPES, "payload.page_type")}
    for key in ("product_id", "category"):
        if p.get(key) is not None:
            out[key] = _string(p, key, "payload", max_len=MAX_ID)
    if p.get("dwell_ms") is not None:
        out["dwell_ms"] = _number(p, "dwell_ms", "payload", 0, MAX_DWELL_MS, integer=True)
    return out


def _search(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    return {"query": _string(p, "query", "payload", max_len=500)}


def _cart_change(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    currency = _currency(p, "payload")
    price = _number(p, "price", "payload", 0, MAX_PRICE, integer=False)
    return {
        "product_id": _string(p, "product_id", "payload", max_len=MAX_ID),
        "category": _string(p, "category", "payload", max_len=MAX_ID),
        "price_minor": to_minor_units(price, currency),
        "currency": currency,
        "quantity": _number(p, "quantity", "payload", 1, MAX_QUANTITY, integer=True),
    }


def _purchase(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    max_items = limits.max_purchase_items
    currency = _currency(p, "payload")
    items = _required(p, "items", "payload")
    if not isinstance(items, list):
        raise _Invalid(RejectReason.WRONG_TYPE, "payload.items", "payload.items must be an array")
    if not 1 <= len(items) <= max_items:
        raise _Invalid(RejectReason.INVALID_VALUE, "payload.items", f"payload.items must have 1..{max_items} entries")
    norm = []
    for i, item in enumerate(items):
        prefix = f"payload.items.{i}"
        if not isinstance(item, dict):
            raise _Invalid(RejectReason.WRONG_TYPE, prefix, f"{prefix} must be an object")
        norm.append({
            "product_id": _string(item, "product_id", prefix, max_len=MAX_ID),
            "category": _string(item, "category", prefix, max_len=MAX_ID),
            "price_minor": to_minor_units(_number(item, "price", prefix, 0, MAX_PRICE, integer=False), currency),
            "quantity": _number(item, "quantity", prefix, 1, MAX_QUANTITY, integer=True),
        })
    total = _number(p, "total", "payload", 0, MAX_TOTAL, integer=False)
    return {
        "order_id": _string(p, "order_id", "payload", max_len=MAX_ID),
        "items": norm,
        "total_minor": to_minor_units(total, currency),
        "currency": currency,
    }


def _consent(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("granted", "withdrawn"):
        values = p.get(key) or []
        if not isinstance(values, list):
            raise _Invalid(RejectReason.WRONG_TYPE, f"payload.{key}", f"payload.{key} must be an array")
        out[key] = sorted({_enum(v, CONSENT_CATEGORIES, f"payload.{key}") for v in values})
    return out


def _profile_update(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    attrs = _required(p, "attributes", "payload")
    if not isinstance(attrs, dict):
        raise _Invalid(RejectReason.WRONG_TYPE, "payload.attributes", "payload.attributes must be an object")
    for key, value in attrs.items():
        if value is not None and type(value) not in (str, int, bool):
            raise _Invalid(RejectReason.WRONG_TYPE, f"payload.attributes.{key}", "attribute values must be strings, integers or booleans")
    return {"attributes": dict(attrs)}


def _erasure(p: dict[str, Any], limits: InputLimits) -> dict[str, Any]:
    return {}


_PAYLOADS = {
    "page_view": _page_view, "search": _search, "add_to_cart": _cart_change, "remove_from_cart": _cart_change,
    "purchase": _purchase, "consent": _consent, "profile_update": _profile_update, "erasure_request": _erasure,
}
