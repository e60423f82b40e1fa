"""The per-user profile: a pure fold of events into ``UserState``, and a lazy view of it.

Every derived number is evaluated at the user's newest event time, never at a wall clock, so the same
events give the same profile whatever the arrival order (within the lateness bound) and whenever the
job runs.

Lateness is judged per user: an event older than the user's newest event by more than
``allowed_lateness_ms`` is refused (``late_event``). Per user, records keep their order in Kafka and
Flink, so this decision is deterministic, unlike one against a watermark whose cadence depends on
wall-clock time.

``ProfileView`` computes each profile field (schemas/profile.v1.json) only when something reads it:
a pattern condition, a model's features, or the Redis writer at its flush. Most events need few of
them, and a user's profile is encoded once per write batch however many events it had.

>>> from operators.events import Event
>>> rules = ProfileRules()
>>> s = apply_event(None, Event("e1", "add_to_cart", "u1", 1_000, None, {"device": "mobile"},
...     {"product_id": "p1", "category": "toys", "price_minor": 1250, "quantity": 2, "currency": "EUR"}), rules)
>>> view = ProfileView("u1", s, rules)
>>> view["cart_value_minor"], view["windows"]["10m"]["carts"], view["stage"]
(2500, 1, 'considering')
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from operators.consent import (
    ANALYTICS,
    MARKETING,
    PERSONALIZATION,
    ConsentPolicy,
    consent_flags,
    consent_in_force,
    record_choices,
)
from operators.events import Event
from operators.reasons import Dropped
from state.journey import STAGES, JourneyFacts, journey_stage
from state.keys import PROFILE_SCHEMA_VERSION
from state.rfm import RfmThresholds, rfm_score
from state.user_state import CartItem, UserState
from state.windows import MEASURES, ZERO, WindowSpec, add_into, measures_of

MIN = 60_000
HOUR_MS = 60 * MIN
QUARTER_MS = 15 * MIN
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
WINDOWS = {"10m": WindowSpec(10 * MIN, MIN), "1h": WindowSpec(60 * MIN, 5 * MIN), "24h": WindowSpec(24 * 60 * MIN, 60 * MIN)}
AFFINITY_WEIGHTS = {"page_view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
AFFINITY_MIN_SCORE = 0.01


@dataclass(frozen=True, slots=True)
class ProfileRules:
    """Plain values from settings (Flink pickles functions: no settings objects inside them)."""

    session_gap_ms: int = 30 * MIN
    recent_sessions: int = 5
    affinity_half_life_ms: int = WEEK_MS
    affinity_keep: int = 10
    loyal_min_purchases: int = 3
    allowed_lateness_ms: int = 60_000
    rfm: RfmThresholds = RfmThresholds()
    # Limits (docs/contract.md "Limits"): past them the oldest cart line, or an attribute, is dropped and counted.
    max_cart_items: int = 50
    demographic_attributes: frozenset[str] = frozenset({"age_band", "gender", "newsletter"})
    max_attribute_chars: int = 64
    max_pattern_marks: int = 128          # anchor and cancel times kept per absence pattern and user
    # De-duplication: the last N event ids (and purchase order ids) per user, as 64-bit hashes.
    dedup_event_ids: int = 16
    dedup_order_ids: int = 8
    # Privacy (docs/privacy.md): consent defaults per country; attributes that are personal data are never
    # stored, but for join keys, kept as a salted hash (``{name}_hash``).
    consent: ConsentPolicy = ConsentPolicy()
    pii_fields: frozenset[str] = frozenset({"email", "phone", "name", "first_name", "last_name"})
    pii_join_keys: frozenset[str] = frozenset()
    pii_salt: str = ""


def profile_fingerprint(rules: ProfileRules) -> bytes:
    """8 bytes that change when a setting that decides a profile changes: the changelog carries the job's, and the
    loader refuses records made under other settings (``persona/loader.py``). The PII salt is left out: it shapes
    the state, not the profile read from it, and a hash of a secret should not travel.

    >>> profile_fingerprint(ProfileRules()) == profile_fingerprint(ProfileRules(pii_salt="other"))
    True
    >>> profile_fingerprint(ProfileRules()) == profile_fingerprint(ProfileRules(loyal_min_purchases=4))
    False
    """
    def plain(x: Any) -> Any:
        if isinstance(x, (frozenset, set)):
            return sorted(plain(v) for v in x)
        if hasattr(x, "__dataclass_fields__"):
            return {f: plain(getattr(x, f)) for f in x.__dataclass_fields__ if f != "pii_salt"}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return hashlib.sha256(orjson.dumps(plain(rules), option=orjson.OPT_SORT_KEYS)).digest()[:8]


def is_late(state: UserState | None, event: Event, rules: ProfileRules) -> bool:
    return state is not None and state.version > 0 and event.event_time_ms < state.newest_event_ms - rules.allowed_lateness_ms


def apply_event(state: UserState | None, event: Event, rules: ProfileRules, drops: list[Dropped] | None = None) -> UserState:
    """Fold one (not late) event into the state; mutates and returns it. An ``erasure_request`` never gets here:
    ``Personalizer`` answers it (it releases what was due, then starts a new state).

    What a limit kept out is appended to ``drops`` (``cart_item``, ``demographic_attribute``) for counting.
    """
    kind = event.event_type
    s = state if state is not None else UserState()
    if s.consent_log:   # a state written before consent per purpose: its marketing choices join the new log
        s.consents = consent_log_of(s)
        s.consent_log = []
    t, p = event.event_time_ms, event.payload
    s.version += 1
    if t > s.newest_event_ms:
        s.newest_event_ms = t
    now = s.newest_event_ms
    ctx = event.context
    s.country = ctx.get("country", s.country)   # first: the country decides the consent defaults
    if kind == "consent":
        s.consents = record_choices(s.consents, t, p["granted"], p["withdrawn"])
    if not has_consent(s, ANALYTICS, now, rules):
        return consent_only(s)
    s.totals[kind] = s.totals.get(kind, 0) + 1
    _fold_windows(s, kind, p, t, now)
    _fold_session(s, kind, p, t, now, rules)
    if kind in AFFINITY_WEIGHTS:
        _fold_affinities(s, kind, p, t, now, rules)
    device = ctx.get("device")
    if device is not None:
        s.device_counts[device] = s.device_counts.get(device, 0) + 1
        if t >= now:
            s.last_device = device
    s.timezone = ctx.get("timezone", s.timezone)
    if kind in _COMMERCE:
        _fold_commerce(s, kind, p, t, rules, drops)
    elif kind == "profile_update":
        _fold_attributes(s, p["attributes"], rules, drops)
    return s


def _fold_windows(s: UserState, kind: str, p: dict[str, Any], t: int, now: int) -> None:
    """The event's measures into every sliding window; every event moves "now", so buckets that left a window
    leave its running sums too."""
    values = measures_of(kind, p)
    windows, sums = s.windows, s.window_sums
    for name, spec in WINDOWS.items():
        buckets = windows.get(name)
        if buckets is None:
            if values is None:
                continue
            buckets = windows[name] = {}
        total = sums.get(name)
        if total is None:
            total = sums[name] = list(spec.totals(buckets, now))
        if values is not None and spec.add(buckets, t, values, now_ms=now):
            add_into(total, values)
        for gone in spec.evict(buckets, now):
            add_into(total, gone, -1)


def _fold_session(s: UserState, kind: str, p: dict[str, Any], t: int, now: int, rules: ProfileRules) -> None:
    if s.sessions.observe(t, rules.session_gap_ms, rules.recent_sessions):
        s.session_product_views = s.session_product_dwell_ms = 0
        s.session_starts = [x for x in s.session_starts if x > now - WEEK_MS] + [t]
    if kind == "page_view" and p.get("page_type") == "product":
        s.session_product_views += 1
        s.session_product_dwell_ms += int(p.get("dwell_ms", 0))


def _fold_affinities(s: UserState, kind: str, p: dict[str, Any], t: int, now: int, rules: ProfileRules) -> None:
    weight = AFFINITY_WEIGHTS[kind]
    if not weight:
        return
    half_life = rules.affinity_half_life_ms
    category = p.get("category")
    if category:
        s.affinities.add(category, weight, t, half_life)
    elif kind == "purchase":
        for item in p["items"]:
            s.affinities.add(item["category"], weight, t, half_life)
    # Memory stays bounded by pruning when a new category overflows the list; an entry that decays
    # below the floor meanwhile is hidden by the view and is the first to go.
    if len(s.affinities.entries) > rules.affinity_keep:
        s.affinities.prune(now, AFFINITY_MIN_SCORE, rules.affinity_keep, half_life)


_COMMERCE = frozenset({"add_to_cart", "remove_from_cart", "purchase"})


def _fold_commerce(s: UserState, kind: str, p: dict[str, Any], t: int, rules: ProfileRules,
                   drops: list[Dropped] | None) -> None:
    if kind == "add_to_cart":
        cart = s.cart
        product = p["product_id"]
        if product not in cart and len(cart) >= rules.max_cart_items:
            del cart[next(iter(cart))]   # the line added longest ago (dicts keep insertion order)
            if drops is not None:
                drops.append(Dropped.CART_ITEM)
        cart[product] = CartItem(p["category"], p["price_minor"], p["quantity"], p["currency"])
        s.last_add_ms = max(s.last_add_ms or t, t)
    elif kind == "remove_from_cart":
        s.cart.pop(p["product_id"], None)
    else:   # purchase
        s.cart.clear()
        s.rfm.add_purchase(t, p["total_minor"])
        s.last_purchase_ms = max(s.last_purchase_ms or t, t)


def _fold_attributes(s: UserState, attributes: dict[str, Any], rules: ProfileRules,
                     drops: list[Dropped] | None) -> None:
    allowed, longest = rules.demographic_attributes, rules.max_attribute_chars
    for key, value in attributes.items():
        if key in rules.pii_fields:
            # Personal data: never stored as given; a join key is kept as a salted hash.
            if key in rules.pii_join_keys and isinstance(value, str) and value:
                s.demographics[f"{key}_hash"] = pii_hash(value, rules.pii_salt)
            elif drops is not None:
                drops.append(Dropped.PII_ATTRIBUTE)
        elif key in allowed and not (isinstance(value, str) and len(value) > longest):
            s.demographics[key] = value
        elif drops is not None:
            drops.append(Dropped.DEMOGRAPHIC_ATTRIBUTE)


def pii_hash(value: str, salt: str) -> str:
    """A salted SHA-256 of a normalised PII value (trimmed, lower case), as 32 hex characters: a join key
    that does not reveal the value to someone without the salt.

    >>> pii_hash(" Ann@Example.com", "s") == pii_hash("ann@example.com", "s") != pii_hash("ann@example.com", "t")
    True
    """
    return hashlib.sha256(f"{salt}\x1f{value.strip().lower()}".encode()).hexdigest()[:32]


def consent_log_of(s: UserState) -> list[tuple[int, str, bool]]:
    """The user's consent choices in time order (with those of a state written before consent per purpose)."""
    if not s.consent_log:
        return s.consents
    return sorted([*s.consents, *((t, MARKETING, granted) for t, granted in s.consent_log)], key=lambda c: c[0])


