"""The per-user state of the model step (``UserState.models``): what the models said, pending labels.

Schemas only: the logic lives in ``operators/model_scoring.py`` and ``operators/label_join.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Pending(msgspec.Struct, frozen=True, array_like=True):
    """A decision-point snapshot waiting for its label."""

    example_id: str
    t_ms: int
    features: tuple[Any, ...]   # the packed feature tuple (operators.model_features)
    score: float                # what the serving model said at the snapshot (prequential: before it learns)
    model_version: int


class PendingLabels(msgspec.Struct, omit_defaults=True, rename={"pending": "p", "purchases": "b", "dropped": "x"}):
    pending: list[Pending] = []
    purchases: list[int] = []   # purchase times of the last label window
    dropped: int = 0            # snapshots refused over max_pending


class ModelOutputs(msgspec.Struct, omit_defaults=True,
                   rename={"propensity": "p", "propensity_version": "pv", "segment": "s", "segment_version": "sv",
                           "bot_score": "b", "bot": "bt", "bot_by": "bb", "session_start_ms": "ss",
                           "session_page_views": "spv", "session_rate": "sr", "labels": "l",
                           "dwell_weighted_ms": "dw", "dwell_weight": "dn", "model_judged_bot": "mb"}):
    """What the models said about one user."""

    propensity: float | None = None
    propensity_version: int = 0
    segment: int | None = None
    segment_version: int = 0
    bot_score: float | None = None
    bot: bool = False
    bot_by: str | None = None            # rule | model
    # The bot model's own verdict, whatever the rule said (sticky): measures the model apart from the rule.
    model_judged_bot: bool = False
    session_start_ms: int | None = None  # the session the counters below belong to
    session_page_views: int = 0
    session_rate: tuple[float, ...] | None = None   # the session's last rate features (learnt at its end)
    labels: PendingLabels = msgspec.field(default_factory=PendingLabels)
    # Reading time per product page, recency-weighted: each page's dwell and weight decay by DWELL_DECAY per
    # page after it (a propensity feature: a user's own pace, steadier than one session's few pages). Integers
    # (ms, and the weight in thousandths): MessagePack keeps them in 3-5 bytes, a float in 9.
    dwell_weighted_ms: int = 0
    dwell_weight: int = 0
