"""The per-user state as Flink stores it (pickled on every event) restores equal and continues identically."""

from __future__ import annotations

import copyreg
import io
import pickle
from collections import deque
from dataclasses import fields

from bench.replay import Replay
from operators.model_scoring import ModelOutputs
from operators.pattern_engine import PatternState
from persona.generator.shoppers import generate
from persona.settings import load_generator_settings, load_job_settings
from state.profile import UserState

RECORDS = [r.value for r in generate(load_generator_settings({"users": 120, "seed": 5, "span_hours": 6}),
                                     max_records=6000)]


def _replay(records: list[bytes], restore_at: int | None = None) -> Replay:
    """Replay the records; at ``restore_at`` swap every user's state for its pickled-and-restored copy."""
    rp = Replay(load_job_settings({}))
    for i, raw in enumerate(records):
        if i == restore_at:
            rp.states = {u: pickle.loads(pickle.dumps(s)) for u, s in rp.states.items()}
        rp.process(raw)
    return rp


def test_every_part_of_a_replayed_state_survives_pickling() -> None:
    states = _replay(RECORDS[:4000]).states
    restored = {u: pickle.loads(pickle.dumps(s)) for u, s in states.items()}
    assert restored == states
    # The stream exercised every nested part, so the equality above covered them.
    models = [s.extra["models"] for s in states.values() if isinstance(s.extra.get("models"), ModelOutputs)]
    patterns = [s.extra["patterns"] for s in states.values() if isinstance(s.extra.get("patterns"), PatternState)]
    assert any(m.labels.pending for m in models) and any(m.labels.purchases for m in models)
    assert any(a.armed for p in patterns for a in p.absence.values())
    assert any(p.gate.sent for p in patterns)
    assert any(s.sessions is not None and s.sessions.recent for s in states.values())
    assert all(type(s.sessions.recent) is deque for s in restored.values() if s.sessions is not None)


def test_a_restored_state_continues_like_the_original() -> None:
    assert _replay(RECORDS, restore_at=3000).states == _replay(RECORDS).states


def test_state_checkpointed_in_the_previous_format_still_restores() -> None:
    """Before the flat format, these three classes pickled as ``cls(*field_values)`` (``state.compact.compact``)."""
    states = _replay(RECORDS[:4000]).states

    def as_before(obj: object) -> tuple[type, tuple[object, ...]]:
        return type(obj), tuple(getattr(obj, f.name) for f in fields(obj))  # type: ignore[arg-type]

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf)
    pickler.dispatch_table = {**copyreg.dispatch_table, UserState: as_before, ModelOutputs: as_before,
                              PatternState: as_before}
    pickler.dump(states)
    assert not any(name in buf.getvalue() for name in (b"_user_state", b"_model_outputs", b"_pattern_state"))
    assert pickle.loads(buf.getvalue()) == states
