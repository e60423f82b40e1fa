"""Live benchmark traffic: valid events stamped with the wall clock, and what each user's profile version will be.

Event time equals produce time, so freshness (produce -> visible in Redis) and the trigger delay
(abandonment deadline -> trigger read from Kafka) are both measured against the same clock.
"""

from __future__ import annotations

import json
import random
import zlib
from datetime import UTC, datetime

DEVICES = ("mobile", "desktop", "tablet")


class LiveTraffic:
    """``next(now_ms)`` -> (user, key, value, expected profile_version of the user after this event)."""

    def __init__(self, prefix: str, users: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._prefix, self._users = prefix, users
        self._versions: dict[str, int] = {}
        self._seq = 0

    def next(self, now_ms: int) -> tuple[str, bytes, bytes, int]:
        rng = self._rng
        user = f"{self._prefix}{rng.randrange(self._users):05d}"
        self._seq += 1
        r = rng.random()
        category = rng.choice(("shoes", "books", "toys", "garden"))
        if r < 0.70:
            kind, payload = "page_view", {"page_type": "product", "product_id": f"p-{category}-{rng.randint(1, 99)}",
                                          "category": category, "dwell_ms": rng.randint(2_000, 90_000)}
        elif r < 0.90:
            kind, payload = "add_to_cart", {"product_id": f"p-{category}-{rng.randint(1, 99)}", "category": category,
                                            "price": round(rng.uniform(5, 200), 2), "currency": "EUR", "quantity": 1}
        elif r < 0.95:
            kind, payload = "purchase", {"order_id": f"o-{self._seq}", "currency": "EUR", "total": 42.0, "items": [
                {"product_id": f"p-{category}-1", "category": category, "price": 42.0, "quantity": 1}]}
        else:
            kind, payload = "search", {"query": "running shoes"}
        doc = {"event_id": f"live-{self._prefix}{self._seq}", "event_type": kind, "user_id": user, "schema_version": 1,
               "event_time": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
               "context": {"device": DEVICES[zlib.crc32(user.encode()) % 3], "timezone": "UTC"}, "payload": payload}
        version = self._versions[user] = self._versions.get(user, 0) + 1
        return user, user.encode(), json.dumps(doc, separators=(",", ":")).encode(), version
