"""Model features, snapshot/restore, serving and the rule-over-model layering, without Flink."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Callable

import pytest
import yaml

from operators.events import Event
from operators.model_features import (
    PROPENSITY_CATEGORICAL,
    PROPENSITY_FEATURES,
    PROPENSITY_NUMERIC,
    SessionSequence,
    propensity_features,
    session_rate_features,
)
from operators.model_scoring import ModelRules, ModelStep, ServedModels, bot_verdict
from operators.online_models import MODEL_NAMES, CompiledLogistic, ModelSnapshot, ModelTrainer, restore
from operators.pattern_spec import compile_patterns
from operators.personalize import Personalizer
from operators.profile_fold import ProfileRules, ProfileView, apply_event, profile_view
from operators.propensity_learner import PropensityLearner

RULES = ProfileRules()
MODEL_RULES = ModelRules(label_window_ms=30 * 60_000, max_pending=20, bot_threshold=0.95, bot_rule_events_per_min=30,
                         bot_rule_min_events=20, bot_min_events=10, score_every=5)


def ev(i: int, kind: str, t: int, payload: dict | None = None, device: str = "desktop", user: str = "u1") -> Event:
    return Event(f"e{i}", kind, user, t, "s1", {"device": device, "timezone": "Europe/Paris"}, payload or {})


def add(i: int, t: int, price: int = 2000, qty: int = 2, **kw) -> Event:
    return ev(i, "add_to_cart", t, {"product_id": f"p{i}", "category": "toys", "price_minor": price, "quantity": qty,
                                    "currency": "EUR"}, **kw)


def test_propensity_features_are_read_from_the_profile() -> None:
    events = [ev(1, "page_view", 0, {"page_type": "product", "category": "toys", "product_id": "p1", "dwell_ms": 90_000}),
              add(2, 60_000), ev(3, "purchase", 120_000, {"order_id": "o1", "items": [], "total_minor": 4000}),
              add(4, 180_000, price=1000, qty=1, device="mobile")]
    s = None
    for e in events:
        s = apply_event(s, e, RULES)
    f = dict(zip(PROPENSITY_FEATURES, propensity_features(profile_view("u1", s, RULES), "add_to_cart"), strict=True))
    assert set(f) == set(PROPENSITY_NUMERIC) | set(PROPENSITY_CATEGORICAL)
    assert f["views_10m"] == 1 and f["dwell_10m_s"] == 90 and f["carts_10m"] == 2 and f["purchases_24h"] == 1
    assert f["cart_items"] == 1 and math.isclose(f["cart_value_log"], math.log1p(10.0))
    assert f["frequency_90d"] == 1 and math.isclose(f["monetary_90d_log"], math.log1p(40.0))
    assert f["recency_days"] == 0 and f["session_length_min"] == 3.0 and f["session_dwell_s"] == 90
    assert f["device"] == "mobile" and f["hour_block"] == "h0" and f["decision"] == "add_to_cart"   # 01:03 in Paris
    # Without the session's sequence (a caller that has none), its features are neutral.
    assert (f["session_product_views"], f["dwell_per_product_view_s"], f["minutes_since_add"]) == (0, 0, 1440)
    seq = SessionSequence(product_views=2, product_dwell_ms=150_000, last_add_ms=60_000, dwell_recent_s=40.0)
    g = dict(zip(PROPENSITY_FEATURES, propensity_features(profile_view("u1", s, RULES), "add_to_cart", seq), strict=True))
    assert g["session_product_views"] == 2 and g["dwell_per_product_view_s"] == 75.0 and g["minutes_since_add"] == 2.0
    assert g["dwell_recent_s"] == 40.0


def test_the_session_sequence_reaches_the_snapshot_and_the_recent_dwell_weighs_recent_pages_more() -> None:
    served, step, s = ServedModels(), ModelStep(MODEL_RULES), None
    for i, dwell in enumerate((10_000, 10_000, 100_000)):
        e = ev(i, "page_view", i * 60_000, {"page_type": "product", "category": "toys", "product_id": f"p{i}",
                                            "dwell_ms": dwell})
        s = apply_event(s, e, RULES)
        step.on_event(s, e, profile_view("u1", s, RULES), served)
    out = ModelStep.outputs(s)
    # Weights 0.64, 0.8, 1 for the three pages: (6.4 + 8 + 100) / 2.44 seconds (stored in ms and thousandths).
    assert (out.dwell_weighted_ms, out.dwell_weight) == (114_400, 2_440)
    x = dict(zip(PROPENSITY_FEATURES, out.labels.pending[-1].features, strict=True))
    assert x["session_product_views"] == 3 and x["dwell_per_product_view_s"] == 40
    assert x["dwell_recent_s"] == round(114.4 / 2.44) and x["minutes_since_add"] == 1440


def test_session_rate_features_clip_to_the_declared_limits() -> None:
    f = session_rate_features(events=500, length_ms=1_000, product_views=0, product_dwell_ms=0, page_views=500)
    assert f == {"events_per_min": 60.0, "session_events_log": math.log1p(500), "dwell_per_view_s": 60.0, "views_share": 1.0}


def _x(r: random.Random, name: str) -> dict | tuple:
    if name == "propensity":
        return (*(r.random() for _ in PROPENSITY_NUMERIC), r.choice(["mobile", "desktop"]), "h2", "add_to_cart")
    if name == "segments":
        return {k: r.random() for k in ("recency_days", "frequency_90d", "monetary_90d_log", "sessions_7d",
                                         "views_24h", "carts_24h", "session_events")}
    return {"events_per_min": r.random() * 10, "session_events_log": r.random() * 3, "dwell_per_view_s": r.random() * 99,
            "views_share": r.random()}


def test_snapshot_restore_round_trip_gives_the_same_predictions_and_continues_identically() -> None:
    for name in MODEL_NAMES:
        r = random.Random(name)
        a = ModelTrainer.new(name, seed=3)
        for _ in range(300):
            a.learn(_x(r, name), label=r.random() < 0.3, score=r.random(), previous=r.randrange(3))
        snap = a.snapshot(created_at_ms=123)
        back = ModelSnapshot.from_record(pickle.loads(pickle.dumps(snap.to_record())))
        assert (back.name, back.version, back.examples, back.metrics, back.blob) == (name, 1, 300, snap.metrics, snap.blob)
        model, b = restore(name, back.blob), pickle.loads(pickle.dumps(a))   # b: the trainer as Flink state restores it
        probe = [_x(random.Random(i), name) for i in range(20)]
        n = len(PROPENSITY_NUMERIC)
        predict = {"propensity": lambda m, x, n=n: m.predict(x[:n], x[n:]), "segments": lambda m, x: m.predict_one(x),
                   "bots": lambda m, x: m.score_one(x)}[name]
        assert [predict(model, x) for x in probe] == [predict(a.model, x) for x in probe]
        more = [_x(r, name) for _ in range(50)]
        for x in more:
            a.learn(x, label=True, score=0.7, previous=1)
            b.learn(x, label=True, score=0.7, previous=1)
        assert [predict(a.model, x) for x in probe] == [predict(b.model, x) for x in probe]
        assert a.metric_values() == b.metric_values()


def test_served_models_prefer_a_pin_and_return_to_the_latest_on_unpin() -> None:
    t = ModelTrainer.new("propensity")
    v1 = t.snapshot(1).to_record()
    v2 = t.snapshot(2).to_record()
    served = ServedModels()
    served.apply(v1)
    served.apply(v2)
    assert served.get("propensity")[0] == 2
    assert isinstance(served.get("propensity")[1], CompiledLogistic)
    served.apply({**v1, "kind": "pin"})
    assert served.get("propensity")[0] == 1
    served.apply({**v2, "version": 3})   # new snapshots keep arriving while pinned
    assert served.get("propensity")[0] == 1
    served.apply({"kind": "unpin", "model": "propensity"})
    assert served.get("propensity")[0] == 3
    served.apply({**v1, "version": 9, "model_schema": 99})   # another feature schema: not served
    assert served.get("propensity")[0] == 3


def test_bot_rule_overrides_the_model_and_the_model_only_judges_long_enough_sessions() -> None:
    assert bot_verdict({"events_per_min": 45.0}, 25, score=0.0, rules=MODEL_RULES) == (True, "rule")
    assert bot_verdict({"events_per_min": 45.0}, 19, score=0.0, rules=MODEL_RULES) == (False, None)
    assert bot_verdict({"events_per_min": 2.0}, 12, score=0.96, rules=MODEL_RULES) == (True, "model")
    assert bot_verdict({"events_per_min": 2.0}, 9, score=0.99, rules=MODEL_RULES) == (False, None)
    assert bot_verdict({"events_per_min": 2.0}, 50, score=None, rules=MODEL_RULES) == (False, None)


PATTERNS = """
version: 1
gate: {frequency_cap: {max: 5, per: 24h}, quiet_hours: {start: 0, end: 0}}
patterns:
  abandonment_with_discount:
    kind: absence
    reason: low propensity, offer a discount
    anchor: {event: add_to_cart, where: {profile.propensity: {lt: 0.3}}}
    cancel: [{event: purchase}]
    within: 30m
    include_cart: true
