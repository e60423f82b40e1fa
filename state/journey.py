"""The user's journey stage, a pure function of profile facts (so it is the same whatever the order).

Rules, first that holds wins:
1. ``loyal``: at least ``loyal_min_purchases`` purchases in the last 90 days;
2. ``purchased``: the newest purchase is at or after the newest add to cart;
3. ``cart_abandoned``: the newest cart abandonment is after the newest purchase;
4. ``considering``: something is in the cart, or a product page was viewed in the current session;
5. ``browsing``: otherwise.

>>> journey_stage(JourneyFacts(purchases_90d=0, last_purchase_ms=None, last_add_ms=5, last_abandon_ms=None,
...                            cart_items=1, session_product_views=0), loyal_min_purchases=3)
'considering'
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("browsing", "considering", "cart_abandoned", "purchased", "loyal")


@dataclass(frozen=True, slots=True)
class JourneyFacts:
    purchases_90d: int
    last_purchase_ms: int | None
    last_add_ms: int | None
    last_abandon_ms: int | None
    cart_items: int
    session_product_views: int


def journey_stage(f: JourneyFacts, loyal_min_purchases: int) -> str:
    if f.purchases_90d >= loyal_min_purchases:
        return "loyal"
    if f.last_purchase_ms is not None and (f.last_add_ms is None or f.last_purchase_ms >= f.last_add_ms):
        return "purchased"
    if f.last_abandon_ms is not None and (f.last_purchase_ms is None or f.last_abandon_ms > f.last_purchase_ms):
        return "cart_abandoned"
    if f.cart_items > 0 or f.session_product_views > 0:
        return "considering"
    return "browsing"
