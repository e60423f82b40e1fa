"""Fuzzing the decoder and the per-event core (Hypothesis): random bytes, random JSON and mutated valid events.

Properties: nothing raises; every record is either an ``Event`` or a ``Rejection`` with a known reason; every
rejection makes a dead-letter entry that matches its schema and fits the topic; and the core processes every
decoded event without an internal error (``Step.failed`` would mean a bug that containment hid).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.dead_letter import dead_letter_record
from operators.events import Event, Rejection, SourceRef
from operators.model_scoring import ServedModels
from operators.reasons import RejectReason
from operators.validation import parse_event
from persona.generator.shoppers import generate
from persona.rules import personalizer
from persona.settings import ROOT, load_generator_settings, load_job_settings

VALID = [json.loads(r.value) for r in generate(load_generator_settings({"users": 40, "seed": 3, "span_hours": 2,
                                                                         "malformed_fraction": 0.0}), max_records=400)]
CORE = personalizer(load_job_settings({}))
DEAD_LETTER = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "dead_letter.v2.json").read_text()))
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid generated event with a few fields dropped, replaced by random JSON, or blown up."""
    doc: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    depth = draw(st.sampled_from([20, 3000]))   # 3000 once raised RecursionError in the slow path
    for _ in range(draw(st.integers(1, 3))):
        target = doc if draw(st.booleans()) or not isinstance(doc.get("payload"), dict) else doc["payload"]
        keys = sorted(target) or ["x"]
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["drop", "replace", "huge", "deep", "case"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "replace":
            target[key] = draw(json_values)
        elif action == "huge":
            target[key] = "x" * draw(st.sampled_from([129, 501, 70_000]))
        elif action == "deep":
            target[key] = "__DEEP__"
        elif isinstance(target.get(key), str):
            target[key] = target[key].upper()
    return json.dumps(doc).replace('"__DEEP__"', "[" * depth + "]" * depth).encode()


records = st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()), mutated_events(),
                    st.sampled_from(VALID).map(lambda d: json.dumps(d).encode()))


def _check_rejection(raw: bytes, out: Rejection) -> None:
    assert isinstance(out.reason, RejectReason)
    entry = dead_letter_record(raw, out, SourceRef("events", 0, 1, None), 1)
    DEAD_LETTER.validate(json.loads(entry))
    assert len(entry) < 100_000


@FAST
@given(records)
def test_every_record_is_an_event_or_a_rejection(raw: bytes) -> None:
    out = parse_event(raw, now_ms=1_793_620_800_000)
    assert isinstance(out, (Event, Rejection))
    if isinstance(out, Rejection):
        _check_rejection(raw, out)


@FAST
@given(st.lists(records, min_size=1, max_size=12))
def test_the_core_processes_every_decoded_event_without_an_internal_error(batch: list[bytes]) -> None:
    states: dict[str, Any] = {}
    served = ServedModels()
    for raw in batch:
        event = parse_event(raw)
        if isinstance(event, Rejection):
            _check_rejection(raw, event)
            continue
        step = CORE.on_event(states.get(event.user_id), event, served)
        assert not step.failed, step.dead_letter
        if step.dead_letter is None:
            assert step.state is not None
            states[event.user_id] = step.state
            for t in step.timers:
                timer = CORE.on_timer(states[event.user_id], event.user_id, t)
                assert not timer.failed, timer.dead_letter
        else:
            _check_rejection(raw, step.dead_letter)
