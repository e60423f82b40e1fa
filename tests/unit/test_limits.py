"""Input limits, containment and de-duplication (docs/contract.md "Limits"): every poison pill found by hand becomes a
dead letter with its own reason or a counted drop; none raises, and none grows a user's state without bound."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from operators.dead_letter import dead_letter_record
from operators.events import Event, Rejection, SourceRef
from operators.input_limits import InputLimits, json_depth
from operators.model_scoring import ServedModels
from operators.validation import parse_event
from persona.generator.shoppers import generate
from persona.replay import Replay
from persona.rules import personalizer
from persona.settings import ROOT, load_generator_settings, load_job_settings
from state.user_state import encode_state

T0 = 1_793_620_800_000   # 2026-11-02T10:00:00Z
DEAD_LETTER = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "dead_letter.v2.json").read_text()))


def _raw(event_type: str, payload: dict[str, Any], event_id: str = "e1", t_ms: int = T0, user: str = "u1") -> bytes:
    from datetime import UTC, datetime
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return json.dumps({"event_id": event_id, "event_type": event_type, "user_id": user, "schema_version": 1,
                       "event_time": stamp, "payload": payload}).encode()


def _event(raw: bytes) -> Event:
    e = parse_event(raw)
    assert isinstance(e, Event), e
    return e


def _cart(product: str, event_id: str, t_ms: int = T0) -> bytes:
    return _raw("add_to_cart", {"product_id": product, "category": "toys", "price": 10, "currency": "EUR",
                                "quantity": 1}, event_id, t_ms)


@pytest.mark.parametrize("raw", [b"[" * 2000 + b"]" * 2000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                 b"[" * 5000], ids=["arrays", "objects", "unclosed"])
def test_deep_nesting_is_a_dead_letter_not_a_recursion_error(raw: bytes) -> None:
    out = parse_event(raw)
    assert isinstance(out, Rejection) and out.reason in {"too_deep", "bad_json"}
    assert parse_event(b"[" * 2000 + b"]" * 2000).reason == "too_deep"


def test_depth_beyond_the_setting_inside_an_ignored_field() -> None:
    deep: Any = 1
    for _ in range(20):
        deep = {"x": deep}
    doc = json.loads(_raw("search", {"query": "shoes"}))
    doc["extra"] = deep
    raw = json.dumps(doc).encode()
    assert json_depth(doc) == 21
    assert parse_event(raw, InputLimits(max_json_depth=12)).reason == "too_deep"
    assert isinstance(parse_event(raw, InputLimits(max_json_depth=30)), Event)


def test_a_large_purchase_with_many_containers_is_measured_not_refused() -> None:
    items = [{"product_id": f"p{i}", "category": "toys", "price": 1, "quantity": 1} for i in range(100)]
    raw = _raw("purchase", {"order_id": "o1", "items": items, "total": 100, "currency": "EUR"})
    assert isinstance(parse_event(raw), Event)
    assert parse_event(raw, InputLimits(max_purchase_items=50)).field == "payload.items"


def test_an_oversized_non_utf8_record_becomes_a_dead_letter_that_fits_the_topic() -> None:
    raw = bytes(range(128, 256)) * 6400   # 800 KB, not UTF-8
    out = parse_event(raw)
    assert isinstance(out, Rejection) and out.reason == "record_too_large"
    entry = dead_letter_record(raw, out, SourceRef("events", 0, 1, None), 1, max_raw_bytes=16_384)
    doc = json.loads(entry)
    DEAD_LETTER.validate(doc)
    assert len(entry) < 32_000   # far below the producer's max.request.size (1 MB)
    assert doc["raw_truncated"] and doc["raw_length"] == len(raw) and doc["raw_encoding"] == "base64"
    import hashlib
    assert doc["raw_sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("t_ms, ok", [(T0, True), (T0 + 3_599_000, True), (T0 + 3_601_000, False),
                                      (253_402_300_799_000, False), (0, False), (T0 - 367 * 86_400_000, False)],
                         ids=["now", "skew", "hour-ahead", "year-9999", "1970", "too-old"])
def test_event_time_is_judged_against_the_wall_clock_at_ingestion(t_ms: int, ok: bool) -> None:
    raw = _raw("search", {"query": "q"}, t_ms=t_ms)
    out = parse_event(raw, now_ms=T0)
    assert isinstance(out, Event) == ok
    if not ok:
        assert isinstance(out, Rejection) and (out.reason, out.field) == ("event_time_out_of_range", "event_time")
    assert isinstance(parse_event(raw), (Event, Rejection))   # a replay (no wall clock) judges no range


def test_the_cart_is_capped_and_the_drop_counted() -> None:
    core = personalizer(load_job_settings({"limits.max_cart_items": 5}))
    state, dropped = None, []
    for i in range(600):
        step = core.on_event(state, _event(_cart(f"p{i}", f"e{i}", T0 + i * 1000)), ServedModels())
        state = step.state
        dropped += step.dropped
    assert state is not None and list(state.cart) == [f"p{i}" for i in range(595, 600)]
    assert dropped == ["cart_item"] * 595
    # Anchors keep a copy of the cart: bounded with it, and only the open window's anchor is kept.
    assert all(len(a.cart) <= 5 for a in state.patterns.anchors.values()) and len(state.patterns.anchors) == 1
    assert len(state.patterns.absence["cart_abandonment"].blockers) == 128
    assert len(encode_state(state)) < 3000


def test_demographics_keep_only_allowed_bounded_attributes() -> None:
    core = personalizer(load_job_settings({}))
    attributes: dict[str, Any] = {f"k{i}": "v" for i in range(4_000)}
    attributes |= {"age_band": "25-34", "gender": "x" * 65, "newsletter": True}
    step = core.on_event(None, _event(_raw("profile_update", {"attributes": attributes})), ServedModels())
    assert step.state is not None and step.state.demographics == {"age_band": "25-34", "newsletter": True}
    assert len(step.dropped) == 4_001 and set(step.dropped) == {"demographic_attribute"}
    assert len(encode_state(step.state)) < 1000


def test_an_exception_in_the_core_is_a_dead_letter_and_the_stream_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    core = personalizer(load_job_settings({}))
    first = core.on_event(None, _event(_raw("search", {"query": "q"})), ServedModels()).state

    def boom(*_: Any) -> Any:
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(core.engine, "on_event", boom)
    step = core.on_event(first, _event(_raw("search", {"query": "q"}, "e2", T0 + 1000)), ServedModels())
    assert step.failed and step.state is None and step.dead_letter is not None
    assert (step.dead_letter.reason, step.dead_letter.detail) == ("processing_error", "ZeroDivisionError: a bug")
    monkeypatch.setattr(core.engine, "on_timer", boom)
    assert core.on_timer(first, "u1", T0 + 5000).failed
    monkeypatch.undo()
    assert core.on_event(first, _event(_raw("search", {"query": "q"}, "e3", T0 + 2000)), ServedModels()).store


def test_a_redelivered_batch_changes_nothing() -> None:
    records = [r.value for r in generate(load_generator_settings({"users": 60, "seed": 11, "span_hours": 4,
                                                                 "malformed_fraction": 0.0}), max_records=3000)]
    once, twice = Replay(load_job_settings({})), Replay(load_job_settings({}))
    for raw in records:
        once.process(raw)
    # A producer retried every batch of 10 records after it had been written.
    for start in range(0, len(records), 10):
        for raw in records[start:start + 10] * 2:
            twice.process(raw)
    assert twice.states == once.states and twice.triggers == once.triggers


def test_a_purchase_retried_with_a_new_event_id_counts_once() -> None:
    core = personalizer(load_job_settings({}))
    payload = {"order_id": "o-9", "items": [{"product_id": "p1", "category": "toys", "price": 40, "quantity": 1}],
               "total": 40, "currency": "EUR"}
    s1 = core.on_event(None, _event(_raw("purchase", payload, "e1")), ServedModels()).state
    assert s1 is not None
    revenue, version = s1.rfm, s1.version
    step = core.on_event(s1, _event(_raw("purchase", payload, "e1-retry", T0 + 1000)), ServedModels())
    assert step.duplicate and not step.store and step.state is s1
    assert s1.version == version and s1.rfm == revenue and s1.totals["purchase"] == 1


def test_an_erasure_is_never_late_and_the_user_starts_from_the_default_consent() -> None:
    core = personalizer(load_job_settings({}))
    state = core.on_event(None, _event(_raw("consent", {"withdrawn": ["marketing"]}, "e1", T0)), ServedModels()).state
    state = core.on_event(state, _event(_cart("p1", "e2", T0 + 600_000)), ServedModels()).state
    # The erasure request carries an event time far behind the user's newest event: applied all the same.
    step = core.on_event(state, _event(_raw("erasure_request", {}, "e3", T0 - 3_600_000)), ServedModels())
    assert step.dead_letter is None and step.erase and step.state is not None
    assert step.state.cart == {} and step.state.totals == {} and step.state.consents == []
    # New events after the erasure: the configured default (granted here) applies again, not the old withdrawal.
    after = core.on_event(step.state, _event(_cart("p2", "e4", T0 + 700_000)), ServedModels())
    assert after.state is not None
    released = core.on_timer(after.state, "u1", max(after.timers))
    assert [t.pattern for t in released.triggers] == ["cart_abandonment"] and released.suppressed == []
