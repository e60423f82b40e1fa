"""Feature vectors for the online models, read from the profile view (no extra state reads).

All three are plain dicts of ``name -> float | str`` as River expects; numeric features go through the
models' scalers, string features through one-hot encoding.

>>> from operators.profile_fold import ProfileRules, apply_event, profile_view
>>> from operators.events import Event
>>> e = Event("e1", "add_to_cart", "u1", 1_000_000, "s1", {"device": "mobile", "timezone": "UTC"},
...           {"product_id": "p1", "category": "toys", "price_minor": 1000, "quantity": 2, "currency": "EUR"})
>>> rules = ProfileRules()
>>> s = apply_event(None, e, rules)
>>> f = dict(zip(PROPENSITY_FEATURES, propensity_features(profile_view("u1", s, rules), "add_to_cart")))
>>> f["carts_1h"], f["cart_items"], f["device"], f["decision"]
(1, 1, 'mobile', 'add_to_cart')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

PROPENSITY_NUMERIC = ("views_10m", "dwell_10m_s", "carts_10m", "views_1h", "carts_1h", "carts_24h", "purchases_24h",
                      "session_length_min", "session_dwell_s", "sessions_7d", "frequency_90d", "monetary_90d_log",
                      "recency_days", "cart_items", "cart_value_log", "dwell_per_view_10m_s", "dwell_per_view_1h_s",
                      # the session's sequence, and the user's recency-weighted reading time per product page
                      # over their last ~10 pages (docs/models.md: what paid)
                      "session_product_views", "dwell_per_product_view_s", "minutes_since_add", "dwell_recent_s")
PROPENSITY_CATEGORICAL = ("device", "hour_block", "decision")
PROPENSITY_FEATURES = PROPENSITY_NUMERIC + PROPENSITY_CATEGORICAL
SEGMENT_FEATURES = ("recency_days", "frequency_90d", "monetary_90d_log", "sessions_7d", "views_24h", "carts_24h",
                    "session_events")
# Per-session rate features of the bot model, with the range each is clipped to (HalfSpaceTrees needs limits).
BOT_LIMITS = {"events_per_min": (0.0, 60.0), "session_events_log": (0.0, 7.0), "dwell_per_view_s": (0.0, 300.0),
              "views_share": (0.0, 1.0)}
NO_PURCHASE_DAYS = 365.0   # recency of a user who never bought
NO_ADD_MIN = 1440        # minutes since the last add to cart, capped at a day (and for a user who never added)


class SessionSequence(NamedTuple):
    """What the session's sequence says at a decision point, from the user's state (not in the profile)."""

    product_views: int = 0          # product pages viewed in this session
    product_dwell_ms: int = 0       # time read on them
    last_add_ms: int | None = None  # the user's last add to cart (event time)
    dwell_recent_s: float = 0.0     # reading time per product page, recency-weighted over the user's history


NO_SEQUENCE = SessionSequence()


def _recency(view: Mapping[str, Any]) -> float:
    days = view["rfm"]["recency_days"]
    return NO_PURCHASE_DAYS if days is None else float(min(days, NO_PURCHASE_DAYS))


def _recency_days(view: Mapping[str, Any]) -> int:
    days = view["rfm"]["recency_days"]
    return int(NO_PURCHASE_DAYS) if days is None else min(days, int(NO_PURCHASE_DAYS))


def propensity_features(view: Mapping[str, Any], decision: str, sequence: SessionSequence = NO_SEQUENCE
                        ) -> tuple[int | float | str, ...]:
    """The snapshot taken at a decision point (``decision`` is the event type: add_to_cart or page_view).

    A packed tuple in ``PROPENSITY_FEATURES`` order: it is stored in the user's state until labelled, and the
    learner and the scorer read it by position.
    """
    w10, w1h, w24 = view["windows"]["10m"], view["windows"]["1h"], view["windows"]["24h"]
    rfm = view["rfm"]
    # Whole seconds and minutes: the tuple waits in the user's state (below), and a second is finer than the signal.
    per_view = round(sequence.product_dwell_ms / 1000.0 / sequence.product_views) if sequence.product_views else 0
    since_add = (NO_ADD_MIN if sequence.last_add_ms is None
                 else min(round((view["last_event_time"] - sequence.last_add_ms) / 60_000.0), NO_ADD_MIN))
    # Counts stay integers: the tuple waits in the user's state until labelled, and MessagePack stores a
    # small integer in one byte instead of nine (the arithmetic of the model is the same).
    return (
        w10["views"], w10["product_dwell_ms"] / 1000.0, w10["carts"], w1h["views"],
        w1h["carts"], w24["carts"], w24["purchases"],
        view["current_session_length_ms"] / 60_000.0, view["current_session_product_dwell_ms"] / 1000.0,
        view["sessions_7d"], rfm["frequency_90d"], math.log1p(rfm["monetary_90d"] / 100.0),
        _recency_days(view), view["cart_items"], math.log1p(view["cart_value_minor"] / 100.0),
        # How long a page holds the user: the clearest sign of intent in a session.
        w10["product_dwell_ms"] / 1000.0 / max(w10["views"], 1), w1h["product_dwell_ms"] / 1000.0 / max(w1h["views"], 1),
        sequence.product_views, per_view, since_add, round(sequence.dwell_recent_s),
        view["last_device"] or "unknown", f"h{view['local_hour'] // 3}", decision,
    )


def segment_features(view: Mapping[str, Any], session_events: int) -> dict[str, float]:
    """RFM and behaviour of a user at the end of a session (scaled by the segment model's scaler)."""
    rfm, w24 = view["rfm"], view["windows"]["24h"]
    return {"recency_days": _recency(view), "frequency_90d": float(rfm["frequency_90d"]),
            "monetary_90d_log": math.log1p(rfm["monetary_90d"] / 100.0), "sessions_7d": float(view["sessions_7d"]),
            "views_24h": float(w24["views"]), "carts_24h": float(w24["carts"]),
            "session_events": math.log1p(session_events)}


def session_rate_features(events: int, length_ms: int, product_views: int, product_dwell_ms: int,
                          page_views: int) -> dict[str, float]:
    """How a session moves: bots click fast, many times, without reading.

    >>> f = session_rate_features(events=60, length_ms=60_000, product_views=50, product_dwell_ms=100_000, page_views=60)
    >>> f["events_per_min"], f["dwell_per_view_s"], f["views_share"]
    (60.0, 2.0, 1.0)
    """
    minutes = max(length_ms / 60_000.0, 0.5)   # a few clicks in one second are not 120/min
    raw = {"events_per_min": events / minutes, "session_events_log": math.log1p(events),
           "dwell_per_view_s": product_dwell_ms / 1000.0 / product_views if product_views else 60.0,
           "views_share": page_views / events if events else 0.0}
    return {k: min(max(v, BOT_LIMITS[k][0]), BOT_LIMITS[k][1]) for k, v in raw.items()}
