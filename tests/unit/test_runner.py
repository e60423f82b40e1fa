"""The one driver of the core (operators/runner.py): timer order, batches, failures, erasure of waiting examples,
and the whole oracle stream through it, in the unit tier."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from operators.item_table import published, weight_score
from operators.pattern_spec import load_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer, _failed
from operators.profile_fold import ProfileRules
from operators.recommendations import TOP_PER_CATEGORY, served_list
from operators.runner import AUDIT, CHANGE, DEAD_LETTER, END_OF_INPUT, Record, Runner
from persona.generator.shoppers import generate
from persona.generator.sink import history_override
from persona.replay import Replay
from persona.rules import recommend_rules
from persona.settings import load_generator_settings, load_job_settings, parse_overrides
from state.item_state import RecentItems
from state.profile_changelog import read_change
from state.user_state import decode_state
from state.user_timers import UserTimers
from tests.fixtures.item_oracle import expected_items, expected_lists, item_mismatches, list_mismatches
from tests.fixtures.personalization_oracle import expected, stored_field, trigger_mismatches

T0 = 1_793_620_800_000   # 2026-11-02T10:00:00Z
MIN = 60_000
CART = {"product_id": "p1", "category": "toys", "price": 12.5, "quantity": 1, "currency": "EUR"}


def _raw(event_type: str, payload: dict[str, Any], event_id: str, t_ms: int, user: str = "u1") -> bytes:
    from datetime import UTC, datetime
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return json.dumps({"event_id": event_id, "event_type": event_type, "user_id": user, "schema_version": 1,
                       "event_time": stamp, "payload": payload}).encode()


def _runner() -> Runner:
    return Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, load_patterns(), segments=5))


def test_timers_fire_at_the_watermark_in_time_then_user_order() -> None:
    runner, timers, store = _runner(), UserTimers(), {}
    batch = [Record(u, _raw("add_to_cart", CART, f"e-{u}", T0, u)) for u in ("u2", "u1", "u3")]
    out = runner.on_batch(batch, timers, store.get, None)
    store.update(out.dirty)
    deadline = T0 + 30 * MIN   # conf/patterns.yaml: cart_abandonment within 30 min
    assert timers.next_due() == deadline
    assert not [o for o in runner.on_watermark(deadline - 1, timers, store.get, None).emitted() if o[0] == "trigger"]
    fired = runner.on_watermark(deadline, timers, store.get, None)
    assert [key for kind, key, _ in fired.emitted() if kind == "trigger"] == ["u1", "u2", "u3"]


def test_one_change_per_user_and_batch_with_the_newest_state() -> None:
    runner, timers = _runner(), UserTimers()
    batch = [Record("u1", _raw("page_view", {"url": "/a", "page_type": "home"}, f"e{i}", T0 + i * 1000))
             for i in range(5)]
    out = runner.on_batch(batch, timers, lambda _: None, None)
    changes = [(key, value) for kind, key, value in out.emitted() if kind == CHANGE]
    assert len(changes) == 1
    state = read_change(b"u1", changes[0][1]).state
    assert state is not None and state.version == 5 and decode_state(out.dirty["u1"]) == state


def test_a_record_whose_key_is_not_its_user_id_is_dead_lettered_under_its_key() -> None:
    """The key routes the record to its user's shard (the Kafka key, the contract): a record keyed by another user
    would split that user's state, so it is dead-lettered, keyed by the key it came with."""
    runner, timers = _runner(), UserTimers()
    out = runner.on_batch([Record("bob", _raw("page_view", {"url": "/a", "page_type": "home"}, "e1", T0, "alice"))],
                          timers, lambda _: None, None)
    letters = [(key, json.loads(value)) for kind, key, value in out.emitted() if kind == DEAD_LETTER]
    assert [(key, doc["reason"]) for key, doc in letters] == [("bob", "key_mismatch")]
    assert out.dirty == {}


def test_a_failed_step_dead_letters_its_record_and_the_user_goes_on_from_the_last_good_state() -> None:
    runner, timers, store = _runner(), UserTimers(), {}
    good = [Record("u1", _raw("page_view", {"url": "/a", "page_type": "home"}, f"e{i}", T0 + i * 1000))
            for i in range(3)]
    original = runner.core.on_event

    def failing(state: Any, event: Any, served: Any) -> Any:
        if event.event_id == "e1":   # a bug after the state was half-updated in place: what the core returns then
            state.totals["events"] = 10**6
            return _failed(RuntimeError("boom"))
        return original(state, event, served)

    runner.core.on_event = failing  # type: ignore[method-assign]
    out = runner.on_batch(good, timers, store.get, None)
    dead = [json.loads(v) for kind, _, v in out.emitted() if kind == DEAD_LETTER and v is not None]
    assert [d["reason"] for d in dead] == ["processing_error"] and "boom" in dead[0]["detail"]
    state = decode_state(out.dirty["u1"])
    assert state.version == 2 and state.totals.get("events", 0) < 10**6   # e0 and e2 applied, e1's mutation gone
    assert out.ledger == {"applied": 2, "dead_letter.processing_error": 1}