def has_consent(s: UserState, purpose: str, t_ms: int, rules: ProfileRules) -> bool:
    """Consent for ``purpose`` in force at ``t_ms`` (operators/consent.py): the user's choice, else the default
    of their country."""
    return consent_in_force(consent_log_of(s), purpose, t_ms, s.country, rules.consent)


def consent_at(s: UserState, t_ms: int, rules: ProfileRules) -> bool:
    """Marketing consent in force at ``t_ms``."""
    return has_consent(s, MARKETING, t_ms, rules)


def consent_only(s: UserState) -> UserState:
    """What is kept without analytics consent: the consent record and what orders and de-duplicates it."""
    return UserState(version=s.version, newest_event_ms=s.newest_event_ms, country=s.country,
                     consents=consent_log_of(s), seen_events=s.seen_events, seen_orders=s.seen_orders,
                     epoch_ms=s.epoch_ms)


def profile_allowed(s: UserState, rules: ProfileRules) -> bool:
    """Whether the profile may go beyond the consent flags (analytics and personalization consent, now)."""
    now = s.newest_event_ms
    return has_consent(s, ANALYTICS, now, rules) and has_consent(s, PERSONALIZATION, now, rules)


_ZONES: dict[str | None, ZoneInfo] = {}
_HOUR_CACHE: dict[tuple[str | None, int], int] = {}


