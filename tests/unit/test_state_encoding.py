"""The per-user state as Flink stores it (MessagePack bytes, written on every event): it restores equal,
continues identically, stays small, and older or newer bytes still decode when fields come and go."""

from __future__ import annotations

import msgspec
import pytest

from operators.profile_fold import WINDOWS
from persona.generator.shoppers import generate
from persona.replay import Replay
from persona.settings import load_generator_settings, load_job_settings
from state.user_state import STATE_FORMAT, UserState, decode_state, encode_state

RECORDS = [r.value for r in generate(load_generator_settings({"users": 120, "seed": 5, "span_hours": 6}),
                                     max_records=6000)]


def _replay(records: list[bytes], restore_at: int | None = None, recommend: bool = True) -> Replay:
    """Replay the records (the recommender on: its part of the state too); at ``restore_at`` swap every user's state
    for its encoded-and-decoded copy."""
    rp = Replay(load_job_settings({"recommend.enabled": recommend}))
    for i, raw in enumerate(records):
        if i == restore_at:
            rp.states = {u: decode_state(encode_state(s)) for u, s in rp.states.items()}
        rp.process(raw)
    return rp


def test_every_part_of_a_replayed_state_survives_encoding() -> None:
    states = _replay(RECORDS[:4000]).states
    assert {u: decode_state(encode_state(s)) for u, s in states.items()} == states
    # The stream exercised every nested part, so the equality above covered them.
    assert any(s.models.labels.pending for s in states.values())
    assert any(s.models.labels.purchases for s in states.values())
    assert any(a.armed for s in states.values() for a in s.patterns.absence.values())
    assert any(s.patterns.gate.sent for s in states.values()) and any(s.patterns.anchors for s in states.values())
    assert any(s.sessions.recent for s in states.values()) and any(s.cart for s in states.values())


def test_a_restored_state_continues_like_the_original() -> None:
    assert _replay(RECORDS, restore_at=3000).states == _replay(RECORDS).states


def test_state_is_small() -> None:
    # A dense stream (50 events per user in 6 hours) keeps ~825 B per user: windows and pending labels
    # mostly, and ~145 B of de-duplication hashes (16 event ids of 8 bytes); the pickled format it replaced
    # kept ~1.9 KB. The propensity model's session-sequence features added 14 B (811 before), kept as small
    # integers. `persona bench` reports the checkpoint per user. Measured on the stored bytes (861 B): since the
    # replay runs through the job's runner, its states are what Flink stores, without the in-memory pruning of
    # timers that store nothing (825 B was measured on the live objects). The recommender's window of recent
    # items (up to 20 of product id, category, weight and time) adds 188 B: 1,049 B.
    states = list(_replay(RECORDS, recommend=True).states.values())
    sizes = [len(encode_state(s)) for s in states]
    assert sum(sizes) / len(sizes) < 1_060
    without = [len(encode_state(msgspec.structs.replace(s, recent_items=None))) for s in states]
    assert sum(without) / len(without) < 870


def test_window_sums_equal_the_buckets_they_summarise() -> None:
    for s in _replay(RECORDS).states.values():
        for name, spec in WINDOWS.items():
            buckets = s.windows.get(name, {})
            assert tuple(s.window_sums.get(name, (0,) * 6)) == spec.totals(buckets, s.newest_event_ms), name


class _Older(msgspec.Struct, omit_defaults=True, rename={"version": "v", "newest_event_ms": "t", "retired": "zz"}):
    """A state schema with a field since removed (``retired``) and without the fields added since."""

    version: int = 0
    newest_event_ms: int = 0
    retired: str = ""


def test_bytes_from_an_older_or_newer_schema_decode() -> None:
    old = bytes([STATE_FORMAT]) + msgspec.msgpack.encode(_Older(7, 1_000, retired="gone"))
    state = decode_state(old)   # the removed field is ignored, every added one takes its default
    assert (state.version, state.newest_event_ms, state.cart, state.models.bot) == (7, 1_000, {}, False)
    newer = msgspec.msgpack.decode(encode_state(state)[1:], type=_Older)   # and an older reader reads newer bytes
    assert (newer.version, newer.newest_event_ms, newer.retired) == (7, 1_000, "")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        decode_state(b"\x09" + encode_state(UserState())[1:])
