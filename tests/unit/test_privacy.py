"""Consent per purpose, erasure and minimisation through the per-event core (docs/privacy.md).

The consent matrix: each purpose denied in turn, checking what is stored (state and the Redis profile),
scored and learnt (model outputs, training examples) and sent (triggers), against all granted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from operators.consent import ConsentPolicy
from operators.events import Event
from operators.model_scoring import Example, ServedModels
from operators.pattern_spec import load_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer
from operators.profile_fold import CONSENT_PROFILE_FIELDS, ProfileRules, consent_at
from state.pattern_state import Trigger
from state.user_state import UserState, decode_state, encode_state

CART = {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 1, "currency": "EUR"}
ALL = ["analytics", "personalization", "marketing"]


def at(hour: int, minute: int = 0, day: int = 2) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Run:
    core: Personalizer
    state: UserState | None = None
    timers: set[int] = field(default_factory=set)
    sent: list[Trigger] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    audits: list[Any] = field(default_factory=list)
    n: int = 0

    def event(self, kind: str, t: int, payload: dict[str, Any], country: str | None = None) -> None:
        """Fire the timers due before ``t`` (as the watermark would), then apply the event."""
        self.until(t - 1)
        self.n += 1
        ctx: dict[str, Any] = {"device": "mobile", "timezone": "UTC"} | ({"country": country} if country else {})
        step = self.core.on_event(self.state, Event(f"e{self.n}", kind, "u1", t, None, ctx, payload), ServedModels())
        assert not step.failed and step.dead_letter is None
        self._take(step)
        if step.audit is not None:
            self.audits.append(step.audit)

    def until(self, t: int) -> None:
        while self.timers and min(self.timers) <= t:
            due = min(self.timers)
            self.timers.discard(due)
            step = self.core.on_timer(self.state, "u1", due)
            assert not step.failed
            self._take(step)

    def _take(self, step: Any) -> None:
        self.state = step.state
        self.timers |= set(step.timers)
        self.sent += step.triggers
        self.suppressed += step.suppressed
        self.examples += step.examples

    def profile(self) -> tuple[dict[str, str], tuple[str, ...]]:
        assert self.state is not None
        return self.core.profile("u1", self.state, 0)


def core(policy: ConsentPolicy | None = None, **rules: Any) -> Personalizer:
    return Personalizer(ProfileRules(consent=policy or ConsentPolicy(), **rules), DEFAULT_MODEL_RULES, load_patterns(), segments=5)


def shop(run: Run, start: int, country: str | None = None) -> None:
    """A session that browses, adds to cart and leaves (an abandonment 30 min later), then buys the next day."""
    for i in range(6):
        run.event("page_view", start + i * 60_000, {"page_type": "product", "product_id": f"p{i}", "category": "toys",
                                                   "dwell_ms": 40_000}, country)
    run.event("add_to_cart", start + 7 * 60_000, CART, country)
    run.event("page_view", start + 86_400_000, {"page_type": "home"}, country)
    run.event("purchase", start + 86_400_000 + 60_000, {"order_id": "o1", "items": [{**CART}], "total_minor": 1250,
                                                        "currency": "EUR"}, country)
    run.until(start + 3 * 86_400_000)


@pytest.mark.parametrize("denied", [None, "analytics", "personalization", "marketing"])
def test_consent_matrix_each_purpose_denied_in_turn(denied: str | None) -> None:
    run = Run(core())
    t0 = at(12)
    if denied:
        run.event("consent", t0 - 60_000, {"granted": [], "withdrawn": [denied]})
    shop(run, t0)
    fields, sets = run.profile()
    assert run.state is not None
    consent = json.loads(fields["consent"])
    assert consent == {p: p != denied for p in ALL}

    stored = run.state.totals != {} or run.state.cart != {} or run.state.rfm.days != {}
    scored = run.state.models.propensity is not None or run.state.models.segment is not None
    learnt = len(run.examples) > 0
    sent = [t.pattern for t in run.sent]
    profile_beyond_consent = set(fields) - {*CONSENT_PROFILE_FIELDS, "updated_at"}

    # Stored: only without analytics consent is there nothing but the consent record.
    assert stored == (denied != "analytics")
    # Scored and learnt: needs analytics and personalization.
    assert scored == (denied not in ("analytics", "personalization"))
    assert learnt == (denied not in ("analytics", "personalization"))
    # The Redis profile beyond the consent flags, and the stage/segment sets: likewise.
    assert bool(profile_beyond_consent) == (denied not in ("analytics", "personalization"))
    assert bool(sets) == (denied not in ("analytics", "personalization"))
    # Sent: needs analytics (no profile, no pattern) and marketing; personalization is not needed for a trigger.
    assert ("cart_abandonment" in sent) == (denied not in ("analytics", "marketing"))
    if denied == "marketing":
        assert ("cart_abandonment", "no_consent") in run.suppressed
    # Every consent change leaves an audit entry with what is in force after it.
    assert [a.action for a in run.audits] == (["consent_change"] if denied else [])
    if denied:
        assert run.audits[0].consent["in_force"] == consent and run.audits[0].consent["withdrawn"] == [denied]


def test_marketing_withdrawn_during_quiet_hours_stops_the_deferred_trigger() -> None:
    run = Run(core())
    run.event("add_to_cart", at(21, 50), CART)          # abandoned at 22:20: deferred to 08:00
    run.event("consent", at(23, 0), {"granted": [], "withdrawn": ["marketing"]})
    run.until(at(12, day=3))
    assert run.sent == [] and run.suppressed == [("cart_abandonment", "no_consent_at_release")]


def test_an_opt_in_country_starts_with_everything_denied_until_the_user_grants() -> None:
    policy = ConsentPolicy(by_country={"DE": (False, False, False)})
    run = Run(core(policy))
    run.event("add_to_cart", at(12), CART, "DE")
    fields, sets = run.profile()
    assert run.state is not None and run.state.cart == {} and run.state.country == "DE"
    assert json.loads(fields["consent"]) == dict.fromkeys(ALL, False) and sets == ()
    run.until(at(13))
    assert run.sent == []
    # The banner: everything granted. From the next event on, the profile is kept.
    run.event("consent", at(13, 5), {"granted": ALL, "withdrawn": []}, "DE")
    run.event("add_to_cart", at(13, 10), CART, "DE")
    run.until(at(14))
    assert [t.pattern for t in run.sent] == ["cart_abandonment"]
    fields, sets = run.profile()
    assert "cart_items" in fields and "considering" not in sets and len(sets) == 1
    # Another country of the same policy keeps the default.
    other = Run(core(policy))
    other.event("add_to_cart", at(12), CART, "FR")
    assert other.state is not None and other.state.cart != {}


def test_withdrawing_analytics_clears_the_profile_and_what_was_pending() -> None:
    run = Run(core())
    run.event("add_to_cart", at(21, 50), CART)          # an armed abandonment
    run.event("consent", at(21, 55), {"granted": [], "withdrawn": ["analytics"]})
    assert run.state is not None and run.state.cart == {} and run.state.patterns.absence == {}
    outcome = run.audits[0].outcome
    assert outcome["flink_state"]["status"] == "profile_cleared" and outcome["pending_matches"]["count"] == 1
    run.until(at(12, day=3))
    assert run.sent == []
    fields, sets = run.profile()
    assert set(fields) <= {*CONSENT_PROFILE_FIELDS, "updated_at"} and sets == ()


def test_an_erasure_clears_everything_pending_and_says_what_went() -> None:
    run = Run(core())
    run.event("consent", at(20), {"granted": [], "withdrawn": ["marketing"]})
    run.event("consent", at(20, 1), {"granted": ["marketing"], "withdrawn": []})
    run.event("add_to_cart", at(21, 50), CART)          # abandoned 22:20: deferred to 08:00
    run.event("page_view", at(22, 35), {"page_type": "product", "product_id": "p2", "category": "toys"})
    run.event("add_to_cart", at(22, 36), CART | {"product_id": "p2"})   # armed until 23:06
    assert run.state is not None
    deferred = len(run.state.patterns.deferred)
    assert deferred >= 1
    run.event("erasure_request", at(22, 40), {})
    erasure = run.audits[-1]
    assert erasure.action == "erasure"
    assert erasure.outcome["pending_triggers"] == {"status": "dropped", "count": deferred}
    assert erasure.outcome["pending_matches"] == {"status": "dropped", "count": 1}
    assert erasure.outcome["flink_state"] == {"status": "cleared"}
    # Nothing of the user is left, the consent record neither; what is stored is what de-duplicates the request.
    assert run.state == UserState(seen_events=run.state.seen_events) and len(run.state.seen_events) == 1
    run.until(at(12, day=3))
    assert run.sent == []
    # The same erasure delivered again (a producer retry) is a duplicate: no second audit record.
    step = run.core.on_event(run.state, Event("e6", "erasure_request", "u1", at(22, 41), None, {}, {}), ServedModels())
    assert step.duplicate and step.audit is None


def test_pii_attributes_are_never_stored_and_a_join_key_is_a_salted_hash() -> None:
    run = Run(core(pii_join_keys=frozenset({"email"}), pii_salt="pepper"))
    run.event("profile_update", at(12), {"attributes": {"email": "Ann@Example.com", "phone": "+49 30 1234",
                                                        "age_band": "25-34"}})
    assert run.state is not None
    demo = run.state.demographics
    assert set(demo) == {"age_band", "email_hash"} and len(demo["email_hash"]) == 32
    text = encode_state(run.state)
    assert b"Ann@Example" not in text and b"1234" not in text
    fields, _ = run.profile()
    assert "Example" not in fields["demographics"] and "1234" not in fields["demographics"]


def test_a_state_written_before_consent_per_purpose_keeps_its_marketing_choice() -> None:
    legacy = UserState(version=3, newest_event_ms=at(12), consent_log=[(at(11), False)])
    state = decode_state(encode_state(legacy))
    rules = ProfileRules()
    assert not consent_at(state, at(12), rules) and consent_at(state, at(10), rules)
    run = Run(core(), state=state)
    run.event("page_view", at(12, 5), {"page_type": "home"})
    assert run.state is not None and run.state.consent_log == []
    assert run.state.consents == [(at(11), "marketing", False)]
    fields, _ = run.profile()
    assert fields["marketing_consent"] == "false"


def test_policy_defaults_come_from_the_settings() -> None:
    from persona.rules import profile_rules
    from persona.settings import load_job_settings

    rules = profile_rules(load_job_settings({"privacy.consent.regions": {"eea": {
        "countries": ["DE", "at"], "analytics": False, "personalization": False, "marketing": False}}}))
    assert rules.consent.default_for("analytics", "DE") is False
    assert rules.consent.default_for("marketing", "AT") is False
    assert rules.consent.default_for("marketing", "US") is True
    assert replace(rules, pii_salt="x").pii_salt == "x"


def test_an_erasure_takes_effect_at_its_event_time_whatever_the_watermark() -> None:
    """An abandonment due before the request is sent with it, even if no timer fired yet; one due after is not."""
    for erase_at, sent in ((at(12, 40), ["cart_abandonment"]), (at(12, 20), [])):
        run = Run(core())
        run.event("add_to_cart", at(12), CART)               # deadline 12:30
        step = run.core.on_event(run.state, Event("x", "erasure_request", "u1", erase_at, None, {}, {}), ServedModels())
        assert [t.pattern for t in step.triggers] == sent and step.erase
        assert step.audit is not None
        assert step.audit.outcome["released_before_erasure"]["count"] == len(sent)
        assert step.audit.outcome["pending_matches"]["count"] == 1 - len(sent)


def test_the_ip_becomes_a_country_and_is_dropped_at_ingestion() -> None:
    from operators.input_limits import InputLimits
    from operators.validation import parse_event

    def parsed(context: dict[str, Any], limits: InputLimits | None = None) -> dict[str, Any]:
        raw = json.dumps({"event_id": "e1", "event_type": "page_view", "user_id": "u1", "schema_version": 1,
                          "event_time": "2026-11-02T12:00:00Z", "context": context, "payload": {"page_type": "home"}})
        event = parse_event(raw.encode(), limits or InputLimits())
        assert isinstance(event, Event)
        return event.context

    assert parsed({"ip": "81.2.69.142"}) == {"country": "GB"}
    assert parsed({"ip": "81.2.69.142", "geo": {"country": "fr"}}) == {"country": "FR"}   # the shop's own geo wins
    assert parsed({"ip": "10.1.2.3"}) == {} and parsed({"ip": "nonsense"}) == {}
    assert parsed({"ip": "81.2.69.142"}, InputLimits(ip_geolocation=False)) == {}
