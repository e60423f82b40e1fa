"""The per-user state: one typed value per user, stored in Flink as versioned MessagePack bytes.

Schema only (the fold that updates it lives in ``operators/profile_fold.py``). Every part is a msgspec
Struct encoded as a map with short keys: a field added with a default decodes from older bytes, a
removed field's key is ignored, and the bytes stay small (no per-user copy of settings such as window
geometry or the session gap). A key is persisted schema: renaming one loses that part of the state.

The encoding starts with one format byte (``STATE_FORMAT``), so a later incompatible change can be
recognised and migrated rather than misread.

>>> s = UserState(version=3, newest_event_ms=1_000)
>>> s.rfm.add_purchase(1_000, 2_500)
>>> data = encode_state(s)
>>> data[:1], len(data) < 60, decode_state(data) == s
(b'\\x01', True, True)
"""

from __future__ import annotations

import msgspec

from state.affinity import Affinities
from state.item_state import RecentItems
from state.model_state import ModelOutputs
from state.pattern_state import PatternState
from state.rfm import Rfm
from state.sessions import Sessions

# Persisted state name: renaming it loses state on restore from a savepoint.
USER_STATE = "user_state_v2"
STATE_FORMAT = 1


class CartItem(msgspec.Struct, frozen=True, array_like=True):
    category: str
    price_minor: int
    quantity: int
    currency: str


class UserState(msgspec.Struct, omit_defaults=True,
                rename={"version": "v", "newest_event_ms": "t", "totals": "n", "windows": "w", "window_sums": "ws", "sessions": "s",
                        "session_product_views": "pv", "session_product_dwell_ms": "pd", "session_starts": "ss",
                        "rfm": "r", "affinities": "a", "device_counts": "dc", "last_device": "ld", "country": "c",
                        "timezone": "tz", "demographics": "d", "consent_log": "cl", "consents": "cg",
                        "cart": "ct", "last_purchase_ms": "lp", "last_add_ms": "la", "last_abandon_ms": "lb",
                        "patterns": "p", "models": "m", "seen_events": "e", "seen_orders": "o", "epoch_ms": "ep",
                        "recent_items": "ri"}):
    version: int = 0
    newest_event_ms: int = 0
    totals: dict[str, int] = {}
    windows: dict[str, dict[int, list[int]]] = {}      # window name -> bucket start -> measures
    # The sum of each window's buckets, kept as they change: read at every decision point and profile write,
    # it would otherwise be summed over up to 24 buckets each time.
    window_sums: dict[str, list[int]] = {}
    sessions: Sessions = msgspec.field(default_factory=Sessions)
    session_product_views: int = 0
    session_product_dwell_ms: int = 0
    session_starts: list[int] = []
    rfm: Rfm = msgspec.field(default_factory=Rfm)
    affinities: Affinities = msgspec.field(default_factory=Affinities)
    device_counts: dict[str, int] = {}
    last_device: str | None = None
    country: str | None = None
    timezone: str | None = None
    demographics: dict[str, str | int | bool | None] = {}
    # Consent choices per purpose (operators/consent.py), in event-time order: (time, purpose, granted).
    consents: list[tuple[int, str, bool]] = []
    # Before consent per purpose: (event time, marketing consent). Read with ``consents``; moved into it by the
    # user's next event (``profile_fold.apply_event``). The old state's "mc" key (marketing consent now) is ignored.
    consent_log: list[tuple[int, bool]] = []
    cart: dict[str, CartItem] = {}                     # product id -> item
    last_purchase_ms: int | None = None
    last_add_ms: int | None = None
    last_abandon_ms: int | None = None
    patterns: PatternState = msgspec.field(default_factory=PatternState)
    models: ModelOutputs = msgspec.field(default_factory=ModelOutputs)
    # De-duplication (operators/personalize.py): 64-bit hashes of the last event ids and purchase order ids.
    seen_events: list[int] = []
    seen_orders: list[int] = []
    # Wall-clock ms at which the job created this state (set by the caller, not the core, which reads no clock).
    # With ``version`` it orders Redis writes: a state started afresh after a loss has a newer epoch.
    epoch_ms: int = 0
    # The items the user touched lately, for the recommender (operators/co_occurrence.py); None until the first,
    # and for a user without the personalization purpose.
    recent_items: RecentItems | None = None


_HEADER = bytes([STATE_FORMAT])
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UserState)


def encode_state(state: UserState) -> bytes:
    return _HEADER + _encoder.encode(state)


def decode_state(data: bytes) -> UserState:
    """Bytes written by ``encode_state``; raises ``ValueError`` on an unknown format byte."""
    if data[:1] != _HEADER:
        raise ValueError(f"user state format {data[:1]!r} is not {_HEADER!r}")
    return _decoder.decode(memoryview(data)[1:])
