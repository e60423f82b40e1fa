"""Audit records (schemas/audit.v1.json): every consent change and erasure, who asked, when, what it did.

An audit record proves that a request was honoured; it never holds the data the request was about: no
profile field, no event payload beyond the consent choices themselves.

>>> rec = json.loads(audit_record(AuditEntry("erasure", {"flink_state": {"status": "cleared"}}), "u1", "e9",
...     1_000, SourceRef("shop.events", 0, 41), 2_000))
>>> rec["action"], rec["user_id"], rec["request"]["event_id"], rec["outcome"]["flink_state"]["status"], len(rec["audit_id"])
('erasure', 'u1', 'e9', 'cleared', 24)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from operators.events import SourceRef

AUDIT_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What the per-event core decided for the audit: the action and its outcome per store it knows."""

    action: str                                           # erasure | consent_change
    outcome: dict[str, dict[str, Any]] = field(default_factory=dict)
    consent: dict[str, Any] | None = None                 # consent_change: granted, withdrawn, in force after


def audit_id(user_id: str, event_id: str) -> str:
    """Stable per request: a replay after a failover gives the same id, so readers can de-duplicate."""
    return hashlib.sha256(f"{user_id}\x1f{event_id}".encode()).hexdigest()[:24]


def audit_record(entry: AuditEntry, user_id: str, event_id: str, requested_at_ms: int, source: SourceRef,
                 processed_at_ms: int, outcome: dict[str, dict[str, Any]] | None = None) -> str:
    """JSON text of one audit record; ``outcome`` adds the stores the caller handled (topics) to the core's."""
    doc: dict[str, Any] = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "audit_id": audit_id(user_id, event_id),
        "action": entry.action,
        "user_id": user_id,
        # Who: the data subject's own request, as the shop sent it (the event), and where it was read.
        "request": {"event_id": event_id, "requested_at": requested_at_ms,
                    "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset}},
        "processed_at": processed_at_ms,
        "outcome": {**entry.outcome, **(outcome or {})},
    }
    if entry.consent is not None:
        doc["consent"] = entry.consent
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
