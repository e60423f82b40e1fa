"""Pattern definitions as data: validation messages, and the engine over profiles and timers."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from operators.events import Event
from operators.pattern_engine import PatternEngine
from operators.pattern_spec import compile_patterns, load_patterns, parse_duration
from operators.profile_fold import ProfileRules, UserState, apply_event, profile_view
from persona.settings import CONF_DIR, ConfigError

DOC = yaml.safe_load((CONF_DIR / "patterns.yaml").read_text())
RULES = ProfileRules()
MIN = 60_000
NOON = int(datetime(2026, 11, 2, 12, tzinfo=UTC).timestamp() * 1000)


def test_shipped_patterns_compile() -> None:
    book = load_patterns()
    assert {p.name for p in book.patterns} == {"cart_abandonment", "repeated_cart_abandonment", "high_intent_mobile",
                                               "repeat_visitor_not_converting", "loyalty"}
    assert book.by_name("cart_abandonment").within_ms == 30 * MIN


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(("path", "value", "message"), [
    (["patterns", "loyalty", "when"], {"profile.purchases_per_fortnight": {"gt": 1}}, "patterns.loyalty.when.profile.purchases_per_fortnight: unknown profile field"),
    (["patterns", "cart_abandonment", "within"], "-5m", "patterns.cart_abandonment.within: '-5m' is not a positive duration"),
    (["patterns", "cart_abandonment", "within"], "0m", "patterns.cart_abandonment.within"),
    (["patterns", "cart_abandonment", "anchor"], {"event": "add_to_basket"}, "patterns.cart_abandonment.anchor.event: 'add_to_basket' is not an event type"),
    (["patterns", "cart_abandonment", "colour"], "red", "patterns.cart_abandonment: unknown field 'colour'"),
    (["patterns", "loyalty", "kind"], "sometimes", "patterns.loyalty.kind: 'sometimes' is not one of"),
    (["patterns", "repeated_cart_abandonment", "of"], "nothing", "patterns.repeated_cart_abandonment.of"),
    (["patterns", "high_intent_mobile", "anchor", "where"], {"context.device": {"approx": "mobile"}}, "expected one operator"),
    (["gate", "quiet_hours", "start"], 25, "gate.quiet_hours.start"),
    (["gate", "max_per_user"], {"max": 0, "per": "1d"}, "gate.max_per_user.max"),
    (["gate", "max_per_user"], {"max": 1, "per": "1d", "priority": ["nope"]}, "gate.max_per_user.priority"),
])
def test_invalid_pattern_files_name_pattern_and_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        compile_patterns(_broken(path, value))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_durations() -> None:
    assert [parse_duration(x, "k") for x in ("250ms", "30s", "30m", "2h", "7d")] == [250, 30_000, 1_800_000, 7_200_000, 604_800_000]


# ----------------------------------------------------------------------------- engine
ENGINE = PatternEngine(load_patterns())


class User:
    """Drives profile + engine like the Flink function does."""

    def __init__(self, device: str = "desktop", tz: str = "UTC", engine: PatternEngine | None = None) -> None:
        self.engine = engine or ENGINE
        self.state: UserState | None = None
        self.device, self.tz, self.n = device, tz, 0
        self.triggers: list[tuple[str, str, int, int]] = []
        self.timers: list[int] = []
        self.suppressed: list[tuple[str, str]] = []

    def event(self, event_type: str, t: int, **payload: Any) -> None:
        self.n += 1
        e = Event(f"e{self.n}", event_type, "u1", t, None, {"device": self.device, "timezone": self.tz}, payload)
        self.state = apply_event(self.state, e, RULES)
        out = self.engine.on_event(self.state, e, profile_view("u1", self.state, RULES))
        self._take(out)

    def watermark(self, t: int) -> None:
        assert self.state is not None
        for timer in sorted(x for x in self.timers if x <= t):
            self.timers.remove(timer)
            self._take(self.engine.on_timer(self.state, "u1", timer))

    def _take(self, out: Any) -> None:
        self.triggers += [(tr.pattern, tr.trigger_id, tr.event_time, tr.emitted_at) for tr in out.triggers]
        self.timers += out.timers
        self.suppressed += out.suppressed

    def add(self, t: int, pid: str = "p1") -> None:
        self.event("add_to_cart", t, product_id=pid, category="shoes", price_minor=1000, quantity=1, currency="EUR")


def test_cart_abandonment_fires_for_a_silent_user_with_cart_contents() -> None:
    u = User()
    u.add(NOON)
    u.watermark(NOON + 30 * MIN - 1)
    assert u.triggers == []
    u.watermark(NOON + 30 * MIN)
    assert [(p, t, e) for p, _, t, e in u.triggers] == [("cart_abandonment", NOON + 30 * MIN, NOON + 30 * MIN)]
    assert u.state is not None and profile_view("u1", u.state, RULES)["stage"] == "cart_abandoned"


def test_emptied_cart_cancels_but_a_partial_removal_does_not() -> None:
    u = User()
    u.add(NOON, "p1")
    u.add(NOON + MIN, "p2")
    u.event("remove_from_cart", NOON + 2 * MIN, product_id="p1", category="shoes", price_minor=1000, quantity=1, currency="EUR")
    u.watermark(NOON + 3 * 60 * MIN)
    assert [p for p, *_ in u.triggers] == ["cart_abandonment"]
    v = User()
    v.add(NOON)
    v.event("remove_from_cart", NOON + MIN, product_id="p1", category="shoes", price_minor=1000, quantity=1, currency="EUR")
    v.watermark(NOON + 3 * 60 * MIN)
    assert v.triggers == []


def test_second_abandonment_in_a_session_escalates_and_cap_applies_per_pattern() -> None:
    u = User()
    u.add(NOON)
    u.event("page_view", NOON + 25 * MIN, page_type="home")
    u.event("page_view", NOON + 50 * MIN, page_type="home")     # same session (gaps under 30 min)
    u.add(NOON + 60 * MIN)
    u.watermark(NOON + 5 * 60 * MIN)
    assert [p for p, *_ in u.triggers] == ["cart_abandonment", "repeated_cart_abandonment"]


def test_frequency_cap_suppresses_second_abandonment_of_the_day() -> None:
    u = User()
    u.add(NOON)
    u.event("page_view", NOON + 3 * 60 * MIN, page_type="home")   # new session
    u.add(NOON + 3 * 60 * MIN + MIN)
    u.watermark(NOON + 6 * 60 * MIN)
    assert [p for p, *_ in u.triggers] == ["cart_abandonment"]
    assert u.suppressed == [("cart_abandonment", "frequency_cap")]


def test_no_marketing_consent_no_trigger() -> None:
    u = User()
    u.event("consent", NOON, granted=[], withdrawn=["marketing"])
    u.add(NOON + MIN)
    u.watermark(NOON + 60 * MIN)
    assert u.triggers == [] and u.suppressed == [("cart_abandonment", "no_consent")]


def test_consent_is_judged_at_the_match_time_not_when_the_timer_fires() -> None:
    u = User()
    u.add(NOON)
    u.event("consent", NOON + 31 * MIN, granted=[], withdrawn=["marketing"])   # after the deadline
    u.watermark(NOON + 60 * MIN)
    assert [p for p, *_ in u.triggers] == ["cart_abandonment"]
    v = User()
    v.add(NOON)
    v.event("consent", NOON + 29 * MIN, granted=[], withdrawn=["marketing"])   # before the deadline
    v.watermark(NOON + 60 * MIN)
    assert v.triggers == [] and v.suppressed == [("cart_abandonment", "no_consent")]


def test_quiet_hours_defer_until_the_watermark_reaches_their_end() -> None:
    u = User(tz="Europe/Berlin")
    late_evening = int(datetime(2026, 11, 2, 21, 0, tzinfo=UTC).timestamp() * 1000)   # 22:00 in Berlin
    u.add(late_evening)
    u.watermark(late_evening + 9 * 60 * MIN)
    assert u.triggers == []
    release = int(datetime(2026, 11, 3, 7, 0, tzinfo=UTC).timestamp() * 1000)        # 08:00 in Berlin
    u.watermark(release)
    assert [(p, t, e) for p, _, t, e in u.triggers] == [("cart_abandonment", late_evening + 30 * MIN, release)]


def test_high_intent_mobile_needs_mobile_and_dwell() -> None:
    u = User(device="mobile")
    u.event("page_view", NOON, page_type="product", product_id="p1", category="shoes", dwell_ms=121_000)
    u.add(NOON + MIN)
    u.watermark(NOON + 2 * 60 * MIN)
    assert sorted(p for p, *_ in u.triggers) == ["cart_abandonment", "high_intent_mobile"]
    d = User(device="desktop")
    d.event("page_view", NOON, page_type="product", product_id="p1", category="shoes", dwell_ms=121_000)
    d.add(NOON + MIN)
    d.watermark(NOON + 2 * 60 * MIN)
    assert [p for p, *_ in d.triggers] == ["cart_abandonment"]


def test_loyalty_is_edge_triggered() -> None:
    u = User()
    buy = {"order_id": "o", "items": [{"product_id": "p", "category": "c", "price_minor": 1, "quantity": 1}],
           "total_minor": 1, "currency": "EUR"}
    for i in range(6):
        u.event("purchase", NOON + i * 24 * 60 * MIN, **buy)
    assert [p for p, *_ in u.triggers] == ["loyalty"]         # fired at the 4th purchase only
    assert u.triggers[0][2] == NOON + 3 * 24 * 60 * MIN


def test_repeat_visitor_not_converting() -> None:
    u = User()
    for day in range(3):
        u.event("page_view", NOON + day * 24 * 60 * MIN, page_type="home")
    assert [p for p, *_ in u.triggers] == ["repeat_visitor_not_converting"]


def test_one_add_to_cart_sends_one_message_under_a_per_user_cap_and_priority_picks_it() -> None:
    """Both absence patterns match the same add-to-cart at the same deadline: with ``gate.max_per_user`` only
    the pattern first in ``priority`` is sent; the other is suppressed with reason ``user_cap``."""
    for priority in (["high_intent_mobile", "cart_abandonment"], ["cart_abandonment", "high_intent_mobile"]):
        doc = copy.deepcopy(DOC)
        doc["gate"]["max_per_user"] = {"max": 1, "per": "24h", "priority": priority}
        u = User(device="mobile", engine=PatternEngine(compile_patterns(doc)))
        u.event("page_view", NOON, page_type="product", product_id="p1", category="shoes", dwell_ms=121_000)
        u.add(NOON + MIN)
        u.watermark(NOON + 2 * 60 * MIN)
        assert [p for p, *_ in u.triggers] == [priority[0]]
        assert (priority[1], "user_cap") in u.suppressed
