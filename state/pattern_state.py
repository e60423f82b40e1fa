"""The per-user state of the pattern engine (``UserState.patterns``) and the trigger record.

Schemas only: the logic lives in ``operators/absence.py``, ``operators/trigger_gate.py`` and
``operators/pattern_engine.py``. Short keys keep each user's state small; a key is persisted schema.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from state.model_state import PendingLabels

TRIGGER_SCHEMA_VERSION = 2


class Trigger(msgspec.Struct, frozen=True, omit_defaults=True):
    """A gated trigger (schemas/trigger.v2.json); kept in state while deferred by quiet hours."""

    trigger_id: str
    pattern: str
    reason: str
    user_id: str
    event_time: int
    emitted_at: int
    cart: dict[str, Any] | None = None
    rules_version: int = 0      # the rule set, and the pattern's own version in it, that produced the trigger
    pattern_version: int = 0
    experiment: str | None = None   # docs/behaviour.md "Experiments": the user's variant of the pattern's experiment
    variant: str | None = None
    alternatives: list[str] | None = None   # the pattern's ``include_list``: the user's list when it was sent
    # The profile version the trigger was decided on (``persona profile USER --at``/``--history`` shows it); 0 in a
    # trigger deferred by a build before it.
    profile_version: int = 0
    # A match of history (``persona backfill --dry-run-topic``): written to the dry-run topic, never sent.
    history: bool = False

    def to_json(self) -> str:
        doc: dict[str, Any] = {"schema_version": TRIGGER_SCHEMA_VERSION, "trigger_id": self.trigger_id,
                               "pattern": self.pattern, "reason": self.reason, "user_id": self.user_id,
                               "event_time": self.event_time, "emitted_at": self.emitted_at,
                               "rules_version": self.rules_version, "pattern_version": self.pattern_version}
        if self.cart is not None:
            doc["cart"] = self.cart
        if self.experiment is not None:
            doc["experiment"], doc["variant"] = self.experiment, self.variant
        if self.alternatives is not None:
            doc["alternatives"] = self.alternatives
        if self.profile_version:
            doc["profile_version"] = self.profile_version
        if self.history:
            doc["history"] = True
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class Armed(msgspec.Struct, frozen=True, array_like=True):
    anchor_event_id: str
    anchor_time_ms: int
    deadline_ms: int


class AbsenceState(msgspec.Struct, omit_defaults=True, rename={"armed": "a", "blockers": "b"}):
    """Open anchors (their windows never overlap) and recent blocker times (anchors and cancels)."""

    armed: list[Armed] = []
    blockers: list[int] = []


class GateState(msgspec.Struct, omit_defaults=True, rename={"marketing_consent": "c", "sent": "s", "user_sent": "u"}):
    marketing_consent: bool = True
    sent: dict[str, list[int]] = {}   # pattern -> release times within the cap window
    user_sent: list[int] = []         # release times within the per-user cap window, all patterns (if capped)


class AnchorInfo(msgspec.Struct, frozen=True, array_like=True):
    """What a trigger needs from the moment its anchor happened: the session and the cart, as rows of
    (product id, category, price in minor units, quantity), and its currency."""

    session_start_ms: int
    cart: list[tuple[str, str, int, int]]
    currency: str | None = None

    def cart_doc(self) -> dict[str, Any]:
        """The trigger's ``cart`` (schemas/trigger.v2.json)."""
        items = [{"product_id": p, "category": c, "price_minor": price, "quantity": q} for p, c, price, q in self.cart]
        return {"items": items, "value_minor": sum(price * q for _, _, price, q in self.cart), "currency": self.currency}


def anchor_key(pattern: str, anchor_event_id: str) -> str:
    return f"{pattern}\x1f{anchor_event_id}"


class ExperimentState(msgspec.Struct, omit_defaults=True, rename={"variant": "v", "outcomes": "o"}):
    """A user's sticky variant of one experiment, and the exposures waiting for their outcome (the delayed-label
    join's state: example id = trigger id, features = (variant,)). ``variant`` is empty until the first trigger
    (outcome events are remembered from before it)."""

    variant: str
    outcomes: PendingLabels = msgspec.field(default_factory=PendingLabels)


class PatternState(msgspec.Struct, omit_defaults=True,
                   rename={"absence": "a", "threshold_on": "t", "anchors": "i", "escalations": "e", "gate": "g",
                           "deferred": "d", "cancel_marks": "c", "rules_version": "v",
                           "experiments": "x"}):
    absence: dict[str, AbsenceState] = {}
    threshold_on: dict[str, bool] = {}
    anchors: dict[str, AnchorInfo] = {}              # anchor_key(pattern, anchor id) -> info
    escalations: dict[str, dict[int, int]] = {}      # pattern -> session start -> matches
    gate: GateState = msgspec.field(default_factory=GateState)
    deferred: list[Trigger] = []
    # pattern -> event times of its cancel steps in the last day: a trigger deferred by quiet hours is dropped
    # if one falls between its match and its release, in whatever order the event and the match were processed.
    cancel_marks: dict[str, list[int]] = {}
    # The rule-set version this state was last brought up to (0: before the registry); a newer rule set resets or
    # drops the state of the patterns it changed or removed (PatternEngine.reconcile).
    rules_version: int = 0
    experiments: dict[str, ExperimentState] = {}     # experiment name -> the user's variant and pending outcomes