def _zone(timezone: str | None) -> ZoneInfo:
    tz = _ZONES.get(timezone)
    if tz is None:
        try:
            tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
        except (ZoneInfoNotFoundError, ValueError):
            tz = ZoneInfo("UTC")
        if len(_ZONES) < 10_000:   # bounded: time zone names come from input
            _ZONES[timezone] = tz
    return tz


def local_hour(t_ms: int, timezone: str | None) -> int:
    """The hour of day at ``t_ms`` in ``timezone`` (UTC when unknown). Every UTC offset is a multiple of
    15 minutes, so the answer is the same within a quarter hour of UTC and is cached per zone and quarter.

    >>> local_hour(1_793_653_200_000, "Europe/Berlin"), local_hour(1_793_653_200_000, "nowhere")
    (22, 21)
    >>> [local_hour(1_793_653_200_000 + m * 60_000, "Asia/Kolkata") for m in (0, 29, 30)]   # UTC 21:00 is 02:30
    [2, 2, 3]
    """
    key = (timezone, t_ms // QUARTER_MS)
    hour = _HOUR_CACHE.get(key)
    if hour is None:
        hour = datetime.fromtimestamp(t_ms / 1000, _zone(timezone)).hour
        if len(_HOUR_CACHE) > 100_000:
            _HOUR_CACHE.clear()
        _HOUR_CACHE[key] = hour
    return hour


def cart_value_minor(s: UserState) -> int:
    return sum(i.price_minor * i.quantity for i in s.cart.values())


def stage(s: UserState, rules: ProfileRules) -> str:
    facts = JourneyFacts(
        purchases_90d=s.rfm.values(s.newest_event_ms).frequency_90d, last_purchase_ms=s.last_purchase_ms,
        last_add_ms=s.last_add_ms, last_abandon_ms=s.last_abandon_ms, cart_items=len(s.cart),
        session_product_views=s.session_product_views)
    return journey_stage(facts, rules.loyal_min_purchases)


# ----------------------------------------------------------------------------- the view
def _windows(v: ProfileView) -> dict[str, dict[str, int]]:
    sums = v.state.window_sums
    return {name: dict(zip(MEASURES, sums.get(name, ZERO), strict=True)) for name in WINDOWS}


def _rfm(v: ProfileView) -> dict[str, Any]:
    values = v.state.rfm.values(v.state.newest_event_ms)
    r, f, m, score = rfm_score(values, v.rules.rfm)
    return {"recency_days": values.recency_days, "frequency_30d": values.frequency_30d,
            "frequency_90d": values.frequency_90d, "monetary_30d": values.monetary_30d,
            "monetary_90d": values.monetary_90d, "r": r, "f": f, "m": m, "score": score}


def _purchases_7d(v: ProfileView) -> int:
    today = v.state.newest_event_ms // DAY_MS
    return sum(c for d, (c, _) in v.state.rfm.days.items() if d > today - 7)


def _affinities(v: ProfileView) -> dict[str, float]:
    # Entries are pruned when a category gains weight; one that decayed below the floor since is not shown.
    s, rules = v.state, v.rules
    top = s.affinities.top(s.newest_event_ms, rules.affinity_keep, rules.affinity_half_life_ms)
    return {c: round(x, 6) for c, x in top if x >= AFFINITY_MIN_SCORE}


_FIELDS: dict[str, Callable[[ProfileView], Any]] = {
    "schema_version": lambda v: PROFILE_SCHEMA_VERSION,
    "user_id": lambda v: v.user_id,
    "profile_version": lambda v: v.state.version,
    "last_event_time": lambda v: v.state.newest_event_ms,
    "events_total": lambda v: sum(v.state.totals.values()),
    "counts_by_type": lambda v: dict(sorted(v.state.totals.items())),
    "windows": _windows,
    "session_count": lambda v: v.state.sessions.count,
    "current_session_length_ms": lambda v: v.state.sessions.current_length_ms(),
    "current_session_product_dwell_ms": lambda v: v.state.session_product_dwell_ms,
    "sessions_7d": lambda v: sum(1 for x in v.state.session_starts if x > v.state.newest_event_ms - WEEK_MS),
    "recent_sessions": lambda v: [list(x) for x in v.state.sessions.recent],
    "rfm": _rfm,
    "purchases_7d": _purchases_7d,
    "affinities": _affinities,
    "last_device": lambda v: v.state.last_device,
    "device_mix": lambda v: dict(sorted(v.state.device_counts.items())),
    "country": lambda v: v.state.country,
    "timezone": lambda v: v.state.timezone,
    "local_hour": lambda v: local_hour(v.state.newest_event_ms, v.state.timezone),
    "demographics": lambda v: dict(sorted(v.state.demographics.items())),
    "marketing_consent": lambda v: consent_at(v.state, v.state.newest_event_ms, v.rules),
    "consent": lambda v: consent_flags(consent_log_of(v.state), v.state.newest_event_ms, v.state.country, v.rules.consent),
    "consent_history": lambda v: [list(c) for c in consent_log_of(v.state)],
    "cart_items": lambda v: len(v.state.cart),
    "cart_products": lambda v: sorted(v.state.cart) or None,
    # The recommender's anchors (docs/recommendations.md "Serving"): [item, category, weight, event time], oldest first.
    "recent_items": lambda v: [[r.item, r.category, r.weight, r.t] for r in v.state.recent_items.items]
    if v.state.recent_items is not None and v.state.recent_items.items else None,
    "cart_value_minor": lambda v: cart_value_minor(v.state),
    "stage": lambda v: stage(v.state, v.rules),
}
# What the models said: read live (the model step updates them after the view was created).
_MODEL_FIELDS: dict[str, Callable[[UserState], Any]] = {
    "propensity": lambda s: None if s.models.propensity is None else round(s.models.propensity, 4),
    "propensity_version": lambda s: s.models.propensity_version or None,
    "segment": lambda s: None if s.models.segment is None else f"seg{s.models.segment}",
    "bot_score": lambda s: None if s.models.bot_score is None else round(s.models.bot_score, 4),
    "bot": lambda s: s.models.bot,
}
# What a profile holds without analytics or personalization consent (docs/privacy.md).
CONSENT_PROFILE_FIELDS = ("schema_version", "user_id", "profile_version", "marketing_consent", "consent", "consent_history")
# The pattern vocabulary's profile.* fields are these names (nested ones dotted: profile.rfm.score).
PROFILE_FIELD_NAMES = (*_FIELDS, *_MODEL_FIELDS)


class ProfileView(Mapping[str, Any]):
    """The profile (schemas/profile.v1.json before string encoding) at the user's newest event, computed
    field by field on first read and then kept for the rest of the event."""

    __slots__ = ("user_id", "state", "rules", "_cache")

    def __init__(self, user_id: str, state: UserState, rules: ProfileRules) -> None:
        self.user_id: str = user_id
        self.state: UserState = state
        self.rules: ProfileRules = rules
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        cached = self._cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cached
        model = _MODEL_FIELDS.get(key)
        if model is not None:
            return model(self.state)
        value = self._cache[key] = _FIELDS[key](self)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(PROFILE_FIELD_NAMES)

    def __len__(self) -> int:
        return len(PROFILE_FIELD_NAMES)

    def to_dict(self) -> dict[str, Any]:
        return {k: self[k] for k in PROFILE_FIELD_NAMES}


_MISSING = object()


def profile_view(user_id: str, state: UserState, rules: ProfileRules) -> dict[str, Any]:
    """Every field of the profile, computed now (tests and tools; the job reads a ``ProfileView``)."""
    return ProfileView(user_id, state, rules).to_dict()


def segment_names(segments: int) -> tuple[str, ...]:
    return tuple(f"seg{i}" for i in range(segments))


def profile_sets(segments: int) -> tuple[str, ...]:
    """Every Redis set a user can be in: the journey stages and the segments."""
    return STAGES + segment_names(segments)


def profile_record(user_id: str, state: UserState, rules: ProfileRules, updated_at_ms: int
                   ) -> tuple[dict[str, str], tuple[str, ...]]:
    """The Redis hash fields of a profile and the sets the user belongs to (journey stage, segment)."""
    view: Mapping[str, object] = ProfileView(user_id, state, rules)
    if not profile_allowed(state, rules):   # the consent flags and what orders the writes, nothing else
        return redis_fields({k: view[k] for k in CONSENT_PROFILE_FIELDS}, updated_at_ms), ()
    segment = view["segment"]
    memberships = (str(view["stage"]), str(segment)) if segment else (str(view["stage"]),)
    return redis_fields(view, updated_at_ms), memberships


def redis_fields(view: Mapping[str, Any], updated_at_ms: int) -> dict[str, str]:
    """Redis hashes hold strings: integers as decimal text, nested values and booleans as JSON.

    Unknown values (None) are left out: an absent field means "unknown".
    """
    out = {"updated_at": str(updated_at_ms)}
    for k in view:
        v = view[k]
        if v is None:
            continue
        out[k] = v if isinstance(v, str) else (str(v) if isinstance(v, int) and not isinstance(v, bool)
                                               else orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode())
    return out
