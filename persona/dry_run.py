"""``persona rules dry-run``: what a candidate pattern file would have done over recorded events, beside the live one.

Both rule sets run the job's per-event core (``persona.replay.Replay``: the same ``Personalizer``, with
event-time timers fired as the watermark passes them and all of them at the end, as at the end of a
bounded input). Per pattern it reports the matches (every gate decision), the triggers after the gate,
the suppressions by reason, the users reached, and the triggers only one of the two rule sets sent.

The bot model's verdicts depend on when its versions are published, which the job and a replay do not
share: run both with ``models.bot_min_session_events`` high to compare with the job trigger for trigger
(the bot rule still applies).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators.events import Event
from operators.personalize import Step
from operators.runner import END_OF_INPUT
from operators.validation import parse_event
from persona.replay import Replay
from persona.settings import JobSettings
from persona.stack.topics import read_to_end

HOUR_MS = 3_600_000


@dataclass
class RuleSetRun:
    """What one rule set did: per pattern counters and the trigger ids, hour by hour."""

    matches: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    suppressed: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    trigger_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    per_hour: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def take(self, user: str, step: Step) -> None:
        for trigger in step.triggers:
            self.matches[trigger.pattern] += 1
            self.sent[trigger.pattern] += 1
            self.users[trigger.pattern].add(user)
            self.trigger_ids[trigger.pattern].add(trigger.trigger_id)
            self.per_hour[trigger.pattern][trigger.emitted_at // HOUR_MS] += 1
        for pattern, reason in step.suppressed:
            self.matches[pattern] += 1
            self.suppressed[pattern][reason] += 1


def read_lines(path: Path) -> Iterator[bytes]:
    """Records of a file in the event contract, one per line (``persona generate --out``)."""
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def read_topic(settings: JobSettings, topic: str) -> Iterator[tuple[bytes, int]]:
    """(value, Kafka timestamp) of every record of ``topic`` up to its end offsets at the start."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka.client_config(), enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist")
        for m in read_to_end(consumer, parts, timeout_s=3600):
            if m.value is not None:
                yield m.value, m.timestamp
    finally:
        consumer.close()


def in_range(records: Iterable[bytes], start_ms: int | None, end_ms: int | None) -> Iterator[bytes]:
    """Records whose event time is in [start, end); unreadable records pass (the core refuses them)."""
    if start_ms is None and end_ms is None:
        yield from records
        return
    for raw in records:
        e = parse_event(raw)
        if isinstance(e, Event) and ((start_ms is not None and e.event_time_ms < start_ms)
                                     or (end_ms is not None and e.event_time_ms >= end_ms)):
            continue
        yield raw


def dry_run(live: JobSettings, candidate: JobSettings, records: Iterable[bytes], progress: bool = True
            ) -> tuple[RuleSetRun, RuleSetRun, int]:
    """Run both rule sets over ``records``; returns (live, candidate, records read)."""
    runs = RuleSetRun(), RuleSetRun()
    replays = [Replay(settings, on_step=run.take) for settings, run in zip((live, candidate), runs, strict=True)]
    n = 0
    start = time.monotonic()
    for n, raw in enumerate(records, 1):
        for replay in replays:
            replay.process(raw)
        if progress and n % 10_000 == 0:
            print(f"  dry-run: {n:,} records ({n / (time.monotonic() - start):,.0f}/s)", flush=True)
    for replay in replays:
        replay.advance(END_OF_INPUT)   # the end of the input: every deadline and release passes
    return runs[0], runs[1], n


def report(live: RuleSetRun, candidate: RuleSetRun, records: int) -> dict[str, Any]:
    patterns = sorted(set(live.matches) | set(candidate.matches) | set(live.sent) | set(candidate.sent))
    out: dict[str, Any] = {"records": records, "patterns": {}}
    for p in patterns:
        out["patterns"][p] = {
            "candidate": {"matches": candidate.matches[p], "triggers": candidate.sent[p],
                          "suppressed": dict(sorted(candidate.suppressed[p].items())),
                          "users_reached": len(candidate.users[p])},
            "live": {"matches": live.matches[p], "triggers": live.sent[p],
                     "suppressed": dict(sorted(live.suppressed[p].items())), "users_reached": len(live.users[p])},
            "only_candidate": len(candidate.trigger_ids[p] - live.trigger_ids[p]),
            "only_live": len(live.trigger_ids[p] - candidate.trigger_ids[p]),
        }
    return out


def table(doc: dict[str, Any]) -> str:
    rows = [f"{'pattern':<32} {'triggers live':>13} {'candidate':>10} {'only cand.':>10} {'only live':>10} "
            f"{'users cand.':>11}  suppressed (candidate)"]
    for p, d in doc["patterns"].items():
        c, live = d["candidate"], d["live"]
        sup = ", ".join(f"{r} {n}" for r, n in c["suppressed"].items()) or "-"
        rows.append(f"{p:<32} {live['triggers']:>13,} {c['triggers']:>10,} {d['only_candidate']:>10,} "
                    f"{d['only_live']:>10,} {c['users_reached']:>11,}  {sup}")
    return "\n".join(rows)


def plot(live: RuleSetRun, candidate: RuleSetRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    every = [h for run in (live, candidate) for counts in run.per_hour.values() for h in counts]
    first, last = (min(every), max(every)) if every else (0, 0)
    hours = range(first, last + 1)
    for i, p in enumerate(sorted(set(live.per_hour) | set(candidate.per_hour))):
        colour = f"C{i % 10}"
        for run, style, label in ((live, ":", "live"), (candidate, "-", "candidate")):
            ax.plot([h - first for h in hours], [run.per_hour[p][h] for h in hours], style, color=colour,
                    label=f"{p} ({label})")
    ax.set_xlabel("hour of the recorded stream (release time)")
    ax.set_ylabel("triggers per hour")
    ax.set_title("persona rules dry-run: triggers over time per pattern")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(live: RuleSetRun, candidate: RuleSetRun, records: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    doc = report(live, candidate, records)
    (out / "dry-run.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    plot(live, candidate, out / "dry-run.png")
    return doc
