"""Point-in-time training rows from the profile history: ``persona export-training``.

A decision point is an event at which the core scored the purchase propensity (an add to cart or a product
page view of a user who is not a bot): it stores that snapshot, the feature tuple the model saw, in the
user's state until its label comes (``operators/label_join.py``). So the version the event made holds the
features exactly as the core had them then, and nothing later. The label comes from the later versions: 1 if
the user's purchase count grew at a version whose event time is in ``[decision, decision + horizon]``.

A decision whose horizon ends after the newest time the history knows is *open* (its label is not known yet):
counted, not written. Nothing is read but what the history holds, so an erased user (tombstoned versions)
has no row.

>>> from state.model_state import ModelOutputs, Pending, PendingLabels
>>> from state.profile_changelog import Change
>>> from state.profile_history import Version
>>> from state.user_state import UserState
>>> def version(v, t, pending, purchases):
...     labels = PendingLabels(pending=[Pending(e, pt, tuple(range(len(PROPENSITY_FEATURES))), 0.5, 1)
...                                     for e, pt in pending])
...     state = UserState(version=v, totals={"purchase": purchases}, models=ModelOutputs(labels=labels))
...     return Version("u1", v, t, Change("u1", 0, state))
>>> history = [version(1, 100, [("e1", 100)], 0), version(2, 200, [("e1", 100), ("e2", 200)], 0),
...            version(3, 250, [], 1)]   # the purchase at 250 labelled both in the core (its own window)
>>> rows, still_open = training_rows(history, horizon_ms=100, known_until_ms=280)
>>> [(r.example_id, r.profile_version, r.label) for r in rows], still_open
([('e1', 1, False)], 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from operators.model_features import PROPENSITY_FEATURES
from state.profile_history import Version


@dataclass(frozen=True, slots=True)
class TrainingRow:
    user_id: str
    example_id: str             # the event id of the decision
    decision_time_ms: int
    profile_version: int        # the version the decision made (the first one held, if history lost older ones)
    features: dict[str, Any]    # the propensity features, as the core had them at the decision
    score: float                # what the served model said then
    model_version: int
    label: bool

    def to_dict(self, horizon_ms: int) -> dict[str, Any]:
        return {"user_id": self.user_id, "example_id": self.example_id, "decision_time": self.decision_time_ms,
                "profile_version": self.profile_version, "features": self.features, "score": self.score,
                "model_version": self.model_version, "label": int(self.label), "horizon_ms": horizon_ms}


def training_rows(versions: Sequence[Version], horizon_ms: int, known_until_ms: int) -> tuple[list[TrainingRow], int]:
    """(rows, open decisions) of one user's versions (oldest first)."""
    seen: set[str] = set()
    bought, purchases = None, []
    decisions = []
    for v in versions:
        assert v.change is not None and v.change.state is not None
        state = v.change.state
        count = state.totals.get("purchase", 0)
        if bought is not None and count > bought:
            purchases.append(v.as_of_ms)
        bought = count
        for p in state.models.labels.pending:
            if p.example_id not in seen:
                seen.add(p.example_id)
                decisions.append((v.version, p))
    rows, still_open = [], 0
    for version, p in decisions:
        end = p.t_ms + horizon_ms
        if end > known_until_ms:
            still_open += 1
            continue
        rows.append(TrainingRow(versions[0].user_id, p.example_id, p.t_ms, version,
                                dict(zip(PROPENSITY_FEATURES, p.features, strict=True)), p.score, p.model_version,
                                any(p.t_ms <= t <= end for t in purchases)))
    return rows, still_open
