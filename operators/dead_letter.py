"""Dead-letter records (schemas/dead_letter.v2.json): the rejected bytes, why, and where they came from.

An entry always fits the topic: past ``max_raw_bytes`` only a prefix of the record is kept, with the
whole record's length and SHA-256 (an 800 KB record of non-UTF-8 bytes once became a base64 entry larger
than the producer's ``max.request.size``, and the sink failed the job).
"""

from __future__ import annotations

import base64
import hashlib
import json

from operators.events import Rejection, SourceRef

DEAD_LETTER_SCHEMA_VERSION = 2
DEFAULT_MAX_RAW_BYTES = 16_384


def dead_letter_record(raw: bytes, rejection: Rejection, source: SourceRef, rejected_at_ms: int,
                       max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES) -> str:
    """JSON text of one dead-letter entry. Raw bytes stay readable when they are UTF-8, else base64.

    >>> rec = json.loads(dead_letter_record(b"\\xff", Rejection("not_utf8", "byte 0"), SourceRef("t", 0, 7), 1))
    >>> rec["reason"], rec["raw"], rec["raw_encoding"], rec["source"]["offset"], rec["raw_truncated"]
    ('not_utf8', '/w==', 'base64', 7, False)
    >>> big = json.loads(dead_letter_record(b"x" * 100, Rejection("record_too_large", "100 bytes"), SourceRef("t", 0, 8), 1,
    ...                                     max_raw_bytes=10))
    >>> big["raw"], big["raw_length"], big["raw_truncated"]
    ('xxxxxxxxxx', 100, True)
    """
    kept = raw[:max_raw_bytes]
    try:
        # A cut may split a multi-byte character: the prefix is then judged as bytes (base64), like any non-UTF-8 record.
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return json.dumps({
        "schema_version": DEAD_LETTER_SCHEMA_VERSION,
        "reason": rejection.reason,
        "field": rejection.field,
        "detail": rejection.detail[:2000],
        "raw": text,
        "raw_encoding": encoding,
        "raw_truncated": len(kept) < len(raw),
        "raw_length": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp_ms": source.timestamp_ms},
        "rejected_at": rejected_at_ms,
    }, separators=(",", ":"))