"""


def _run(events: list[Event], served: ServedModels) -> tuple[list, list]:
    core = Personalizer(RULES, MODEL_RULES, compile_patterns(yaml.safe_load(PATTERNS), "test"), segments=5)
    s, triggers, suppressed = None, [], []
    for e in events:
        step = core.on_event(s, e, served)
        s = step.state
        triggers += step.triggers
        suppressed += step.suppressed
    step = core.on_timer(s, "u1", 10 ** 13)
    return triggers + step.triggers, suppressed + step.suppressed


def _served_scoring(p: float) -> ServedModels:
    """A served propensity model whose every score is ``p`` (a bias-only logistic regression)."""
    t = ModelTrainer.new("propensity")
    t.model.intercept = math.log(p / (1 - p))
    served = ServedModels()
    served.apply(t.snapshot(0).to_record())
    return served


def test_a_rule_reading_the_score_decides_and_the_bot_flag_overrides_every_pattern() -> None:
    assert _served_scoring(0.1).get("propensity")[1].score(_x(random.Random(1), "propensity")) < 0.11
    triggers, _ = _run([add(1, 0)], _served_scoring(0.1))
    assert [t.pattern for t in triggers] == ["abandonment_with_discount"]
    triggers, _ = _run([add(1, 0)], _served_scoring(0.9))   # the rule says: only for low propensity
    assert triggers == []
    # A bot (20+ events at > 30/min) that adds to cart with a low score: the gate refuses the trigger.
    clicks = [ev(i, "page_view", i * 1_000, {"page_type": "category", "category": "toys", "dwell_ms": 500})
              for i in range(25)]
    triggers, suppressed = _run([*clicks, add(99, 26_000)], _served_scoring(0.1))
    assert triggers == [] and suppressed == [("abandonment_with_discount", "bot")]


def test_compiled_propensity_scores_equal_the_learner() -> None:
    r = random.Random(5)
    t = ModelTrainer.new("propensity", seed=3)
    n = len(PROPENSITY_NUMERIC)
    for _ in range(500):
        x = _x(r, "propensity")
        t.learn(x, label=x[13] > 0.6, score=0.5)
    compiled = CompiledLogistic.of(restore("propensity", t.snapshot(0).blob))
    for i in range(200):
        x = _x(random.Random(100 + i), "propensity")
        x = (*x[:n], random.Random(i).choice(["mobile", "desktop", "never-seen"]), *x[n + 1:])
        assert math.isclose(compiled.score(x), t.model.predict(x[:n], x[n:]), rel_tol=1e-9, abs_tol=1e-12)


def test_bots_and_segments_are_scored_every_n_events_even_for_a_user_without_a_segment() -> None:
    served = ServedModels()
    served.apply(ModelTrainer.new("bots").snapshot(1).to_record())
    version, bots = served.get("bots")
    scored: list[int] = []

    class Counting:
        def score_one(self, x: dict) -> float:
            scored.append(1)
            return bots.score_one(x)
    served._latest_models["bots"] = (version, Counting())
    step, s = ModelStep(MODEL_RULES), None
    for i in range(40):   # 60 events/min: the rule flags it after 20, before a segments model exists
        if i == 25:
            served.apply(ModelTrainer.new("segments").snapshot(1).to_record())
        e = ev(i, "page_view", i * 1_000, {"page_type": "category", "category": "toys", "dwell_ms": 500})
        s = apply_event(s, e, RULES)
        step.on_event(s, e, profile_view("u1", s, RULES), served)
    out = ModelStep.outputs(s)
    assert out.bot and out.bot_by == "rule" and out.segment is None   # a bot gets no segment
    assert len(scored) == 1 + 40 // MODEL_RULES.score_every   # events 1, 5, 10, ..., 40
    human = ev(100, "page_view", 0, {"page_type": "category", "category": "toys", "dwell_ms": 5_000}, user="u2")
    s2 = apply_event(None, human, RULES)
    step.on_event(s2, human, profile_view("u2", s2, RULES), ServedModels())   # no model yet: no segment
    assert ModelStep.outputs(s2).segment is None
    later = ev(101, "page_view", 60_000, {"page_type": "category", "category": "toys", "dwell_ms": 5_000}, user="u2")
    s2 = apply_event(s2, later, RULES)
    step.on_event(s2, later, profile_view("u2", s2, RULES), served)   # the 2nd event, off the cadence
    assert ModelStep.outputs(s2).segment is not None


def test_a_user_flagged_as_a_bot_leaves_its_segment() -> None:
    served = ServedModels()
    served.apply(ModelTrainer.new("segments").snapshot(1).to_record())
    step, s, segments = ModelStep(MODEL_RULES), None, []
    for i in range(25):   # 60 events/min: a segment from the first event, the rule flags it at the 20th
        e = ev(i, "page_view", i * 1_000, {"page_type": "category", "category": "toys", "dwell_ms": 500})
        s = apply_event(s, e, RULES)
        view = ProfileView("u1", s, RULES)
        step.on_event(s, e, view, served)
        segments.append(view["segment"])
    assert segments[0] is not None and segments[18] is not None   # scored as a human first
    out = ModelStep.outputs(s)
    assert out.bot and out.segment is None and segments[19:] == [None] * 6


def _refused(served: ServedModels, record: dict) -> bool:
    before = served.refused
    return served.apply(record) is False and served.refused == before + 1


def test_a_snapshot_blob_is_data_never_code() -> None:
    """A pickle in ``model:*`` once ran code in every scorer: now every blob is JSON numbers, checked on the way in."""
    import base64
    import os

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch /tmp/persona-pwned",))
    served = ServedModels()
    good = {}
    for name in MODEL_NAMES:
        t = ModelTrainer.new(name, seed=1)
        r = random.Random(name)
        for _ in range(300):
            t.learn(_x(r, name), label=r.random() < 0.3, score=r.random(), previous=None)
        good[name] = t.snapshot(1).to_record()
        assert served.apply(good[name])
        json.loads(base64.b64decode(good[name]["blob"]))   # every blob is JSON
    for name, record in good.items():
        evil = {**record, "version": 2, "blob": base64.b64encode(pickle.dumps(Exploit())).decode()}
        assert _refused(served, evil)
        assert served.get(name)[0] == 1   # the last good model keeps serving
    assert not os.path.exists("/tmp/persona-pwned")


@pytest.mark.parametrize("name, mutate", [
    ("propensity", lambda d: {**d, "weights": d["weights"][:-1]}),
    ("propensity", lambda d: {**d, "intercept": "nan"}),
    ("segments", lambda d: {**d, "scaler": [["evil", 0.0, 1.0], *d["scaler"][1:]]}),
    ("segments", lambda d: {**d, "p": -1}),
    ("bots", lambda d: {**d, "trees": [[["events_per_min", 1.0, 5.0, 0, 0]]]}),   # a node that is its own child
    ("bots", lambda d: {**d, "extra": 1}),
])
def test_a_malformed_blob_is_refused_and_counted(name: str, mutate: Callable[[dict], dict]) -> None:
    import base64
    t = ModelTrainer.new(name, seed=1)
    r = random.Random(name)
    for _ in range(300):
        t.learn(_x(r, name), label=r.random() < 0.3, score=r.random(), previous=None)
    record = t.snapshot(1).to_record()
    doc = json.loads(base64.b64decode(record["blob"]))
    bad = {**record, "blob": base64.b64encode(json.dumps(mutate(doc)).encode()).decode()}
    served = ServedModels()
    assert _refused(served, bad) and served.get(name) is None
    assert _refused(served, {**record, "blob": "not base64!"})
    assert served.apply(record) and served.get(name)[0] == 1


def test_trainers_pickled_before_new_fields_restore_with_their_defaults() -> None:
    """A savepoint of the previous build holds trainers and learners without the fields added since (AdaGrad's
    sums, the segment identities): they restore, the learner as plain SGD, and keep learning."""
    propensity, segments = ModelTrainer.new("propensity"), ModelTrainer.new("segments")
    learner_state = propensity.model.__reduce_ex__(2)[2]
    old_learner = {k: v for k, v in learner_state[1].items() if k not in ("optimizer", "g2", "g2_categories")}
    restored = type(propensity.model).__new__(type(propensity.model))
    restored.__setstate__((None, old_learner))
    assert (restored.optimizer, restored.g2, restored.g2_categories) == ("sgd", [], {})
    n = len(PROPENSITY_NUMERIC)
    x = (0.0,) * 13 + (1.0,) + (0.0,) * (n - 14) + ("mobile", "h3", "add_to_cart")
    restored.learn(x[:n], x[n:], True)
    assert restored.n == 1
    trainer_state = segments.__reduce_ex__(2)[2]
    old_trainer = {k: v for k, v in trainer_state[1].items() if k not in ("order", "published", "switches", "matched")}
    back = ModelTrainer.__new__(ModelTrainer)
    back.__setstate__((None, old_trainer))
    assert (back.order, back.published, back.switches, back.matched) == ([], [], 0, 0)
    assert back.snapshot(0).version == 1 and back.order == [0, 1, 2, 3, 4]


def test_the_bot_model_is_judged_apart_from_the_rule_and_counted_against_it() -> None:
    """A session both the rule (fast) and the model (scores 0.99) call a bot: the flag is the rule's, the model's
    own verdict is kept, and the live tally counts the agreement once, when the second verdict arrives."""
    served = ServedModels()
    served.apply(ModelTrainer.new("bots").snapshot(1).to_record())
    version, _ = served.get("bots")

    class Sure:
        def score_one(self, x: dict) -> float:
            return 0.99
    served._latest_models["bots"] = (version, Sure())
    core = Personalizer(RULES, MODEL_RULES, compile_patterns(yaml.safe_load(PATTERNS), "test"), segments=5)
    s, tallies = None, []
    for i in range(25):   # 60 events/min: the model judges at event 10 (score_every 5), the rule flags at 20
        step = core.on_event(s, ev(i, "page_view", i * 1_000, {"page_type": "category", "category": "toys",
                                                                "dwell_ms": 500}), served)
        s = step.state
        tallies += [(i + 1, t) for t in step.bot_counts]
    assert s.models.model_judged_bot and s.models.bot_by == "rule"
    # The model flagged the user at event 10 (the rule could not yet), the rule took over at 20.
    assert tallies == [(10, ("bot_flags_by", "model")), (10, ("bot_model", "verdicts")),
                       (20, ("bot_flags_by", "rule")), (20, ("bot_model", "agreed"))]


def test_a_propensity_trainer_of_other_features_learns_afresh_and_skips_their_pending_examples() -> None:
    """A savepoint of the build with 17 numeric features: the restored trainer keeps its version and metrics,
    starts a new learner of this build's width, and examples that waited in users' state with the old width are
    counted, not learnt (they would misalign every weight)."""
    t = ModelTrainer.new("propensity")
    t.version = 7
    old = PropensityLearner.new(17, PROPENSITY_CATEGORICAL, lr=0.03, l2=1e-4, optimizer="adagrad")
    state = t.__reduce_ex__(2)[2]
    back = ModelTrainer.__new__(ModelTrainer)
    back.__setstate__((None, {**state[1], "model": old}))
    assert back.version == 7 and len(back.model.weights) == len(PROPENSITY_NUMERIC)
    old_x = (0.0,) * 17 + ("mobile", "h3", "add_to_cart")
    back.learn(old_x, label=True, score=0.5)
    assert back.stale == 1 and back.model.n == 0
    new_x = (0.0,) * len(PROPENSITY_NUMERIC) + ("mobile", "h3", "add_to_cart")
    back.learn(new_x, label=True, score=0.5)
    assert back.stale == 1 and back.model.n == 1
    assert back.metric_values()["stale_examples"] == 1.0 and "stale_examples" not in t.metric_values()


def test_the_drift_detector_counts_a_rise_of_the_loss_and_not_its_fall() -> None:
    r = random.Random(3)
    t = ModelTrainer.new("propensity")
    # The served model was right for 3,000 examples (loss ~0.1), then the stream turned (loss ~2.3).
    for _i in range(3_000):
        t.learn(_x(r, "propensity"), label=True, score=0.9)
    assert t.drifts == 0
    for _i in range(600):
        t.learn(_x(r, "propensity"), label=False, score=0.9)
    m = t.metric_values()
    assert m["drifts"] >= 1 and 3_000 < m["drift_at_examples"] <= 3_600 and m["loss_window"] > 1.0
    # A model getting better (the loss falls back) is a change too, but no drift to report.
    before = t.drifts
    for _i in range(3_000):
        t.learn(_x(r, "propensity"), label=False, score=0.1)
    assert t.drifts == before and t.metric_values()["loss_window"] < 0.5
    # The detector goes with the trainer into the checkpoint, and a trainer of an older build gets one.
    restored = pickle.loads(pickle.dumps(t))
    assert restored.drifts == t.drifts and restored.drift.width == t.drift.width
    old = pickle.loads(pickle.dumps(t))
    old.drift = None
    old.learn(_x(r, "propensity"), label=False, score=0.1)
    assert old.drift is not None and old.drift.width == 1
