"""Dead-letter records (schemas/dead_letter.v1.json): the rejected bytes, why, and where they came from."""

from __future__ import annotations

import base64
import json

from operators.events import Rejection, SourceRef

DEAD_LETTER_SCHEMA_VERSION = 1


def dead_letter_record(raw: bytes, rejection: Rejection, source: SourceRef, rejected_at_ms: int) -> str:
    """JSON text of one dead-letter entry. Raw bytes stay readable when they are UTF-8, else base64.

    >>> rec = json.loads(dead_letter_record(b"\\xff", Rejection("not_utf8", "byte 0"), SourceRef("t", 0, 7), 1))
    >>> rec["reason"], rec["raw"], rec["raw_encoding"], rec["source"]["offset"]
    ('not_utf8', '/w==', 'base64', 7)
    """
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return json.dumps({
        "schema_version": DEAD_LETTER_SCHEMA_VERSION,
        "reason": rejection.reason,
        "field": rejection.field,
        "detail": rejection.detail,
        "raw": text,
        "raw_encoding": encoding,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp_ms": source.timestamp_ms},
        "rejected_at": rejected_at_ms,
    }, separators=(",", ":"))
