"""Profile history (history.profile_versions) through the runner: every version, its as-of time, erasures, and
the profile at a time against the independent oracle."""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from operators.model_scoring import Example
from operators.runner import END_OF_INPUT, HISTORY, HISTORY_TRIGGER, TRIGGER, Result
from operators.training_rows import training_rows
from persona.generator.shoppers import GeneratedRecord, generate
from persona.generator.sink import history_override
from persona.history_reader import in_range
from persona.replay import Replay
from persona.settings import JobSettings, load_generator_settings, load_job_settings, parse_overrides
from state.profile_history import Version, at, every_user, live_versions, read_version
from tests.fixtures.personalization_oracle import expected, ms, profile_at, settled, stored_field

BOUND_MS = 5_000


def _settings() -> JobSettings:
    return load_job_settings({**parse_overrides([history_override()]), "models.bot_min_session_events": 1_000_000,
                              "history.profile_versions": True, "source.max_out_of_orderness_ms": BOUND_MS})


@dataclass
class Run:
    replay: Replay
    history: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    triggers: list[dict[str, object]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)


def _replay(raws: Iterable[bytes]) -> Run:
    """The records through the runner (the replay driver) with history on, then the end of the input."""
    run = Run(Replay(_settings(), history=True))

    def keep(out: Result) -> None:
        for kind, key, value in out.emitted():
            if kind == HISTORY:
                assert key is not None
                run.history.append((key.encode(), value))
            elif kind == TRIGGER and value is not None:
                run.triggers.append(json.loads(value))

    run.replay.on_result, run.replay.on_example = keep, run.examples.append
    now = int(time.time() * 1000)
    for raw in raws:
        run.replay.process(raw, now)
    run.replay.advance(END_OF_INPUT, now)
    return run


@functools.cache
def _records() -> list[GeneratedRecord]:
    return list(generate(load_generator_settings({"users": 120, "seed": 7, "bot_fraction": 0.0}), max_records=6_000))


@functools.cache
def _generated() -> Run:
    """The generated stream through the replay, once for the tests that only read what it wrote."""
    return _replay(r.value for r in _records())


def test_every_version_is_in_the_history_and_the_newest_is_the_final_profile() -> None:
    records = _records()
    run = _generated()
    replay, history, triggers = run.replay, run.history, run.triggers
    want = expected(records)
    states = replay.states
    checked = 0
    for user, fields in want.profiles.items():
        versions = live_versions(history, user)
        assert versions, user
        newest = versions[-1]
        assert newest.change is not None and newest.change.state is not None
        assert newest.version == newest.change.state.version == states[user].version
        profile = replay.core.profile(user, newest.change.state, 0)[0]
        assert {n: stored_field(profile, n) for n in fields} == fields, user
        # Versions only grow, one record each, and each record's key is its state's version.
        assert [v.version for v in versions] == sorted({v.version for v in versions})
        assert all(v.change is not None and v.change.state is not None and v.change.state.version == v.version
                   for v in versions)
        checked += 1
    assert checked > 100
    # Each trigger names the version it was decided on, and the history holds that version (but for the erased).
    assert all(t.get("profile_version") for t in triggers)
    named = [t for t in triggers if t["user_id"] not in want.erased_users]
    assert len(named) > 20
    held = {(v.user_id, v.version) for u in {str(t["user_id"]) for t in named} for v in live_versions(history, u)}
    assert all((t["user_id"], t["profile_version"]) in held for t in named)


def test_an_erasure_leaves_no_version_of_the_user_in_the_history() -> None:
    records = _records()
    history = _generated().history
    want = expected(records)
    assert want.nothing_left, "the stream has users whose last event is an erasure"
    for user in want.nothing_left:
        assert any(k.startswith(f"{user}@".encode()) for k, v in history if v is not None), user   # they had some
        assert live_versions(history, user) == [], user
    # A user erased and then back has only the versions since the erasure.
    for user in want.erased_users - want.nothing_left:
        assert live_versions(history, user)[-1].version == want.profiles[user]["profile_version"]


def test_the_profile_at_a_time_equals_the_oracle_at_random_settled_times() -> None:
    records = _records()
    run = _generated()
    replay, history = run.replay, run.history
    want = expected(records)
    by_user: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r.event is not None and r.delay != "late":
            by_user[r.event["user_id"]].append(ms(r.event["event_time"]))
    users = sorted(u for u in want.profiles if u not in want.erased_users and len(by_user[u]) > 5)
    rng = random.Random(11)
    compared, tried = 0, 0
    while compared < 20:
        tried += 1
        assert tried < 2_000, "too few settled (user, time) pairs"
        user = rng.choice(users)
        times = by_user[user]
        t = rng.randint(min(times), max(times) + 3_600_000)
        if not settled(records, user, t, BOUND_MS):
            continue
        found = at(live_versions(history, user), t)
        oracle = profile_at(records, user, t)
        assert found is not None and found.change is not None and found.change.state is not None
        assert oracle is not None
        profile = replay.core.profile(user, found.change.state, 0)[0]
        assert {n: stored_field(profile, n) for n in oracle} == oracle, (user, t)
        compared += 1


