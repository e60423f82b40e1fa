"""The hot-path validator against the JSON Schema contract, and its normalisation rules."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from operators.events import Event, Rejection
from operators.validation import parse_event, to_minor_units
from persona.generator.shoppers import generate
from persona.settings import ROOT, load_generator_settings

SCHEMAS = ROOT / "schemas"
EVENT_SCHEMA = json.loads((SCHEMAS / "event.v1.json").read_text())
VALID = sorted((SCHEMAS / "examples" / "valid").glob("*.json"))
INVALID = sorted((SCHEMAS / "examples" / "invalid").glob("*.json"))
CHECKER = jsonschema.Draft202012Validator(EVENT_SCHEMA, format_checker=jsonschema.FormatChecker())


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(EVENT_SCHEMA)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_examples_pass_schema_and_validator(path: Path) -> None:
    doc = json.loads(path.read_text())
    CHECKER.validate(doc)
    out = parse_event(path.read_bytes())
    assert isinstance(out, Event)
    assert out.event_type == path.stem


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_examples_fail_schema_and_validator_with_reason_and_field(path: Path) -> None:
    reason, field = path.stem.split("__")
    assert not CHECKER.is_valid(json.loads(path.read_text()))
    out = parse_event(path.read_bytes())
    assert isinstance(out, Rejection)
    assert (out.reason, out.field) == (reason, field)


def test_validator_agrees_with_schema_on_generated_traffic() -> None:
    settings = load_generator_settings({"users": 80, "seed": 3, "malformed_fraction": 0.2})
    checked = 0
    for rec in generate(settings, max_records=3000):
        try:
            doc = json.loads(rec.value)
        except ValueError:
            continue  # not JSON at all: nothing for the schema to say
        if not isinstance(doc, dict):
            continue
        assert CHECKER.is_valid(doc) == isinstance(parse_event(rec.value), Event), rec.value[:300]
        checked += 1
    assert checked > 2500


def test_normalisation() -> None:
    doc = json.loads((SCHEMAS / "examples" / "valid" / "add_to_cart.json").read_text())
    doc["event_type"] = "ADD_TO_CART"
    doc["context"].update(device="Mobile", ip="203.0.113.7")
    doc["context"]["geo"]["country"] = "de"
    doc["payload"].update(currency="eur", price=19.995)
    ev = parse_event(json.dumps(doc).encode())
    assert isinstance(ev, Event)
    assert ev.event_type == "add_to_cart"
    # 09:15:30.250 at +01:00 is 08:15:30.250 UTC.
    assert ev.event_time_ms == 1793607330250
    assert ev.payload["price_minor"] == 2000 and ev.payload["currency"] == "EUR"
    assert ev.context["device"] == "mobile" and ev.context["country"] == "DE"
    assert "ip" not in ev.context and "203.0.113.7" not in repr(ev)


def test_same_instant_in_any_offset_gives_the_same_epoch_ms() -> None:
    def at(t: str) -> int:
        doc = json.loads((SCHEMAS / "examples" / "valid" / "search.json").read_text())
        doc["event_time"] = t
        ev = parse_event(json.dumps(doc).encode())
        assert isinstance(ev, Event)
        return ev.event_time_ms
    assert at("2026-11-02T08:00:00Z") == at("2026-11-02T09:00:00+01:00") == at("2026-11-02T03:00:00-05:00")


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    (12.5, "EUR", 1250), (0.1 + 0.2, "EUR", 30), (1200, "JPY", 1200), (1.2345, "KWD", 1235), (0, "USD", 0)])
def test_minor_units(amount: float, currency: str, minor: int) -> None:
    assert to_minor_units(amount, currency) == minor


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe", "not_utf8"), (b"{", "bad_json"), (b"[1,2]", "not_an_object"), (b"", "bad_json"),
    (b'{"schema_version":1,"event_type":"search","event_id":"e","user_id":"u",'
     b'"event_time":"2026-11-02T08:00:00Z","payload":{"query":""}}', "invalid_value"),
    (b'{"schema_version":true}', "unsupported_schema_version")])
def test_whole_record_rejections(raw: bytes, reason: str) -> None:
    out = parse_event(raw)
    assert isinstance(out, Rejection) and out.reason == reason


def test_unknown_extra_fields_are_tolerated_and_input_not_mutated() -> None:
    doc = json.loads((SCHEMAS / "examples" / "valid" / "page_view.json").read_text())
    doc["brand_new_field"] = {"x": 1}
    doc["payload"]["experiment"] = "B"
    raw = json.dumps(doc).encode()
    before = bytes(raw)
    assert isinstance(parse_event(raw), Event)
    assert raw == before
