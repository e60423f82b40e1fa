"""Contract checks of the per-event core, in the manner of River's ``checks``: each check drives fresh runners over
one stream of raw records and asserts one property that the job's exactness rests on. ``yield_checks`` gives them
all. tests/unit/test_core_contracts.py runs each for a pattern book of every kind, and checks that the stream
fires every pattern kind and teaches every model, so that no check passes by having nothing to check.

A change record and a stored state are compared by what they mean: the profile they give and the deadlines they
hold. A timer that only prunes expired entries is not stored (``Personalizer._on_timer``), so the bytes after a
restore may keep entries the uninterrupted run pruned; what the user sees and what fires must not differ.

A check raises ``AssertionError`` saying what differs.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from operators.personalize import Step
from operators.profile_fold import profile_view, redis_fields
from operators.runner import CHANGE, DEAD_LETTER, END_OF_INPUT, TRIGGER, Output, Record, Result, Runner, Watermarks
from state.profile_changelog import read_change
from state.user_state import UserState, decode_state, encode_state
from state.user_timers import UserTimers, decode_times, encode_times

MakeRunner = Callable[[], Runner]
Check = Callable[[MakeRunner, Sequence[bytes]], None]


@dataclass
class Transcript:
    """Everything a run gives its caller: outputs in order (a change as its ``meaning``), the examples each trainer
    got in order (user, label, features), and the meaning of every user's stored state at the end."""

    outputs: list[Output] = field(default_factory=list)
    examples: dict[str, list[tuple[str, bool | None, str]]] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)

    def without(self, kind: str) -> list[Output]:
        return [o for o in self.outputs if o[0] != kind]


def drive(make_runner: MakeRunner, records: Sequence[bytes], bound_ms: int = 5_000, restore_at: int | None = None,
          after_batch: Callable[[int, Runner, Result], None] | None = None, send_every: int = 10) -> Transcript:
    """One record per batch, then the watermark it moves (its event time less ``bound_ms``), then the end of the
    input. The examples waiting go to the trainers every ``send_every`` batches, as the job sends them at its tick.
    ``restore_at``: after that many records, a new runner goes on from the stored states and timers, each encoded
    and decoded again (a restore from a checkpoint; the examples waiting are sent first)."""
    runner, timers, watermarks, run = make_runner(), UserTimers(), Watermarks(bound_ms, idle_ms=0), Transcript()
    stored: dict[str, bytes] = {}

    def send() -> None:
        for model, examples in runner.examples.take().items():
            run.examples.setdefault(model, []).extend((ex.user_id, ex.label, repr(ex.x)) for ex in examples)

    for i, raw in enumerate(records):
        if i == restore_at:
            send()
            runner, restored = make_runner(), UserTimers()
            for user in timers.users():
                restored.restore(user, decode_times(encode_times(timers.times_of(user))))
            stored = {u: encode_state(decode_state(data)) for u, data in stored.items()}
            timers = restored
        out = runner.on_batch([Record(None, raw)], timers, stored.get, None)
        runner.on_watermark(watermarks.after(out), timers, stored.get, None, out)
        if after_batch is not None:
            after_batch(i, runner, out)
        run.outputs += [meaning(runner, o) for o in out.emitted()]
        stored.update(out.dirty)
        if i % send_every == send_every - 1:
            send()
    out = runner.on_watermark(END_OF_INPUT, timers, stored.get, None)
    run.outputs += [meaning(runner, o) for o in out.emitted()]
    stored.update(out.dirty)
    send()
    run.states = {u: _state_meaning(runner, u, decode_state(data), 0) for u, data in stored.items()}
    return run


def meaning(runner: Runner, output: Output) -> Output:
    """A change as the profile it gives and the deadlines it holds; any other output as it is."""
    kind, key, value = output
    if kind != CHANGE or value is None or key is None:
        return output
    change = read_change(key.encode(), value)
    assert change.state is not None
    return kind, key, _state_meaning(runner, key, change.state, change.updated_at_ms)


def _state_meaning(runner: Runner, user: str, state: UserState, updated_at_ms: int) -> bytes:
    fields = redis_fields(profile_view(user, state, runner.core.rules), updated_at_ms)
    return json.dumps([fields, sorted(runner.core.deadlines(state))], sort_keys=True).encode()