def test_a_version_reads_back_and_ranges_select_by_as_of_time() -> None:
    history = _generated().history
    key, value = next((k, v) for k, v in history if v is not None)
    v = read_version(key, value)
    assert v.change is not None and v.change.state is not None and v.version == v.change.state.version
    versions = [Version("u", i, t, None) for i, t in enumerate([10, 20, 30, 40], start=1)]
    assert [x.version for x in in_range(versions, 20, 40)] == [2, 3]
    assert at(versions, 9) is None and at(versions, 10) == versions[0]


def _event(event_type: str, payload: dict[str, object], event_id: str, t_ms: int, user: str = "u1") -> bytes:
    from datetime import UTC, datetime
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return json.dumps({"event_id": event_id, "event_type": event_type, "user_id": user, "schema_version": 1,
                       "event_time": stamp, "context": {"device": "mobile", "timezone": "UTC"},
                       "payload": payload}).encode()


def test_training_rows_have_the_features_of_the_decision_and_a_planted_future_purchase_only_in_the_label() -> None:
    t0 = ms("2026-11-02T10:00:00Z")
    add = {"product_id": "p1", "category": "toys", "price": 12.5, "quantity": 1, "currency": "EUR"}
    raws = [_event("add_to_cart", add, "e1", t0),
            # The planted future: a purchase 20 minutes after the decision, then a later visit that closes the horizon.
            _event("purchase", {"order_id": "o1", "total": 12.5, "currency": "EUR",
                                "items": [{"product_id": "p1", "category": "toys", "quantity": 1, "price": 12.5}]},
                   "e2", t0 + 20 * 60_000),
            _event("page_view", {"page_type": "home", "url": "/"}, "e3", t0 + 3 * 3_600_000),
            _event("add_to_cart", add, "e4", t0, user="u2"),   # erased below: no row
            _event("erasure_request", {}, "e5", t0 + 60_000, user="u2")]
    run = _replay(raws)
    versions = every_user(run.history)
    assert set(versions) == {"u1"}
    known = max(v.as_of_ms for v in versions["u1"])
    rows, still_open = training_rows(versions["u1"], 30 * 60_000, known)
    assert still_open == 0 and [(r.example_id, r.profile_version, r.label) for r in rows] == [("e1", 1, True)]
    # The features are those of the decision: one item in the cart, no purchase yet (no lookahead).
    f = rows[0].features
    assert (f["carts_1h"], f["cart_items"], f["purchases_24h"], f["decision"], f["device"]) == (1, 1, 0, "add_to_cart", "mobile")
    # ...and exactly what the trainer learnt from at that decision.
    assert [tuple(rows[0].features.values())] == [tuple(e.x) for e in run.examples if e.model == "propensity" and e.user_id == "u1"]
    # A horizon shorter than the wait for the purchase: a negative.
    assert [r.label for r in training_rows(versions["u1"], 10 * 60_000, known)[0]] == [False]


def test_a_backfill_with_a_dry_run_topic_emits_each_match_of_history_as_a_marked_trigger_and_sends_none() -> None:
    records = _records()
    boundary = max(r.event_time_ms for r in records) + 86_400_000   # everything is history
    settings = load_job_settings({**parse_overrides([history_override()]), "models.bot_min_session_events": 1_000_000,
                                  "history.triggers_before_ms": boundary, "history.dry_run_topic": "dry"})
    sent_triggers: list[bytes] = []
    dry: list[dict[str, object]] = []

    def keep(out: Result) -> None:
        for kind, _, value in out.emitted():
            if kind == TRIGGER and value is not None:
                sent_triggers.append(value)
            if kind == HISTORY_TRIGGER and value is not None:
                dry.append(json.loads(value))
        history_counts.update({k[2]: n for k, n in out.counts.items() if k[:2] == ("personalize", "history")})

    history_counts: Counter[str] = Counter()
    replay = Replay(settings, on_result=keep)
    now = int(time.time() * 1000)
    for r in records:
        replay.process(r.value, now)
    replay.advance(END_OF_INPUT, now)
    assert sent_triggers == []   # nothing for the triggers topic (an erasure's tombstones aside)
    assert all(t["history"] is True and t["event_time"] < boundary for t in dry)
    # One per match suppressed as history, and every trigger the live job would have sent is among them.
    assert Counter(str(t["pattern"]) for t in dry) == history_counts and len(dry) > 50
    sent = {tid for ids in expected(records).triggers.values() for tid in ids}
    assert sent <= {t["trigger_id"] for t in dry}
