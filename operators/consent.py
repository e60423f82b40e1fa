"""Consent per purpose: what a user allowed, when, and what applies before they chose (docs/privacy.md).

Three purposes, each judged on its own at an event time:

- ``analytics``: without it no profile is kept, only the consent record (and what orders it);
- ``personalization``: without it no model scoring, segments, training examples or profile in Redis
  beyond the consent flags;
- ``marketing``: without it no trigger (judged at match time and again at release).

A user's explicit choices are a log of (event time, purpose, granted). Before the first choice for a
purpose, the default of the user's country applies (``ConsentPolicy``), so an opt-in jurisdiction starts
with everything denied, and a user who was erased starts again from that default.

>>> policy = ConsentPolicy(default=(True, True, True), by_country={"DE": (False, False, False)})
>>> log = [(2_000, "marketing", False)]
>>> consent_in_force(log, "marketing", 1_000, "FR", policy), consent_in_force(log, "marketing", 2_000, "FR", policy)
(True, False)
>>> consent_in_force([], "analytics", 5, "DE", policy), consent_in_force([], "analytics", 5, None, policy)
(False, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PURPOSES = ("analytics", "personalization", "marketing")
ANALYTICS, PERSONALIZATION, MARKETING = PURPOSES
MAX_CONSENT_LOG = 30   # choices kept per user (the newest), enough for a history a person can read

ConsentLog = Sequence[tuple[int, str, bool]]
_INDEX = {p: i for i, p in enumerate(PURPOSES)}


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """Per purpose (in ``PURPOSES`` order): granted before the user chose? By country, else ``default``."""

    default: tuple[bool, bool, bool] = (True, True, True)
    by_country: Mapping[str, tuple[bool, bool, bool]] = field(default_factory=dict)

    def default_for(self, purpose: str, country: str | None) -> bool:
        values = self.by_country.get(country, self.default) if country else self.default
        return values[_INDEX[purpose]]


def consent_in_force(log: ConsentLog, purpose: str, t_ms: int, country: str | None, policy: ConsentPolicy) -> bool:
    """The user's last choice for ``purpose`` at or before ``t_ms`` (the log is in time order), else the default."""
    if not log:   # most users never chose: the default (checked several times per event)
        return policy.default_for(purpose, country)
    value: bool | None = None
    for at, p, granted in log:
        if at > t_ms:
            break
        if p == purpose:
            value = granted
    return policy.default_for(purpose, country) if value is None else value


def record_choices(log: list[tuple[int, str, bool]], t_ms: int, granted: Sequence[str], withdrawn: Sequence[str]
                   ) -> list[tuple[int, str, bool]]:
    """The log with one consent event's choices added in time order (a grant wins over a withdrawal of the
    same purpose in one event), the newest ``MAX_CONSENT_LOG`` kept.

    >>> record_choices([(5, "marketing", False)], 3, ["analytics"], ["marketing"])
    [(3, 'analytics', True), (3, 'marketing', False), (5, 'marketing', False)]
    """
    choices = {p: False for p in withdrawn} | {p: True for p in granted}
    added = [(t_ms, p, v) for p, v in sorted(choices.items()) if p in PURPOSES]
    return sorted([*log, *added], key=lambda c: c[0])[-MAX_CONSENT_LOG:]


def consent_flags(log: ConsentLog, t_ms: int, country: str | None, policy: ConsentPolicy) -> dict[str, bool]:
    """Every purpose's consent at ``t_ms`` (the profile's ``consent`` field)."""
    return {p: consent_in_force(log, p, t_ms, country, policy) for p in PURPOSES}