def _same(a: Transcript, b: Transcript, what: str) -> None:
    for name in ("outputs", "examples", "states"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            diff = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))) \
                if isinstance(x, list) else sorted(str(k) for k in x.keys() | y.keys() if x.get(k) != y.get(k))[:5]
            raise AssertionError(f"{what}: the {name} differ ({len(x)} vs {len(y)}; first difference: {diff})")


def check_the_same_events_give_the_same_results(make_runner: MakeRunner, records: Sequence[bytes]) -> None:
    _same(drive(make_runner, records), drive(make_runner, records), "two runs over the same records")


def check_a_redelivered_event_changes_nothing(make_runner: MakeRunner, records: Sequence[bytes]) -> None:
    """Each record delivered twice in a row (a producer's retry): the same outputs, examples and states, except that
    a refused record (a late one) is refused, and dead-lettered, each time it comes."""
    once, twice = drive(make_runner, records), drive(make_runner, [r for raw in records for r in (raw, raw)])
    letters = [o for o in once.outputs if o[0] == DEAD_LETTER]
    assert [o for o in twice.outputs if o[0] == DEAD_LETTER] == [o for o in letters for _ in (1, 2)], \
        "a redelivered record was not dead-lettered as the first delivery was"
    once.outputs, twice.outputs = once.without(DEAD_LETTER), twice.without(DEAD_LETTER)
    _same(once, twice, "every record delivered twice")


def check_a_restored_state_goes_on_identically(make_runner: MakeRunner, records: Sequence[bytes]) -> None:
    """Encode, decode and go on with a new runner (a restore) at a third and at two thirds of the stream."""
    whole = drive(make_runner, records)
    for at in (len(records) // 3, 2 * len(records) // 3):
        _same(whole, drive(make_runner, records, restore_at=at), f"a restore after record {at}")


def check_hostile_records_are_dead_lettered_and_change_nothing_else(make_runner: MakeRunner,
                                                                     records: Sequence[bytes]) -> None:
    """Broken records spread through the stream: the core never raises, each becomes one dead letter, and
    everything else is what the clean stream gives."""
    rng = random.Random(7)
    hostile = [b"", b"\xff\xfe{}", b"{nope", b"[1,2]", b"[" * 5_000 + b"]" * 5_000, b'{"event_id": 5}',
               *(json.dumps({"event_id": f"h{i}", "event_type": rng.choice(["page_view", "purchase", "nope"]),
                             "user_id": rng.choice([None, 12, "u-x"]), "schema_version": rng.choice([2, "1", None]),
                             "event_time": rng.choice(["2026-11-02T10:00:00Z", "yesterday", 17]),
                             "payload": rng.choice([None, [], {"price": "x"}])}).encode() for i in range(40))]
    mixed = list(records)
    for raw in hostile:
        mixed.insert(rng.randrange(len(mixed) + 1), raw)
    clean, dirty = drive(make_runner, records), drive(make_runner, mixed)
    letters = len(dirty.outputs) - len(dirty.without(DEAD_LETTER)) - (len(clean.outputs) - len(clean.without(DEAD_LETTER)))
    assert letters == len(hostile), f"{len(hostile)} hostile records gave {letters} dead letters"
    assert dirty.without(DEAD_LETTER) == clean.without(DEAD_LETTER), "hostile records changed other outputs"
    assert dirty.states == clean.states and dirty.examples == clean.examples, "hostile records changed states"


def check_a_failed_step_leaves_the_stored_state_as_it_was(make_runner: MakeRunner, records: Sequence[bytes]) -> None:
    """Every seventh event fails inside the core after it changed the state in place: the user goes on from the
    state stored before, exactly as if that event had never come, and the event is one ``processing_error``."""
    ids = [json.loads(raw)["event_id"] for raw in records]
    seen = Counter(ids)
    failing = {i for i in range(len(records)) if i % 7 == 3 and seen[ids[i]] == 1}

    def make_failing() -> Runner:
        runner = make_runner()
        inner = runner.core._on_event   # the step the core contains: what runs inside its try

        def broken(state: object, event: object, served: object) -> Step:
            if getattr(event, "event_id", None) in doomed:
                if state is not None:
                    state.version += 1000   # type: ignore[attr-defined]   # half-updated, then the bug
                raise RuntimeError("injected failure")
            return inner(state, event, served)   # type: ignore[arg-type]
        runner.core._on_event = broken   # type: ignore[method-assign]
        return runner

    doomed = {ids[i] for i in failing}
    survivors = [raw for i, raw in enumerate(records) if i not in failing]
    failed, without = drive(make_failing, records), drive(make_runner, survivors)
    errors = [o for o in failed.outputs if o[0] == DEAD_LETTER and o[2] is not None
              and json.loads(o[2])["reason"] == "processing_error"]
    assert len(errors) == len(failing), f"{len(failing)} failures gave {len(errors)} processing_error dead letters"
    assert failed.without(DEAD_LETTER) == without.without(DEAD_LETTER), "a failure left a trace in the outputs"
    assert failed.states == without.states and failed.examples == without.examples, "a failure left a trace"


def erasure_record(user: str, event_id: str, t_ms: int) -> bytes:
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"event_id": event_id, "event_type": "erasure_request", "user_id": user, "schema_version": 1,
                       "event_time": stamp, "payload": {}}).encode()


