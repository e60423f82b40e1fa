"""The per-user profile: one compact state value, a pure ``apply_event`` and the Redis view of it.

Every derived number is evaluated at the user's newest event time, never at a wall clock, so the same
events give the same profile whatever the arrival order (within the lateness bound) and whenever the
job runs.

Lateness is judged per user: an event older than the user's newest event by more than
``allowed_lateness_ms`` is refused (``late_event``). Per user, records keep their order in Kafka and
Flink, so this decision is deterministic, unlike one against a watermark whose cadence depends on
wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from operators.events import Event
from state.affinity import Affinities
from state.compact import compact, row
from state.journey import JourneyFacts, journey_stage
from state.keys import PROFILE_SCHEMA_VERSION
from state.rfm import Rfm, RfmThresholds, rfm_score
from state.sessions import Sessions
from state.windows import MEASURES, SlidingWindow, measures_of

T = TypeVar("T")
MIN = 60_000
WINDOWS = {"10m": (10 * MIN, MIN), "1h": (60 * MIN, 5 * MIN), "24h": (24 * 60 * MIN, 60 * MIN)}
WEEK_MS = 7 * 24 * 60 * MIN


@compact
@dataclass(frozen=True, slots=True)
class ProfileRules:
    """Plain values from settings (Flink pickles functions: no settings objects inside them)."""

    session_gap_ms: int = 30 * MIN
    recent_sessions: int = 5
    affinity_half_life_ms: int = WEEK_MS
    affinity_weights: tuple[tuple[str, float], ...] = (("page_view", 1.0), ("add_to_cart", 3.0), ("purchase", 5.0))
    affinity_keep: int = 10
    loyal_min_purchases: int = 3
    allowed_lateness_ms: int = 60_000
    rfm: RfmThresholds = RfmThresholds()


@dataclass(slots=True)
class UserState:
    version: int = 0
    newest_event_ms: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    windows: dict[str, SlidingWindow] = field(default_factory=dict)
    sessions: Sessions | None = None
    session_product_views: int = 0
    session_product_dwell_ms: int = 0
    session_starts: list[int] = field(default_factory=list)
    rfm: Rfm = field(default_factory=Rfm)
    affinities: Affinities | None = None
    device_counts: dict[str, int] = field(default_factory=dict)
    last_device: str | None = None
    country: str | None = None
    timezone: str | None = None
    demographics: dict[str, Any] = field(default_factory=dict)
    marketing_consent: bool = True
    consent_log: list[tuple[int, bool]] = field(default_factory=list)   # (event time, marketing consent), last 10
    cart: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_purchase_ms: int | None = None
    last_add_ms: int | None = None
    last_abandon_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # pattern and gate state, owned by operators/

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled on every event: one restore function over builtins (see state/compact.py). The parts in
        # ``extra`` reduce the same way, each with one restore function of its own. This argument order is
        # the checkpointed format: a new field goes last, with a default in ``_user_state`` for old state.
        return _user_state, (
            self.version, self.newest_event_ms, self.totals, {name: row(w) for name, w in self.windows.items()},
            None if self.sessions is None else self.sessions.flat(), self.session_product_views,
            self.session_product_dwell_ms, self.session_starts, row(self.rfm),
            None if self.affinities is None else row(self.affinities), self.device_counts, self.last_device,
            self.country, self.timezone, self.demographics, self.marketing_consent, self.consent_log, self.cart,
            self.last_purchase_ms, self.last_add_ms, self.last_abandon_ms, self.extra)


def _user_state(version: int, newest_event_ms: int, totals: dict[str, int], windows: dict[str, tuple[Any, ...]],
                sessions: tuple[Any, ...] | None, *rest: Any) -> UserState:
    (views, dwell, starts, rfm, affinities, devices, last_device, country, timezone, demographics, consent,
     consent_log, cart, last_purchase, last_add, last_abandon, extra) = rest
    return UserState(version, newest_event_ms, totals, {name: SlidingWindow(*w) for name, w in windows.items()},
                     None if sessions is None else Sessions.from_flat(sessions), views, dwell, starts, Rfm(*rfm),
                     None if affinities is None else Affinities(*affinities), devices, last_device, country,
                     timezone, demographics, consent, consent_log, cart, last_purchase, last_add, last_abandon, extra)


def owned(user: UserState, name: str, factory: Callable[[], T]) -> T:
    """The part of a user's state that an operator owns (``extra[name]``), created on first use."""
    part = user.extra.get(name)
    if part is None:
        part = user.extra[name] = factory()
    return part  # type: ignore[no-any-return]


def new_state(rules: ProfileRules) -> UserState:
    s = UserState()
    s.windows = {name: SlidingWindow(length, bucket) for name, (length, bucket) in WINDOWS.items()}
    s.sessions = Sessions(rules.session_gap_ms, rules.recent_sessions)
    s.affinities = Affinities(rules.affinity_half_life_ms)
    return s


def is_late(state: UserState | None, event: Event, rules: ProfileRules) -> bool:
    return state is not None and state.version > 0 and event.event_time_ms < state.newest_event_ms - rules.allowed_lateness_ms


