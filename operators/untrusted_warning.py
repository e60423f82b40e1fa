"""At most one warning a minute about events whose Kafka timestamp was not trusted for the watermark.

One misconfigured producer can send millions of them: each is counted (``ingest.timestamp_untrusted``), and the
log gets one line a minute with how many came since the last line and one example.

>>> w = UntrustedWarnings(skew_ms=600_000, every_s=60)
>>> w.observe(3, ("shop.events", 0, 42, 1_700_000_000_000), now_s=100.0).split(" had")[0]
'3 event(s) since the last warning'
>>> w.observe(5, ("shop.events", 0, 43, 1_700_000_000_000), now_s=130.0) is None   # within the minute
True
>>> w.observe(1, ("shop.events", 1, 7, 5), now_s=161.0).split("; they")[0].split("(e.g. ")
['6 event(s) since the last warning had a Kafka timestamp more than 600000 ms from their event_time, or ahead of the wall clock ', 'shop.events/1/7: timestamp 5 ms)']
"""

from __future__ import annotations


class UntrustedWarnings:
    __slots__ = ("_skew_ms", "_every_s", "_count", "_next_s")

    def __init__(self, skew_ms: int, every_s: float = 60.0) -> None:
        self._skew_ms, self._every_s = skew_ms, every_s
        self._count = 0
        self._next_s = 0.0

    def observe(self, count: int, example: tuple[object, object, object, object], now_s: float) -> str | None:
        """Count ``count`` more such events; the warning to log now, if a minute passed since the last one.
        ``example`` is (topic, partition, offset, Kafka timestamp ms) of one of them."""
        self._count += count
        if now_s < self._next_s:
            return None
        self._next_s = now_s + self._every_s
        count, self._count = self._count, 0
        topic, partition, offset, timestamp_ms = example
        return (f"{count} event(s) since the last warning had a Kafka timestamp more than {self._skew_ms} ms from "
                f"their event_time, or ahead of the wall clock (e.g. {topic}/{partition}/{offset}: timestamp "
                f"{timestamp_ms} ms); they do not move the watermark. Likely cause: the producer does not set the "
                "record timestamp to the event time.")
