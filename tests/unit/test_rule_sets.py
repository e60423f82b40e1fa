"""Rule sets as versioned data, and what a running core does with pending matches when the rule set changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from operators.config_files import ConfigError
from operators.events import Event
from operators.model_scoring import ServedModels
from operators.pattern_spec import DEFAULT_PATTERNS
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer, Step
from operators.profile_fold import ProfileRules
from operators.rule_sets import book_of, next_rule_set
from state.rule_set_record import RuleSet
from state.user_state import UserState, decode_state, encode_state

LIVE = DEFAULT_PATTERNS.read_text()
CART = {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 1, "currency": "EUR"}
MIN = 60_000


def with_window(text: str) -> str:
    """The live file with cart_abandonment's ``within`` set to ``text``."""
    doc = yaml.safe_load(LIVE)
    doc["patterns"]["cart_abandonment"]["within"] = text
    return yaml.safe_dump(doc, sort_keys=False)


SHORT = with_window("10m")


def at(hour: int, minute: int = 0, day: int = 2) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def published(*sources: str) -> list[RuleSet]:
    out: list[RuleSet] = []
    for i, source in enumerate(sources):
        out.append(next_rule_set(out[-1] if out else None, source, "test", i))
    return out


def add_to_cart(event_id: str, t: int, device: str = "desktop") -> Event:
    return Event(event_id, "add_to_cart", "u1", t, None, {"device": device, "timezone": "UTC"}, CART)


class Runner:
    """One user through the core, firing timers in order as the watermark passes them."""

    def __init__(self, rules: RuleSet) -> None:
        self.core = Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book_of(rules), segments=5)
        self.state: UserState | None = None
        self.timers: set[int] = set()
        self.sent: list[tuple[str, int, int, int]] = []    # (pattern, emitted_at, rules version, pattern version)
        self.suppressed: list[tuple[str, str]] = []

    def take(self, step: Step) -> None:
        assert not step.failed, step.dead_letter
        # What the job stores: every step goes through the state's bytes.
        self.state = decode_state(encode_state(step.state)) if step.state is not None else None
        self.timers |= set(step.timers)
        self.sent += [(t.pattern, t.emitted_at, t.rules_version, t.pattern_version) for t in step.triggers]
        self.suppressed += list(step.suppressed)

    def event(self, e: Event) -> None:
        self.take(self.core.on_event(self.state, e, ServedModels()))

    def until(self, watermark: int) -> None:
        while self.timers and min(self.timers) <= watermark:
            t = min(self.timers)
            self.timers.discard(t)
            self.take(self.core.on_timer(self.state, "u1", t))


def test_versions_and_diff_say_what_changed_and_what_happens_to_state() -> None:
    desktop_only = LIVE.replace("{event: add_to_cart}", "{event: add_to_cart, where: {context.device: {eq: desktop}}}")
    v1, v2, v3, v4 = published(
        LIVE, SHORT,
        desktop_only, desktop_only.replace("frequency_cap: {max: 1, per: 24h}", "frequency_cap: {max: 2, per: 24h}"))
    assert v1.version == 1 and set(v1.patterns.values()) == {(1, 1)} and v1.diff[0].startswith("+ patterns.")
    # A shorter window: a new pattern version, the state kept.
    assert v2.patterns["cart_abandonment"] == (2, 1) and v2.patterns["loyalty"] == (1, 1)
    assert v2.diff == ["~ patterns.cart_abandonment.within: 30m -> 10m (pattern state kept)"]
    # Another anchor (v3 against v2: the window is back to 30m too): the state is reset.
    assert v3.patterns["cart_abandonment"] == (3, 3)
    assert any("anchor.where.context.device.eq" in line and "state reset" in line for line in v3.diff)
    assert v4.diff == ["~ gate.frequency_cap.max: 1 -> 2"]
    assert RuleSet.from_json(v3.to_json()) == v3


def test_a_broken_rule_set_is_one_line_naming_the_key() -> None:
    v1 = published(LIVE)[0]
    with pytest.raises(ConfigError) as e:
        next_rule_set(v1, with_window("soon"), "test", 1)
    assert "patterns.cart_abandonment.within" in str(e.value) and "\n" not in str(e.value)