def check_after_an_erasure_no_output_carries_the_user(make_runner: MakeRunner, records: Sequence[bytes]) -> None:
    """A third of the users ask for erasure half way through the stream, and send nothing after it. From the
    batch of the erasure on: no trigger, change or dead letter of theirs has a value (tombstones only), no
    example made from their steps reaches a trainer, and nothing of them is stored but the new empty state."""
    half = len(records) // 2
    users = sorted({json.loads(r)["user_id"] for r in records[:half]})
    erased = set(users[::3])
    stream = [r for r in records[:half]]
    t_half = max(_event_time(r) for r in records[:half])
    stream += [erasure_record(u, f"erase-{u}", t_half + 1) for u in sorted(erased)]
    stream += [r for r in records[half:] if json.loads(r)["user_id"] not in erased]
    made_by: dict[int, str] = {}   # id(example) -> the user whose step made it
    erased_at: dict[str, int] = {}
    late: list[str] = []

    def make_watched() -> Runner:
        runner = make_runner()

        def seen(user: str, step: Step) -> None:
            for ex in step.examples:
                made_by[id(ex)] = user
        runner.on_step = seen
        return runner

    def after(i: int, runner: Runner, out: Result) -> None:
        raw = stream[i]
        if raw.startswith(b'{"event_id": "erase-'):
            erased_at[json.loads(raw)["user_id"]] = i
        waiting = [ex for xs in runner.examples._by_model.values() for ex in xs]
        late.extend(f"record {i}: a {ex.model} example of {made_by[id(ex)]}" for ex in waiting
                    if made_by.get(id(ex)) in erased_at)
        late.extend(f"record {i}: {kind} of {key} with a value" for kind, key, value in out.emitted()
                    if key in erased_at and erased_at[key] < i and value is not None and kind in (TRIGGER, CHANGE, DEAD_LETTER))

    run = drive(make_watched, stream, after_batch=after)
    assert set(erased_at) == erased, "every erasure was read"
    assert not late, f"{len(late)} traces after an erasure, e.g. {late[:3]}"
    for user in erased:
        fields, deadlines = json.loads(run.states[user])
        assert fields["profile_version"] == "0" and fields["events_total"] == "0" and not deadlines, f"{user} kept state"


def _event_time(raw: bytes) -> int:
    return int(datetime.fromisoformat(json.loads(raw)["event_time"].replace("Z", "+00:00")).timestamp() * 1000)


def yield_checks() -> Iterator[Check]:
    yield check_the_same_events_give_the_same_results
    yield check_a_redelivered_event_changes_nothing
    yield check_a_restored_state_goes_on_identically
    yield check_hostile_records_are_dead_lettered_and_change_nothing_else
    yield check_a_failed_step_leaves_the_stored_state_as_it_was
    yield check_after_an_erasure_no_output_carries_the_user
