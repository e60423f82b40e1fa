"""Experiments on triggers: variants, sticky assignment, outcomes by the delayed-label join, a Thompson bandit."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest
import yaml

from operators.config_files import ConfigError
from operators.events import Event
from operators.experiments import ExperimentOutcome, Tally, assign, unit_draw
from operators.model_scoring import ServedModels
from operators.pattern_spec import DEFAULT_PATTERNS, compile_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer, Step
from operators.profile_fold import ProfileRules
from state.user_state import UserState, decode_state, encode_state

T0 = int(datetime(2026, 11, 10, 12, 0, tzinfo=UTC).timestamp() * 1000)   # daytime UTC: no quiet hours
CART = {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 1, "currency": "EUR"}
CTX = {"device": "desktop", "timezone": "UTC"}
HOUR = 3_600_000


def book(policy: str, weights: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(DEFAULT_PATTERNS.read_text())
    doc["patterns"]["cart_abandonment"]["experiment"] = {
        "name": "abandonment_copy", "variants": weights or {"A": 45, "B": 45, "holdout": 10}, "holdout": "holdout",
        "policy": policy, "outcome": {"event": "purchase", "within": "24h"}}
    return compile_patterns(doc, "test")


class Shopper:
    """One user through the core: add to cart, silence; then maybe a purchase after the trigger."""

    def __init__(self, core: Personalizer, user: str) -> None:
        self.core, self.user = core, user
        self.state: UserState | None = None
        self.timers: set[int] = set()
        self.triggers: list[tuple[str, str | None]] = []
        self.suppressed: list[tuple[str, str]] = []
        self.outcomes: list[ExperimentOutcome] = []

    def take(self, step: Step) -> None:
        assert not step.failed, step.dead_letter
        self.state = decode_state(encode_state(step.state)) if step.state is not None else None
        self.timers |= set(step.timers)
        self.triggers += [(t.pattern, t.variant) for t in step.triggers]
        self.suppressed += list(step.suppressed)
        self.outcomes += list(step.experiments)

    def event(self, n: int, kind: str, t: int, payload: dict[str, object]) -> None:
        self.take(self.core.on_event(self.state, Event(f"{self.user}-{n}", kind, self.user, t, None, CTX, payload),
                                     ServedModels()))

    def until(self, watermark: int) -> None:
        while self.timers and min(self.timers) <= watermark:
            t = min(self.timers)
            self.timers.discard(t)
            self.take(self.core.on_timer(self.state, self.user, t))


def simulate(policy: str, users: int, rates: dict[str, float], feedback_every: int = 50) -> tuple[Tally, list[str]]:
    """A seeded stream in which each variant converts at its own rate; the tallies reach the core every
    ``feedback_every`` users, as the job reads them from Redis."""
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book(policy), segments=5)
    rng = random.Random(7)
    tally, order = Tally(), []
    for i in range(users):
        s = Shopper(core, f"u{i:05d}")
        s.event(1, "add_to_cart", T0, CART)
        s.until(T0 + HOUR)
        variant = s.state.patterns.experiments["abandonment_copy"].variant if s.state else None
        assert variant is not None
        order.append(variant)
        # Only those sent a message see it; the holdout converts at its own (base) rate.
        assert s.triggers == ([] if variant == "holdout" else [("cart_abandonment", variant)])
        if rng.random() < rates[variant]:
            s.event(2, "purchase", T0 + 2 * HOUR, {"order_id": f"o{i}", "items": [CART], "total_minor": 1250,
                                                     "currency": "EUR"})
        s.until(T0 + 30 * HOUR)
        assert len(s.outcomes) == 1 and s.outcomes[0].variant == variant
        tally.add(variant, s.outcomes[0].converted)
        if i % feedback_every == feedback_every - 1:
            core.engine.experiment_stats["abandonment_copy"] = tally.tallies()
    return tally, order


def test_assignment_is_deterministic_sticky_and_follows_the_weights() -> None:
    spec = book("fixed").by_name("cart_abandonment").experiment
    assert spec is not None
    assigned = [assign(spec, f"u{i}", {}) for i in range(20_000)]
    assert assigned == [assign(spec, f"u{i}", {"A": (10, 9)}) for i in range(20_000)]   # fixed: tallies don't matter
    shares = Counter(assigned)
    assert abs(shares["A"] / 20_000 - 0.45) < 0.015 and abs(shares["holdout"] / 20_000 - 0.10) < 0.01
    # The documented draw: the first 8 bytes of SHA-256("experiment\x1fuser"), big-endian, over 2**64.
    assert 0 <= unit_draw("abandonment_copy", "u1") < 1
    # Sticky: the variant is kept with the user, whatever later tallies say.
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book("thompson"), segments=5)
    s = Shopper(core, "u1")
    s.event(1, "add_to_cart", T0, CART)
    s.until(T0 + HOUR)
    first = s.state.patterns.experiments["abandonment_copy"].variant if s.state else None
    core.engine.experiment_stats["abandonment_copy"] = {"A": (1000, 900), "B": (1000, 1)}
    s.event(2, "add_to_cart", T0 + 26 * HOUR, CART)     # a day later: past the frequency cap
    s.until(T0 + 28 * HOUR)
    assert s.state is not None and s.state.patterns.experiments["abandonment_copy"].variant == first


def test_the_holdout_is_sent_nothing_and_its_outcome_still_counts() -> None:
    core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book("fixed", {"A": 1, "holdout": 1000}), segments=5)
    s = Shopper(core, "u1")
    s.event(1, "add_to_cart", T0, CART)
    s.until(T0 + HOUR)
    assert s.triggers == [] and s.suppressed == [("cart_abandonment", "experiment_holdout")]
    s.event(2, "purchase", T0 + 3 * HOUR, {"order_id": "o1", "items": [CART], "total_minor": 1250, "currency": "EUR"})
    assert [(o.variant, o.converted) for o in s.outcomes] == [("holdout", True)]


def test_thompson_sends_most_traffic_to_the_variant_that_converts_best() -> None:
    """B converts at 20%, A at 8%, the holdout at 5%: the experiment reports B ahead, the bandit sends most
    of the traffic to B, and the holdout keeps its 10% share."""
    tally, order = simulate("thompson", 2_000, {"A": 0.08, "B": 0.20, "holdout": 0.05})
    summary = tally.summary()
    assert summary["B"]["rate"] > summary["A"]["rate"] and summary["B"]["ci95"][0] > summary["holdout"]["rate"]
    sent = [v for v in order if v != "holdout"]
    assert Counter(sent)["B"] / len(sent) > 0.75
    assert Counter(sent[-500:])["B"] / 500 > 0.85                  # and more so as evidence builds
    assert abs(Counter(order)["holdout"] / len(order) - 0.10) < 0.02


def test_fixed_weights_keep_the_split_and_report_intervals() -> None:
    tally, order = simulate("fixed", 1_000, {"A": 0.08, "B": 0.20, "holdout": 0.05})
    shares = Counter(order)
    assert abs(shares["A"] - shares["B"]) < 100
    summary = tally.summary()
    low, high = summary["B"]["ci95"]
    assert low < summary["B"]["rate"] < high and summary["B"]["rate"] > summary["A"]["rate"]


@pytest.mark.parametrize(("change", "key"), [
    ({"holdout": "C"}, "experiment.holdout"),
    ({"policy": "epsilon"}, "experiment.policy"),
    ({"variants": {"A": 1}}, "experiment.variants"),
    ({"variants": {"A": 0, "B": 1}}, "experiment.variants.A"),
    ({"outcome": {"event": "purchase"}}, "experiment.outcome.within"),
])
def test_a_bad_experiment_is_one_line_naming_the_key(change: dict[str, object], key: str) -> None:
    doc = yaml.safe_load(DEFAULT_PATTERNS.read_text())
    doc["patterns"]["cart_abandonment"]["experiment"] = {
        "name": "x", "variants": {"A": 1, "B": 1}, "outcome": {"event": "purchase", "within": "24h"}} | change
    with pytest.raises(ConfigError) as e:
        compile_patterns(doc, "test")
    assert f"patterns.cart_abandonment.{key}" in str(e.value) and "\n" not in str(e.value)