def test_triggers_carry_the_rule_set_and_pattern_versions() -> None:
    v1, v2 = published(LIVE, LIVE.replace("more than 3 purchases", "over 3 purchases"))
    run = Runner(v2)
    run.event(add_to_cart("a1", at(12)))
    run.until(at(14))
    assert run.sent == [("cart_abandonment", at(12, 30), 2, 1)]
    assert v2.patterns["loyalty"] == (2, 1)


def test_a_compatible_change_keeps_pending_matches_with_their_deadline() -> None:
    v1, v2 = published(LIVE, SHORT)
    run = Runner(v1)
    run.event(add_to_cart("a1", at(12)))            # armed under v1: due 12:30
    run.core.use_rules(book_of(v2))
    run.until(at(12, 35))
    run.event(add_to_cart("a2", at(13, day=3)))     # under v2: due 13:10 (a day later: the frequency cap)
    run.until(at(14, day=3))
    # Released under v2 (the version on the trigger), at the deadline v1 armed it with.
    assert run.sent == [("cart_abandonment", at(12, 30), 2, 2), ("cart_abandonment", at(13, 10, day=3), 2, 2)]
    assert run.suppressed == []


def test_an_incompatible_change_resets_the_pattern_and_counts_what_it_dropped() -> None:
    v1, v2 = published(LIVE, LIVE.replace("anchor: {event: add_to_cart}",
                                          "anchor: {event: add_to_cart, where: {event.price_minor: {gt: 100}}}"))
    run = Runner(v1)
    run.event(add_to_cart("a1", at(12)))
    run.core.use_rules(book_of(v2))
    run.until(at(14))                               # the v1 match was dropped at the first step under v2
    assert run.sent == [] and run.suppressed == [("cart_abandonment", "pattern_reset")]
    run.event(add_to_cart("a2", at(15)))
    run.until(at(16))
    assert [p for p, *_ in run.sent] == ["cart_abandonment"]


def test_renaming_and_removing_patterns_while_matches_are_pending_never_crashes() -> None:
    """A mobile add-to-cart after long product views arms two absence patterns, and a night-time abandonment is
    deferred by quiet hours. Then the rule set renames cart_abandonment and removes high_intent_mobile."""
    renamed = (LIVE.replace("cart_abandonment:", "cart_left:").replace("of: cart_abandonment", "of: cart_left")
               .replace("high_intent_mobile:\n", "old_high_intent_mobile:\n"))
    start, end = renamed.index("  old_high_intent_mobile:"), renamed.index("  repeat_visitor_not_converting:")
    v1, v2 = published(LIVE, renamed[:start] + renamed[end:])
    assert any(line.startswith("- patterns.high_intent_mobile (removed") for line in v2.diff)
    run = Runner(v1)
    run.event(add_to_cart("night", at(21, 50)))     # abandoned 22:20: deferred to 08:00
    run.until(at(22, 30))
    assert run.sent == [] and run.state is not None and len(run.state.patterns.deferred) == 1
    run.event(Event("v1", "page_view", "u1", at(22, 40), None, {"device": "mobile", "timezone": "UTC"},
                    {"page_type": "product", "product_id": "p1", "category": "toys", "dwell_ms": 200_000}))
    run.event(add_to_cart("a2", at(22, 45), device="mobile"))   # arms both absence patterns
    armed = {name for name, a in run.state.patterns.absence.items() if a.armed}
    assert armed == {"cart_abandonment", "high_intent_mobile"}
    run.core.use_rules(book_of(v2))
    run.until(at(9, 0, day=3))
    assert sorted(run.suppressed) == [("cart_abandonment", "pattern_removed"), ("high_intent_mobile", "pattern_removed")]
    # The deferred trigger passed the gate under v1 and is released under its old name and versions.
    assert run.sent == [("cart_abandonment", at(8, 0, day=3), 1, 1)]
    run.event(add_to_cart("a3", at(10, 0, day=3)))
    run.until(at(11, 0, day=3))
    assert run.sent[-1] == ("cart_left", at(10, 30, day=3), 2, 2)
    assert set(run.state.patterns.absence) <= {"cart_left"} and run.state.patterns.rules_version == 2
