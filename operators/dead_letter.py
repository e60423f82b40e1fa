"""Dead-letter records (schemas/dead_letter.v2.json): the rejected bytes, why, and where they came from.

An entry always fits the topic: past ``max_raw_bytes`` only a prefix of the record is kept, with the
whole record's length and SHA-256 (an 800 KB record of non-UTF-8 bytes once became a base64 entry larger
than the producer's ``max.request.size``, and the sink failed the job).

Personal data is masked before the record is kept (docs/privacy.md): the value of every key named in
``masked`` (the IP address and the configured PII fields) wherever it nests, or, in a record that is not
JSON, anything that looks like an IPv4 address, an email address or a ``"key": "value"`` pair of a masked key.
``raw_sha256`` is of the record as received, so a repaired copy can still be matched with its original.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import orjson

from operators.events import Rejection, SourceRef

DEAD_LETTER_SCHEMA_VERSION = 2
DEFAULT_MAX_RAW_BYTES = 16_384
MASK = "***"
_IPV4 = re.compile(rb"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9.])")
# Bounded repeats (an address part is at most 64 and 255 bytes): an unbounded one scans to the end of the record
# from every position of a long run without '@', quadratic in its length.
_EMAIL = re.compile(rb"[^\s\"'<>@,;:]{1,64}@[^\s\"'<>@,;:]{1,255}\.[A-Za-z]{2,24}")


def _mask_doc(doc: Any, masked: frozenset[str]) -> int:
    """Replace, in place, the value of every key in ``masked`` wherever it nests; returns how many."""
    count = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items):
            if isinstance(k, str) and k in masked and v is not None:
                node[k] = MASK
                count += 1
            elif isinstance(v, (dict, list)):
                stack.append(v)
    return count


def mask_personal_data(raw: bytes, masked: frozenset[str], as_text: bool = False) -> tuple[bytes, int]:
    """The record with personal data masked, and how many values were (``as_text``: skip the JSON parse, for a
    prefix of a record too long to keep whole).

    >>> mask_personal_data(b'{"user_id":"u","context":{"ip":"81.2.69.142"}}', frozenset({"ip"}))
    (b'{"user_id":"u","context":{"ip":"***"}}', 1)
    >>> mask_personal_data(b'{"ip": "81.2.69.142", "email": "a@b.de" broken', frozenset({"ip", "email"}))
    (b'{"ip": "***", "email": "***" broken', 2)
    """
    if not masked:
        return raw, 0
    try:
        doc = None if as_text else orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, (dict, list)):
        count = _mask_doc(doc, masked)
        return (orjson.dumps(doc), count) if count else (raw, 0)
    names = b"|".join(re.escape(k.encode()) for k in sorted(masked))
    pairs = re.compile(rb'("(?:' + names + rb')"\s*:\s*)"(?:[^"\\]|\\.)*"')
    text, n1 = pairs.subn(rb'\1"***"', raw) if b'"' in raw else (raw, 0)
    text, n2 = _IPV4.subn(MASK.encode(), text) if b"." in text else (text, 0)
    text, n3 = _EMAIL.subn(MASK.encode(), text) if b"@" in text else (text, 0)
    return text, n1 + n2 + n3


def dead_letter_record(raw: bytes, rejection: Rejection, source: SourceRef, rejected_at_ms: int,
                       max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES, masked: frozenset[str] = frozenset()) -> str:
    """JSON text of one dead-letter entry. Raw bytes stay readable when they are UTF-8, else base64.

    >>> rec = json.loads(dead_letter_record(b"\\xff", Rejection("not_utf8", "byte 0"), SourceRef("t", 0, 7), 1))
    >>> rec["reason"], rec["raw"], rec["raw_encoding"], rec["source"]["offset"], rec["raw_truncated"]
    ('not_utf8', '/w==', 'base64', 7, False)
    >>> big = json.loads(dead_letter_record(b"x" * 100, Rejection("record_too_large", "100 bytes"), SourceRef("t", 0, 8), 1,
    ...                                     max_raw_bytes=10))
    >>> big["raw"], big["raw_length"], big["raw_truncated"]
    ('xxxxxxxxxx', 100, True)
    """
    if len(raw) > max_raw_bytes:   # only the prefix is kept: mask that (as text: a cut JSON document does not parse)
        kept, masked_values = mask_personal_data(raw[:max_raw_bytes], masked, as_text=True)
        truncated = True
    else:
        kept, masked_values = mask_personal_data(raw, masked)
        truncated = len(kept) > max_raw_bytes
    kept = kept[:max_raw_bytes]
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
        "raw_truncated": truncated,
        "raw_masked": masked_values,
        "raw_length": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp_ms": source.timestamp_ms},
        "rejected_at": rejected_at_ms,
    }, separators=(",", ":"))
