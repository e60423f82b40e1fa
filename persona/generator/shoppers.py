"""Synthetic shoppers: a seeded, streaming simulation of realistic shop traffic.

Each user has a primary device, a timezone, favourite categories, a purchase propensity and a visit
frequency. Visits are sessions separated by inactivity gaps; inside a session the user walks a funnel
(home -> category -> product -> cart -> checkout -> purchase) and may abandon at any step. Users are
merged in event-time order, then records are emitted with bounded disorder: most in order, some up to
``max_out_of_orderness_ms`` late, a few held back until their user has moved on by more than
``late_margin_ms`` ("late"), and a fraction replaced by malformed records. Same settings and seed -> byte-identical output.

>>> from persona.settings import load_generator_settings
>>> s = load_generator_settings({"users": 5, "span_hours": 1})
>>> recs = list(generate(s, max_records=20))
>>> len(recs), recs[0].value == list(generate(s, max_records=1))[0].value
(20, True)
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from persona.generator.items import ITEMS_PER_CATEGORY, ItemWorld
from persona.generator.malformed import EXPECTED_REASON, corrupt
from persona.settings import GeneratorSettings

CATEGORIES = ("shoes", "jackets", "electronics", "books", "toys", "kitchen", "beauty", "garden", "sports", "jewelry")
PRICE_RANGE = {"shoes": (30, 180), "jackets": (40, 300), "electronics": (15, 1500), "books": (5, 40),
               "toys": (8, 90), "kitchen": (10, 400), "beauty": (5, 120), "garden": (10, 600),
               "sports": (12, 350), "jewelry": (25, 2500)}
# (timezone, country, region, locale, currency)
PLACES = (("Europe/Berlin", "DE", "BE", "de-DE", "EUR"), ("Europe/Paris", "FR", "IDF", "fr-FR", "EUR"),
          ("Europe/London", "GB", "ENG", "en-GB", "GBP"), ("America/New_York", "US", "NY", "en-US", "USD"),
          ("America/Los_Angeles", "US", "CA", "en-US", "USD"), ("Asia/Tokyo", "JP", "13", "ja-JP", "JPY"),
          ("Europe/Madrid", "ES", "MD", "es-ES", "EUR"), ("Australia/Sydney", "AU", "NSW", "en-AU", "AUD"))
DEVICES = (("mobile", 0.55, ("iOS", "Android")), ("desktop", 0.35, ("Windows", "macOS", "Linux")),
           ("tablet", 0.10, ("iPadOS", "Android")))
REFERRERS = ("", "https://www.google.com/", "https://www.instagram.com/", "https://newsletter.example/", "")
QUERIES = ("running shoes", "winter jacket", "usb-c cable", "kids puzzle", "espresso machine", "lipstick red",
           "garden hose", "yoga mat", "silver ring", "thriller novel", "noise cancelling headphones")


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One record as it goes to Kafka, with what the generator knows about it (the tests' oracle input).

    ``event`` is the valid event (None for a malformed record); ``malformed`` is the malformation kind and
    ``expected_reason`` the dead-letter reason the job must give it; ``delay`` is in_order, out_of_order or late.
    """

    key: bytes | None
    value: bytes
    event: dict[str, Any] | None
    event_time_ms: int
    delay: str = "in_order"
    malformed: str | None = None
    expected_reason: str | None = None


@dataclass(frozen=True)
class Signal:
    """The noisier stream's knobs (``GeneratorSettings``); the defaults are the default stream."""

    signal_strength: float = 1.0
    dwell_noise: float = 0.3
    drift: float = 0.0
    seasonality: float = 0.0


@dataclass
class _User:
    idx: int
    user_id: str
    device: str
    os: str
    place: tuple[str, str, str, str, str]
    favourites: tuple[str, ...]
    buy_prob: float
    mean_gap_ms: float
    rng: random.Random
    cart: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0
    orders: int = 0
    bot: bool = False


