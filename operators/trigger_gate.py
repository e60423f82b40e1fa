"""Whether, and when, a matched pattern may reach a person: consent, frequency caps, quiet hours.

Pure and time-injected. Decisions:
- decided at an event time before ``history_before_ms`` (history loaded by ``persona backfill``) -> suppressed,
  reason ``history``, before consent and caps: it never reached anyone, so it counts towards no cap;
- no marketing consent (withdrawn and not granted again) -> suppressed, reason ``no_consent``;
- more than ``cap`` triggers of the same pattern for the user within ``cap_window_ms`` -> suppressed,
  reason ``frequency_cap``;
- more than ``user_cap`` triggers of any pattern within ``user_cap_window_ms`` (when set) -> suppressed,
  reason ``user_cap``;
- inside quiet hours in the user's local time -> deferred to the end of quiet hours (not dropped).

>>> gate = TriggerGate(cap=1, cap_window_ms=86_400_000, quiet_start_hour=22, quiet_end_hour=8)
>>> d = gate.decide(GateState(), "cart_abandonment", at_ms=1793653200000, timezone="Europe/Berlin")
>>> d.outcome, d.release_at_ms   # 2026-11-02 21:00 UTC is 22:00 in Berlin: deferred to 08:00 local
('deferred', 1793689200000)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from operators.reasons import SuppressReason
from state.pattern_state import GateState


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str                 # send | deferred | suppressed
    release_at_ms: int
    reason: SuppressReason | None = None    # why suppressed


@dataclass(frozen=True, slots=True)
class TriggerGate:
    cap: int
    cap_window_ms: int
    quiet_start_hour: int
    quiet_end_hour: int
    user_cap: int = 0              # 0: no cap across patterns
    user_cap_window_ms: int = 0
    history_before_ms: int = 0     # matches decided before this event time are history (0: none)

    def decide(self, state: GateState, pattern: str, at_ms: int, timezone: str | None) -> Decision:
        """Decide for a match at ``at_ms``; records the release in ``state`` unless suppressed."""
        if at_ms < self.history_before_ms:
            return Decision("suppressed", at_ms, SuppressReason.HISTORY)
        if not state.marketing_consent:
            return Decision("suppressed", at_ms, SuppressReason.NO_CONSENT)
        release = self.end_of_quiet_hours(at_ms, timezone)
        recent = [t for t in state.sent.get(pattern, []) if release - t < self.cap_window_ms]
        if len(recent) >= self.cap:
            state.sent[pattern] = recent
            return Decision("suppressed", release, SuppressReason.FREQUENCY_CAP)
        if self.user_cap:
            mine = [t for t in state.user_sent if release - t < self.user_cap_window_ms]
            if len(mine) >= self.user_cap:
                state.user_sent = mine
                return Decision("suppressed", release, SuppressReason.USER_CAP)
            state.user_sent = [*mine, release]
        state.sent[pattern] = [*recent, release]
        return Decision("send" if release == at_ms else "deferred", release)

    def end_of_quiet_hours(self, at_ms: int, timezone: str | None) -> int:
        """``at_ms`` itself outside quiet hours, else the next local ``quiet_end_hour:00``."""
        try:
            tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
        except (ZoneInfoNotFoundError, ValueError):
            tz = ZoneInfo("UTC")
        local = datetime.fromtimestamp(at_ms / 1000, tz)
        if not self._quiet(local.hour):
            return at_ms
        end = local.replace(hour=self.quiet_end_hour, minute=0, second=0, microsecond=0)
        if end <= local:
            end = (local + timedelta(days=1)).replace(hour=self.quiet_end_hour, minute=0, second=0, microsecond=0)
        # Re-localise: the wall-clock end may sit across a DST change.
        end = end.replace(tzinfo=None).replace(tzinfo=tz)
        return int(end.timestamp() * 1000)

    def _quiet(self, hour: int) -> bool:
        s, e = self.quiet_start_hour, self.quiet_end_hour
        if s == e:
            return False   # equal start and end: no quiet hours
        return s <= hour < e if s < e else (hour >= s or hour < e)