def test_an_erasure_purges_examples_released_by_a_timer_and_the_audit_counts_them() -> None:
    """The privacy bug of the old ``ModelStep.on_timer``: it tagged timer-released examples with user "", so an
    erasure did not purge them from the batch waiting for the trainer, and the audit undercounted them."""
    runner, timers, store = _runner(), UserTimers(), {}
    out = runner.on_batch([Record("u1", _raw("add_to_cart", CART, "e1", T0))], timers, store.get, None)
    store.update(out.dirty)
    runner.examples.take()   # what the event itself produced went to the trainer already
    label_deadline = T0 + DEFAULT_MODEL_RULES.label_window_ms
    store.update(runner.on_watermark(label_deadline, timers, store.get, None).dirty)
    waiting = [ex for xs in runner.examples._by_model.values() for ex in xs]
    assert [(ex.model, ex.user_id, ex.label) for ex in waiting] == [("propensity", "u1", False)]
    erased = runner.on_batch([Record("u1", _raw("erasure_request", {}, "e2", label_deadline + 1000))], timers,
                             store.get, None)
    assert runner.examples.waiting == 0 and runner.examples.take() == {}
    audit = [json.loads(v) for kind, _, v in erased.emitted() if kind == AUDIT and v is not None]
    assert audit[0]["outcome"]["training_examples"] == {"status": "dropped", "count": 1}


def test_a_state_tells_its_pending_timers() -> None:
    """``Personalizer.deadlines`` (the timers of a state seeded from the changelog at an upgrade) names only timers
    the runner armed while replaying, and firing just those gives what firing every armed timer gives."""
    records = [r.value for r in generate(load_generator_settings({"users": 200, "seed": 3, "span_hours": 8}),
                                         max_records=8_000)]
    replay = Replay(load_job_settings({}))
    for raw in records:
        replay.process(raw)
    named = 0
    for user, data in replay.store.items():
        armed = replay.timers.times_of(user)
        derived = [t for t in replay.core.deadlines(decode_state(data)) if t > replay.watermark]
        assert set(derived) <= set(armed), user
        named += len(derived)
        outputs = []
        for times in (armed, derived):
            state, got = decode_state(data), []
            for t in times:
                step = replay.core.on_timer(state, user, t)
                got += [tr.trigger_id for tr in step.triggers] + [(ex.model, ex.label, ex.score) for ex in step.examples]
            outputs.append(sorted(map(str, got)))
        assert outputs[0] == outputs[1], user
    assert named > 20


@pytest.mark.parametrize("seed", [21])
def test_the_oracle_stream_through_the_runner_equals_the_oracle(seed: int) -> None:
    """The integration test's stream and oracle, through the runner alone: dead letters by reason, every trigger
    id, and every deterministic profile field (a bounded input: every deadline passes at the end)."""
    records = list(generate(load_generator_settings({"users": 450, "seed": seed, "bot_fraction": 0.0}),
                            max_records=22_000))
    settings = load_job_settings({**parse_overrides([history_override()]), "models.bot_min_session_events": 1_000_000,
                                  "recommend.enabled": True, "recommend.neighbours_per_item": 1_000})
    sent: list[dict[str, Any]] = []
    replay = Replay(settings, on_trigger=lambda t: sent.append(json.loads(t.to_json())))
    now = int(time.time() * 1000)
    for r in records:
        replay.process(r.value, now)
    replay.advance(END_OF_INPUT, now)
    want = expected(records)
    dead = Counter({k.split(".", 1)[1]: n for k, n in replay.ledger.items() if k.startswith("dead_letter.")})
    assert dead == want.dead_letter_reasons
    assert trigger_mismatches(sent, want) == {}
    states = replay.states
    wrong = [(user, name) for user, fields in want.profiles.items()
             for name, value in fields.items()
             if stored_field(replay.core.profile(user, states[user], now)[0], name) != value]
    assert wrong == []
    assert replay.items is not None
    rules = recommend_rules(settings)
    items = expected_items(records)
    assert len(items) > 100
    assert item_mismatches({i: published(s, rules) for i, s in replay.items.states().items()}, items) == []
    lists = expected_lists(records)
    assert sum(1 for ranked in lists.values() if len(ranked) == rules.list_size) > 300
    assert list_mismatches(_lists_as_served(replay.items.states(), states, rules), lists) == []


def _lists_as_served(items: dict[str, Any], states: dict[str, Any], rules: Any) -> dict[str, list[tuple[str, float]]]:
    """Each user's list from the item states as Redis would hold them (``persona.serving`` without Redis)."""
    records = {i: published(s, rules) for i, s in items.items()}
    scores = {i: weight_score(s, rules.half_life_ms) for i, s in items.items()}
    by_category: dict[str, list[tuple[str, float]]] = {}
    for item, score in sorted(scores.items(), key=lambda p: (-p[1], p[0])):
        by_category.setdefault(items[item].category, []).append((item, score))
    best = {c: ranked[:TOP_PER_CATEGORY] for c, ranked in by_category.items()}
    everything = sorted(scores.items(), key=lambda p: (-p[1], p[0]))[:rules.list_size * 2]
    out = {}
    for user, state in states.items():
        recent, now = state.recent_items or RecentItems(), state.newest_event_ms
        if now == 0:   # no event since an erasure: no list of its own
            continue
        anchors = {r.item: records[r.item] for r in recent.items}
        out[user] = served_list(recent, set(state.cart), anchors, scores, best, everything, now, rules)
    return out