def _pick_device(rng: random.Random) -> tuple[str, str]:
    r, acc = rng.random(), 0.0
    for name, share, systems in DEVICES:
        acc += share
        if r < acc:
            return name, rng.choice(systems)
    return DEVICES[-1][0], DEVICES[-1][2][0]


def _new_user(idx: int, seed: int, bot_fraction: float = 0.0) -> _User:
    rng = random.Random(f"{seed}:user:{idx}")
    # Its own draw, so the share of bots does not change the other users.
    bot = random.Random(f"{seed}:bot:{idx}").random() < bot_fraction
    device, os_name = _pick_device(rng)
    favourites = tuple(rng.sample(CATEGORIES, k=rng.randint(1, 3)))
    return _User(
        idx=idx, user_id=f"u{idx:06d}", device=device, os=os_name, place=rng.choice(PLACES),
        favourites=favourites,
        # Two kinds of shoppers: a third are buyers (the known propensity signal), the rest mostly browse.
        buy_prob=rng.betavariate(8, 3) if rng.random() < 0.33 else rng.betavariate(1, 12),
        # Repeat visitors come back within hours, occasional ones within days.
        mean_gap_ms=rng.choice((2, 6, 12, 24, 48)) * 3_600_000.0, rng=rng, bot=bot,
    )


