"""Flink wiring of ``operators.validation``: raw Kafka rows in, ``Event``s out, rejections to a side output."""

from __future__ import annotations

import time
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, OutputTag, ProcessFunction

from jobs.kafka_io import kafka_timestamp_ms
from operators.dead_letter import dead_letter_record
from operators.events import Event, SourceRef
from operators.input_limits import InputLimits
from operators.reasons import RejectReason
from operators.validation import parse_event

KEYED_JSON = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
DEAD_LETTERS = OutputTag("dead-letters", KEYED_JSON)


class ParseEvents(ProcessFunction):
    """Valid events go on as pickled ``Event``s; every rejected record goes to ``DEAD_LETTERS``. The same
    validation as the personalization job: its limits (``persona.rules.input_limits``) and the wall clock."""

    def __init__(self, limits: InputLimits) -> None:
        self._limits = limits

    def open(self, runtime_context: Any) -> None:
        group = runtime_context.get_metrics_group().add_group("ingest")
        self._valid = group.counter("valid")
        self._rejected = {r: group.add_group("rejected").counter(r) for r in RejectReason}

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Any:
        raw: bytes = row[0] if row[0] is not None else b""
        now_ms = int(time.time() * 1000)
        out = parse_event(raw, self._limits, now_ms)
        if isinstance(out, Event):
            self._valid.inc()
            yield out
            return
        self._rejected[out.reason].inc()
        source = SourceRef(row[1], row[2], row[3], kafka_timestamp_ms(row[4]))
        # Personal data masked (docs/privacy.md), as in the personalization job.
        yield DEAD_LETTERS, Row(None, dead_letter_record(raw, out, source, now_ms, self._limits.dead_letter_raw_bytes,
                                                         self._limits.masked_fields))


def parse(raw: DataStream, limits: InputLimits) -> tuple[DataStream, DataStream]:
    """(events, dead letters as (key, json) rows)."""
    events = raw.process(ParseEvents(limits), output_type=Types.PICKLED_BYTE_ARRAY()).name("parse-validate").uid("parse-validate")
    return events, events.get_side_output(DEAD_LETTERS)
