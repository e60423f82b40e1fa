"""The core's contract checks (operators/core_checks.py) for a pattern book of each kind, over a generated stream
that fires that kind and teaches every model."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from operators.core_checks import Check, drive, yield_checks
from operators.online_models import MODEL_NAMES
from operators.pattern_spec import PatternBook, load_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer
from operators.profile_fold import ProfileRules
from operators.runner import TRIGGER, Runner
from persona.generator.shoppers import generate
from persona.settings import load_generator_settings

KINDS = ("absence", "threshold", "escalation")


def book_of(kind: str) -> PatternBook:
    """conf/patterns.yaml's patterns of one kind (an escalation keeps the pattern it escalates)."""
    book = load_patterns()
    kept = {p.name for p in book.patterns if p.kind == kind}
    kept |= {p.of for p in book.patterns if p.name in kept and p.of}
    return dataclasses.replace(book, patterns=tuple(p for p in book.patterns if p.name in kept))


def runner_for(book: PatternBook) -> Callable[[], Runner]:
    return lambda: Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book, segments=5))


def _event(user: str, n: int, event_type: str, t_ms: int, payload: dict[str, Any]) -> tuple[int, bytes]:
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return t_ms, json.dumps({"event_id": f"{user}-{n}", "event_type": event_type, "user_id": user, "schema_version": 1,
                             "event_time": stamp, "context": {"device": "desktop"}, "payload": payload}).encode()


def two_abandoned_carts_in_one_session(user: str, t0: int) -> list[tuple[int, bytes]]:
    """A shopper who keeps browsing after each of two carts (the escalation's case, rare in generated traffic)."""
    cart = {"product_id": "p1", "category": "toys", "price": 12.5, "quantity": 1, "currency": "EUR"}
    view = {"url": "/p1", "page_type": "product", "product_id": "p1", "category": "toys", "dwell_ms": 20_000}
    minute = 60_000
    steps = [(0, "add_to_cart", cart), *((m, "page_view", view) for m in range(10, 45, 10)),
             (45, "add_to_cart", cart), *((m, "page_view", view) for m in range(55, 95, 10))]
    return [_event(user, i, kind, t0 + m * minute, payload) for i, (m, kind, payload) in enumerate(steps)]


@cache
def stream() -> tuple[bytes, ...]:
    """Valid generated events and three scripted shoppers (the checks add broken records of their own)."""
    records = [r for r in generate(load_generator_settings({"users": 60, "seed": 11, "span_hours": 24}),
                                   max_records=4_000) if r.event is not None]
    timed = [(r.event_time_ms, r.value) for r in records]
    t0 = min(t for t, _ in timed)
    scripted = sorted(x for i in range(3) for x in two_abandoned_carts_in_one_session(f"esc-{i}", t0 + (i + 1) * 3_600_000))
    out: list[bytes] = []
    for t, raw in timed:   # each scripted event right after the first generated one at or past its time
        while scripted and scripted[0][0] <= t:
            out.append(scripted.pop(0)[1])
        out.append(raw)
    return tuple(out + [raw for _, raw in scripted])


@pytest.mark.parametrize("kind", KINDS)
def test_the_stream_fires_the_kind_and_teaches_every_model(kind: str) -> None:
    book = book_of(kind)
    run = drive(runner_for(book), stream())
    fired = Counter(json.loads(v)["pattern"] for k, _, v in run.outputs if k == TRIGGER and v is not None)
    assert {book.by_name(p).kind for p in fired} >= {kind}, fired
    assert {m for m, xs in run.examples.items() if xs} == set(MODEL_NAMES), {m: len(xs) for m, xs in run.examples.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("check", list(yield_checks()), ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract(check: Check, kind: str) -> None:
    check(runner_for(book_of(kind)), stream())