class _SessionWalk:
    """Yields one user's events, session after session, in event-time order."""

    def __init__(self, user: _User, start_ms: int, end_ms: int, signal: Signal | None = None, seed: int = 0,
                 items: ItemWorld | None = None, category_focus: float = 1.0) -> None:
        self.user, self.end_ms = user, end_ms
        # How much the categories a shopper views follow them (``category_focus``): a favourite category 0.8 of the
        # time on arrival and 0.7 later, times the focus; a product view stays in the session's category with the
        # focus as its probability, else it is in a uniform category (drawn from a generator of its own, so a focus
        # of 1 is the stream as it was). 0: no structure at all, the recommender's control.
        self.focus = category_focus
        self.arrive_loyal, self.browse_loyal = 0.8 * category_focus, 0.7 * category_focus
        self.wander = random.Random(f"{seed}:wander:{user.idx}")
        self.start_ms, self.signal = start_ms, signal or Signal()
        self.noise = random.Random(f"{seed}:noise:{user.idx}")   # the noisier stream's draws only
        self.items = items or ItemWorld(seed)
        self.taste = self.items.taste(user.idx)                  # the planted item structure's draws only
        self.t = start_ms + int(user.rng.random() * min(user.mean_gap_ms, end_ms - start_ms))

    def events(self) -> Iterator[dict[str, Any]]:
        u, rng = self.user, self.user.rng
        while self.t < self.end_ms:
            session_id = f"s-{u.user_id}-{u.seq}"
            referrer = rng.choice(REFERRERS)
            if rng.random() < 0.03:
                yield self._event("consent", session_id, referrer, self._consent_payload())
            if rng.random() < 0.02:
                yield self._event("profile_update", session_id, referrer, self._profile_payload())
            yield from (self._crawl(session_id) if u.bot else self._funnel(session_id, referrer))
            if rng.random() < 0.002:
                yield self._event("erasure_request", session_id, referrer, {})
                if rng.random() < 0.5:   # half of those who ask to be forgotten never come back
                    return
            # Inactivity gap to the next visit: at least 31 min so a new session starts.
            self.t += 1_860_000 + int(rng.expovariate(1.0 / u.mean_gap_ms))

    def _funnel(self, session_id: str, referrer: str) -> Iterator[dict[str, Any]]:
        u, rng = self.user, self.user.rng
        yield self._event("page_view", session_id, referrer, {"page_type": "home", "dwell_ms": self._dwell(5, 40)})
        steps = rng.randint(2, 14)
        category = rng.choice(u.favourites) if rng.random() < self.arrive_loyal else rng.choice(CATEGORIES)
        product: dict[str, Any] | None = None
        for _ in range(steps):
            self._advance()
            r = rng.random()
            if r < 0.12:
                yield self._event("search", session_id, referrer, {"query": rng.choice(QUERIES)})
            elif r < 0.30:
                category = rng.choice(u.favourites) if rng.random() < self.browse_loyal else rng.choice(CATEGORIES)
                yield self._event("page_view", session_id, referrer,
                                  {"page_type": "category", "category": category, "dwell_ms": self._dwell(5, 60)})
            elif r < 0.70 or product is None:
                if self.focus < 1 and self.wander.random() >= self.focus:
                    category = self.wander.choice(CATEGORIES)
                product = self._product(category)
                # Mobile shoppers with high intent linger on product pages.
                # Buyers read longer (the signal the propensity model can find).
                typical = 200 if u.device == "mobile" and u.buy_prob > 0.35 else 15 + 150 * u.buy_prob
                if not self._informative():
                    typical = 15 + 150 * self.noise.uniform(0.0, 0.6)
                noise = self.signal.dwell_noise
                dwell = int(typical * rng.uniform(1 - noise, 1 + noise) * 1000)
                yield self._event("page_view", session_id, referrer,
                                  {"page_type": "product", "product_id": product["product_id"],
                                   "category": category, "dwell_ms": dwell})
            elif r < 0.86:
                item = dict(product, currency=u.place[4], quantity=rng.choice((1, 1, 1, 2, 3)))
                u.cart[item["product_id"]] = item
                self.taste.last_carted = item["product_id"]
                yield self._event("add_to_cart", session_id, referrer, item)
            elif u.cart and r < 0.90:
                pid = rng.choice(sorted(u.cart))
                yield self._event("remove_from_cart", session_id, referrer, u.cart.pop(pid))
            elif u.cart:
                break
        if u.cart and rng.random() < u.buy_prob * 1.6 * self._season():
            self._advance()
            yield self._event("page_view", session_id, referrer, {"page_type": "checkout", "dwell_ms": self._dwell(20, 120)})
            self._advance()
            yield self._event("purchase", session_id, referrer, self._purchase_payload())

    def _product(self, category: str) -> dict[str, Any]:
        """The product viewed next: uniform in the category, or from the planted item structure."""
        rng = self.user.rng
        lo, hi = PRICE_RANGE[category]
        # Drawn whether used or not, so that the structure changes nothing but the product and its price.
        number, price = rng.randint(1, ITEMS_PER_CATEGORY), round(rng.uniform(lo, hi), 2)
        if not self.items.structured:
            return {"product_id": f"p-{category}-{number}", "category": category, "price": price}
        product_id = self.items.pick(category, self.taste)
        return {"product_id": product_id, "category": category, "price": self.items.price(product_id, lo, hi)}

    def _informative(self) -> bool:
        """Whether this product view's dwell follows the user's intent (always, in the default stream)."""
        sig = self.signal
        if sig.signal_strength >= 1 and sig.drift == 0:
            return True
        progress = min(max((self.t - self.start_ms) / max(self.end_ms - self.start_ms, 1), 0.0), 1.0)
        return self.noise.random() < sig.signal_strength * (1 - sig.drift * progress)

    def _season(self) -> float:
        """The daily swing of buying (1 in the default stream): people buy more in the evening."""
        if self.signal.seasonality == 0:
            return 1.0
        hour = (self.t // 3_600_000) % 24
        return 1 + self.signal.seasonality * math.cos(2 * math.pi * (hour - 20) / 24)

    def _crawl(self, session_id: str) -> Iterator[dict[str, Any]]:
        """A bot's session: 30-120 pages about a second apart, a few items put in the cart, never a purchase."""
        u, rng = self.user, self.user.rng
        for _ in range(rng.randint(30, 120)):
            self.t += int(rng.uniform(0.8, 1.8) * 1000)
            category = rng.choice(CATEGORIES)
            lo, hi = PRICE_RANGE[category]
            product = {"product_id": f"p-{category}-{rng.randint(1, 400)}", "category": category,
                       "price": round(rng.uniform(lo, hi), 2)}
            if rng.random() < 0.05:
                item = dict(product, currency=u.place[4], quantity=1)
                u.cart[item["product_id"]] = item
                yield self._event("add_to_cart", session_id, "", item)
            else:
                yield self._event("page_view", session_id, "", {"page_type": "product", "product_id": product["product_id"],
                                                                 "category": category, "dwell_ms": self._dwell(1, 2)})

    def _purchase_payload(self) -> dict[str, Any]:
        u = self.user
        items = [{k: it[k] for k in ("product_id", "category", "price", "quantity")} for it in u.cart.values()]
        total = round(sum(it["price"] * it["quantity"] for it in items), 2)
        u.orders += 1
        currency = u.place[4]
        u.cart.clear()
        return {"order_id": f"o-{u.user_id}-{u.orders}", "items": items, "total": total, "currency": currency}

    def _consent_payload(self) -> dict[str, Any]:
        rng = self.user.rng
        if rng.random() < 0.6:
            return {"granted": ["marketing", "analytics"], "withdrawn": []}
        return {"granted": [], "withdrawn": ["marketing"]}

    def _profile_payload(self) -> dict[str, Any]:
        rng = self.user.rng
        return {"attributes": {"age_band": rng.choice(("18-24", "25-34", "35-44", "45-54", "55+")),
                               "gender": rng.choice(("f", "m", "x")), "newsletter": rng.random() < 0.5}}

    def _dwell(self, lo_s: int, hi_s: int) -> int:
        return int(self.user.rng.uniform(lo_s, hi_s) * 1000)

    def _advance(self) -> None:
        self.t += int(self.user.rng.lognormvariate(3.0, 0.8) * 1000)  # median ~20 s between clicks

    def _event(self, event_type: str, session_id: str, referrer: str, payload: dict[str, Any]) -> dict[str, Any]:
        u = self.user
        u.seq += 1
        tz, country, region, locale, _ = u.place
        context: dict[str, Any] = {"device": u.device, "os": u.os, "geo": {"country": country, "region": region},
                                   "locale": locale, "timezone": tz}
        if referrer:
            context["referrer"] = referrer
        local = datetime.fromtimestamp(self.t / 1000, tz=ZoneInfo(tz))
        return {
            "event_id": f"e-{u.user_id}-{u.seq}", "event_type": event_type, "user_id": u.user_id,
            "session_id": session_id, "event_time": local.isoformat(timespec="milliseconds"),
            "schema_version": 1, "context": context, "payload": payload, "_t": self.t,
        }


def parse_start(text: str, now_ms: int | None = None) -> int:
    """``start_time`` setting -> epoch ms; ``now`` needs ``now_ms`` from the caller (no clock in here)."""
    if text == "now":
        if now_ms is None:
            raise ValueError("start_time 'now' needs the caller's clock")
        return now_ms
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"start_time {text!r} needs a UTC offset")
    return int(dt.timestamp() * 1000)


