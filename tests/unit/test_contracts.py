"""Profiles, triggers and dead letters that the job writes follow the published schemas."""

from __future__ import annotations

import json

import jsonschema

from operators.events import Event
from operators.pattern_engine import Trigger
from operators.profile_fold import ProfileRules, apply_event, profile_view, redis_fields
from persona.settings import ROOT


def schema(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((ROOT / "schemas" / name).read_text())


def test_profile_hash_follows_profile_schema() -> None:
    rules = ProfileRules()
    e = Event("e1", "add_to_cart", "u1", 1_000_000, None, {"device": "mobile", "timezone": "Europe/Berlin"},
              {"product_id": "p", "category": "c", "price_minor": 100, "quantity": 1, "currency": "EUR"})
    fields = redis_fields(profile_view("u1", apply_event(None, e, rules), rules), updated_at_ms=5)
    jsonschema.validate(fields, schema("profile.v1.json"))
    assert set(fields) <= set(schema("profile.v1.json")["properties"])


def test_trigger_follows_trigger_schema() -> None:
    t = Trigger("abc", "cart_abandonment", "why", "u1", 10, 20,
                {"items": [{"product_id": "p", "category": "c", "price_minor": 1, "quantity": 1}], "value_minor": 1,
                 "currency": "EUR"}, rules_version=3, pattern_version=2)
    doc = json.loads(t.to_json())
    jsonschema.validate(doc, schema("trigger.v2.json"))
    assert (doc["schema_version"], doc["rules_version"], doc["pattern_version"]) == (2, 3, 2)
    # Version 2 only adds fields: a v1 reader's fields keep their meaning.
    v1 = schema("trigger.v1.json")
    jsonschema.validate({**{k: doc[k] for k in v1["properties"] if k in doc}, "schema_version": 1}, v1)


def test_model_updates_follow_the_model_update_schema() -> None:
    from operators.online_models import MODEL_NAMES, ModelTrainer
    for name in MODEL_NAMES:
        record = ModelTrainer.new(name).snapshot(created_at_ms=1).to_record()
        jsonschema.validate(record, schema("model_update.v1.json"))
        jsonschema.validate({**record, "kind": "pin"}, schema("model_update.v1.json"))
    jsonschema.validate({"schema_version": 1, "kind": "unpin", "model": "bots"}, schema("model_update.v1.json"))


def test_audit_records_follow_the_audit_schema() -> None:
    from operators.audit import AuditEntry, audit_record
    from operators.events import SourceRef
    from tests.unit.test_privacy import Run, at, core

    run = Run(core())
    run.event("consent", at(12), {"granted": ["marketing"], "withdrawn": ["analytics"]})
    run.event("erasure_request", at(12, 5), {})
    stores = {"profile_changelog": {"status": "tombstone"}, "training_examples": {"status": "dropped", "count": 0}}
    for entry in run.audits:
        assert isinstance(entry, AuditEntry)
        record = json.loads(audit_record(entry, "u1", "e1", at(12), SourceRef("t", 0, 1), 5, stores))
        jsonschema.validate(record, schema("audit.v1.json"))


def test_masked_dead_letters_follow_the_dead_letter_schema() -> None:
    from operators.dead_letter import dead_letter_record
    from operators.events import Rejection, SourceRef

    raw = b'{"event_id":"e","user_id":"u","context":{"ip":"81.2.69.142"},"payload":{"attributes":{"email":"a@b.de"}}}'
    entry = json.loads(dead_letter_record(raw, Rejection("missing_field", "event_type"), SourceRef("t", 0, 1), 1,
                                          masked=frozenset({"ip", "email"})))
    jsonschema.validate(entry, schema("dead_letter.v2.json"))
    assert entry["raw_masked"] == 2 and "81.2.69.142" not in entry["raw"] and "a@b.de" not in entry["raw"]
    assert json.loads(entry["raw"])["context"]["ip"] == "***"


def test_item_records_follow_the_item_schema() -> None:
    from operators.co_occurrence import ItemSignal, RecommendRules
    from operators.item_table import ItemTable, published
    rules = RecommendRules()
    table = ItemTable(rules)
    changed = table.fold([ItemSignal("a", "toys", "", 1.0, 5), ItemSignal("a", "toys", "b", 3.0, 9),
                          ItemSignal("b", "", "", 1.0, 9)])
    for state in changed.values():
        jsonschema.validate(published(state, rules), schema("item_neighbours.v1.json"))
    assert published(changed["a"], rules)["as_of"] == 9 and published(changed["a"], rules)["folded"] == 2