def apply_event(state: UserState | None, event: Event, rules: ProfileRules) -> UserState:
    """Fold one (not late) event into the state; mutates and returns it. ``erasure_request`` forgets everything."""
    if event.event_type == "erasure_request":
        return new_state(rules)
    s = state if state is not None else new_state(rules)
    t, p = event.event_time_ms, event.payload
    s.version += 1
    s.newest_event_ms = max(s.newest_event_ms, t)
    s.totals[event.event_type] = s.totals.get(event.event_type, 0) + 1

    values = measures_of(event.event_type, p)
    if values is not None:
        for w in s.windows.values():
            w.add(t, values, now_ms=s.newest_event_ms)
            w.evict(s.newest_event_ms)

    assert s.sessions is not None and s.affinities is not None
    if s.sessions.observe(t):
        s.session_product_views = s.session_product_dwell_ms = 0
        s.session_starts = [x for x in s.session_starts if x > s.newest_event_ms - WEEK_MS] + [t]
    if event.event_type == "page_view" and p.get("page_type") == "product":
        s.session_product_views += 1
        s.session_product_dwell_ms += int(p.get("dwell_ms", 0))

    weight = dict(rules.affinity_weights).get(event.event_type)
    category = p.get("category")
    if weight and category:
        s.affinities.add(category, weight, t)
    elif weight and event.event_type == "purchase":
        for item in p["items"]:
            s.affinities.add(item["category"], weight, t)
    s.affinities.prune(s.newest_event_ms, 0.01, rules.affinity_keep)

    ctx = event.context
    if "device" in ctx:
        s.device_counts[ctx["device"]] = s.device_counts.get(ctx["device"], 0) + 1
        if t >= s.newest_event_ms:
            s.last_device = ctx["device"]
    s.country = ctx.get("country", s.country)
    s.timezone = ctx.get("timezone", s.timezone)

    if event.event_type == "add_to_cart":
        s.cart[p["product_id"]] = {"product_id": p["product_id"], "category": p["category"],
                                   "price_minor": p["price_minor"], "quantity": p["quantity"], "currency": p["currency"]}
        s.last_add_ms = max(s.last_add_ms or t, t)
    elif event.event_type == "remove_from_cart":
        s.cart.pop(p["product_id"], None)
    elif event.event_type == "purchase":
        s.cart.clear()
        s.rfm.add_purchase(t, p["total_minor"])
        s.last_purchase_ms = max(s.last_purchase_ms or t, t)
    elif event.event_type == "consent":
        if "marketing" in p["withdrawn"] or "marketing" in p["granted"]:
            s.consent_log = sorted([*s.consent_log, (t, "marketing" in p["granted"])])[-10:]
            s.marketing_consent = consent_at(s, s.newest_event_ms)
    elif event.event_type == "profile_update":
        s.demographics.update(p["attributes"])
    return s


def consent_at(s: UserState, t_ms: int) -> bool:
    """Marketing consent in force at ``t_ms`` (granted unless withdrawn and not granted again since)."""
    value = True
    for at, granted in s.consent_log:
        if at > t_ms:
            break
        value = granted
    return value


def local_hour(t_ms: int, timezone: str | None) -> int:
    try:
        tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return datetime.fromtimestamp(t_ms / 1000, tz).hour


def stage(s: UserState, rules: ProfileRules) -> str:
    assert s.sessions is not None
    facts = JourneyFacts(
        purchases_90d=s.rfm.values(s.newest_event_ms).frequency_90d, last_purchase_ms=s.last_purchase_ms,
        last_add_ms=s.last_add_ms, last_abandon_ms=s.last_abandon_ms, cart_items=len(s.cart),
        session_product_views=s.session_product_views)
    return journey_stage(facts, rules.loyal_min_purchases)


def profile_view(user_id: str, s: UserState, rules: ProfileRules) -> dict[str, Any]:
    """The typed profile (schemas/profile.v1.json before string encoding), evaluated at the newest event time."""
    assert s.sessions is not None and s.affinities is not None
    now = s.newest_event_ms
    rfm = s.rfm.values(now)
    r, f, m, score = rfm_score(rfm, rules.rfm)
    return {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "user_id": user_id,
        "profile_version": s.version,
        "last_event_time": now,
        "events_total": sum(s.totals.values()),
        "counts_by_type": dict(sorted(s.totals.items())),
        "windows": {name: dict(zip(MEASURES, w.totals(now), strict=True)) for name, w in s.windows.items()},
        "session_count": s.sessions.count,
        "current_session_length_ms": s.sessions.current_length_ms(),
        "current_session_product_dwell_ms": s.session_product_dwell_ms,
        "sessions_7d": sum(1 for x in s.session_starts if x > now - WEEK_MS),
        "recent_sessions": [[x.start_ms, x.end_ms, x.events] for x in s.sessions.recent],
        "rfm": {"recency_days": rfm.recency_days, "frequency_30d": rfm.frequency_30d,
                "frequency_90d": rfm.frequency_90d, "monetary_30d": rfm.monetary_30d,
                "monetary_90d": rfm.monetary_90d, "r": r, "f": f, "m": m, "score": score},
        "purchases_7d": sum(c for d, (c, _) in s.rfm.days.items() if d > now // 86_400_000 - 7),
        "affinities": {c: round(v, 6) for c, v in s.affinities.top(now, rules.affinity_keep)},
        "last_device": s.last_device,
        "device_mix": dict(sorted(s.device_counts.items())),
        "country": s.country,
        "timezone": s.timezone,
        "local_hour": local_hour(now, s.timezone),
        "demographics": dict(sorted(s.demographics.items())),
        "marketing_consent": s.marketing_consent,
        "cart_items": len(s.cart),
        "cart_value_minor": sum(i["price_minor"] * i["quantity"] for i in s.cart.values()),
        "stage": stage(s, rules),
    }


def redis_fields(view: dict[str, Any], updated_at_ms: int) -> dict[str, str]:
    """Redis hashes hold strings: integers as decimal text, nested values and booleans as JSON.

    Unknown values (None) are left out: an absent field means "unknown".
    """
    out = {"updated_at": str(updated_at_ms)}
    for k, v in view.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, str) else (str(v) if isinstance(v, int) and not isinstance(v, bool)
                                               else orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode())
    return out