def replay_age_override(settings: GeneratorSettings, now_ms: int, default_ms: int = 366 * 86_400_000) -> str:
    """The job override that admits a generated stream as recorded history (``limits.max_event_age_ms``).

    The generator's default start is a fixed date, so its events age with the calendar; a replay of them
    must not become ``event_time_out_of_range`` a year later. Returns the default when it already suffices.
    """
    age = now_ms - parse_start(settings.start_time, now_ms) + 86_400_000   # a day of slack: the replay takes time
    return f"limits.max_event_age_ms={max(age, default_ms)}"


def _time_ordered(settings: GeneratorSettings, start_ms: int) -> Iterator[dict[str, Any]]:
    end_ms = start_ms + int(settings.span_hours * 3_600_000)
    signal = Signal(settings.signal_strength, settings.dwell_noise, settings.drift, settings.seasonality)
    items = ItemWorld(settings.seed, settings.item_zipf, settings.item_styles, settings.item_pairs, settings.item_sequences)
    walks = (_SessionWalk(_new_user(i, settings.seed, settings.bot_fraction), start_ms, end_ms, signal,
                          settings.seed, items, settings.category_focus).events()
             for i in range(settings.users))
    heap: list[tuple[int, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
    for i, it in enumerate(walks):
        first = next(it, None)
        if first is not None:
            heap.append((first["_t"], i, first, it))
    heapq.heapify(heap)
    while heap:
        t, i, ev, it = heap[0]
        if t >= end_ms:
            return
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt["_t"], i, nxt, it))
        yield ev


