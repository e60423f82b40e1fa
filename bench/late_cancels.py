"""How many cancelling events reach the job after the deadline they would cancel, per watermark bound.

An abandonment fires when the watermark passes its deadline (anchor + ``within``). A purchase or removal
with an earlier event time that arrives after that is applied to the profile but cannot cancel the trigger
already sent. This replays a generated stream in emission order over the job's two source partitions
(watermark per partition = newest time less the bound; the job's watermark is their minimum) and counts
such cancels, split by the generator's delay label (``late`` records are dead-lettered by the per-user
lateness rule anyway).

``python -m bench.late_cancels [--records N] [--users N] [--seed S] [--bounds 500,1000,5000]``
"""

from __future__ import annotations

import argparse
import bisect
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CANCELS = frozenset({"purchase", "remove_from_cart"})


@dataclass(frozen=True, slots=True)
class Arrival:
    """One valid event in arrival order."""

    user: str
    kind: str
    t_ms: int
    delay: str        # the generator's label: in_order, out_of_order, late
    partition: int


def late_cancels(arrivals: Sequence[Arrival], bound_ms: int, within_ms: int) -> tuple[Counter[str], Counter[str]]:
    """(cancels that arrive after their deadline, all cancels), each by delay label.

    >>> a = [Arrival("u", "add_to_cart", 0, "in_order", 0), Arrival("x", "page_view", 0, "in_order", 1),
    ...      Arrival("x", "page_view", 13_000, "in_order", 1), Arrival("u", "page_view", 13_000, "in_order", 0),
    ...      Arrival("u", "purchase", 9_000, "out_of_order", 0)]   # 4 s behind, 1 s before the 10 s deadline
    >>> late_cancels(a, bound_ms=1_000, within_ms=10_000)[0], late_cancels(a, bound_ms=5_000, within_ms=10_000)[0]
    (Counter({'out_of_order': 1}), Counter())
    """
    newest = [0, 0]
    adds: dict[str, list[int]] = defaultdict(list)
    pending: list[tuple[str, int, str, int]] = []    # (user, time, delay label, watermark at arrival)
    for a in arrivals:
        newest[a.partition] = max(newest[a.partition], a.t_ms)
        watermark = min(newest) - bound_ms if min(newest) else 0
        if a.kind == "add_to_cart" and a.delay != "late":
            bisect.insort(adds[a.user], a.t_ms)
        elif a.kind in CANCELS:
            pending.append((a.user, a.t_ms, a.delay, watermark))
    late: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for user, t, delay, watermark in pending:
        total[delay] += 1
        i = bisect.bisect_right(adds[user], t)
        if i:   # the newest anchor at or before the cancel: the deadline it would block
            deadline = adds[user][i - 1] + within_ms
            if t <= deadline <= watermark:
                late[delay] += 1
    return late, total


def generated_arrivals(records: int, users: int, seed: int) -> list[Arrival]:
    from operators.events import Event
    from operators.validation import parse_event
    from persona.generator.shoppers import generate
    from persona.settings import load_generator_settings

    out = []
    for rec in generate(load_generator_settings({"users": users, "seed": seed}), max_records=records):
        event = parse_event(rec.value)
        if isinstance(event, Event):
            # Two partitions, keyed by user, as the job's topics: which user goes where does not matter here.
            out.append(Arrival(event.user_id, event.event_type, event.event_time_ms, rec.delay,
                               zlib.crc32(event.user_id.encode()) % 2))
    return out


def _rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.late_cancels", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--within-ms", type=int, default=30 * 60_000, help="the abandonment window (default 30 min)")
    parser.add_argument("--bounds", type=_rates, default=[500, 1000, 2000, 5000], help="watermark bounds, ms")
    args = parser.parse_args(list(argv) if argv is not None else None)
    arrivals = generated_arrivals(args.records, args.users, args.seed)
    for bound in args.bounds:
        late, total = late_cancels(arrivals, bound, args.within_ms)
        print(f"bound {bound:>6,} ms: cancels after their deadline {dict(late) or 0} of {dict(total)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