def generate(settings: GeneratorSettings, max_records: int | None = None, now_ms: int | None = None) -> Iterator[GeneratedRecord]:
    """The record stream, in emission order. Stops after ``max_records`` or at the end of the span.

    Late records are held back until the same user has produced an event more than ``late_margin_ms``
    newer, and are emitted right after it: late for that user by construction, whatever the partitions
    and the watermark do. A held record whose user never comes back is not emitted.
    """
    rng = random.Random(f"{settings.seed}:emission")
    start_ms = parse_start(settings.start_time, now_ms)
    bound = settings.max_out_of_orderness_ms
    pending: list[tuple[int, int, GeneratedRecord]] = []
    held: dict[str, list[GeneratedRecord]] = {}
    emitted, seq = 0, 0
    for ev in _time_ordered(settings, start_ms):
        t = ev.pop("_t")
        user = ev["user_id"]
        r = rng.random()
        if r < settings.late_fraction:
            kind = "late"
        elif r < settings.late_fraction + settings.out_of_order_fraction and bound > 0:
            kind = "out_of_order"
        else:
            kind = "in_order"
        rec = _record(ev, t, kind, rng, settings)
        if kind == "late":
            held.setdefault(user, []).append(rec)
            continue
        due_at = t + (rng.randint(1, bound) if kind == "out_of_order" else 0)
        seq += 1
        heapq.heappush(pending, (due_at, seq, rec))
        # Only a valid event moves the job's view of the user forward (an erasure resets it).
        releasing = rec.event is not None and rec.event["event_type"] != "erasure_request"
        for h in [h for h in held.get(user, ()) if releasing and t - h.event_time_ms > settings.late_margin_ms]:
            held[user].remove(h)
            seq += 1
            heapq.heappush(pending, (due_at, seq, h))   # right after the event that makes it late
        # Every record still to come is due no earlier than its own event time, and the input is time-ordered.
        while pending and pending[0][0] <= t:
            yield heapq.heappop(pending)[2]
            emitted += 1
            if max_records is not None and emitted >= max_records:
                return
    while pending:
        yield heapq.heappop(pending)[2]
        emitted += 1
        if max_records is not None and emitted >= max_records:
            return


def _record(ev: dict[str, Any], t: int, delay: str, rng: random.Random, settings: GeneratorSettings) -> GeneratedRecord:
    key = ev["user_id"].encode()
    if rng.random() < settings.malformed_fraction:
        kind = settings.malformed_kinds[rng.randrange(len(settings.malformed_kinds))]
        value, key_ok = corrupt(ev, kind, rng)
        return GeneratedRecord(key if key_ok else None, value, None, t, delay, kind, EXPECTED_REASON[kind])
    return GeneratedRecord(key, json.dumps(ev, separators=(",", ":")).encode(), ev, t, delay)


def bot_users(settings: GeneratorSettings) -> set[str]:
    """The user ids the generator makes crawlers (what a bot detector should find)."""
    return {f"u{i:06d}" for i in range(settings.users)
            if random.Random(f"{settings.seed}:bot:{i}").random() < settings.bot_fraction}
