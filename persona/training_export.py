"""``persona export-training``: point-in-time training rows from the profile history, as JSON lines.

Reads the whole history topic once (``persona/history_reader.py``), groups it by user, and writes one row per
decision point whose label is known (``operators/training_rows.py``): the propensity features exactly as the
core had them at the decision, never later, and the label from what came after. The documented use is fitting
batch models outside the job (docs/history.md "Point-in-time training sets").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from operators.training_rows import training_rows
from persona.history_reader import history_records
from persona.settings import JobSettings
from state.profile_history import every_user


@dataclass
class ExportSummary:
    records: int = 0        # history records read
    users: int = 0
    rows: int = 0
    positives: int = 0
    still_open: int = 0     # decisions whose horizon ends after the history's newest time

    def line(self, out: Path) -> str:
        return (f"{self.rows:,} rows ({self.positives:,} positive) of {self.users:,} users to {out}; "
                f"{self.still_open:,} decisions still open (their horizon ends after the history's newest event); "
                f"{self.records:,} history records read")


def _counted(records: Iterator[tuple[bytes, bytes | None]], summary: ExportSummary, progress: bool
             ) -> Iterator[tuple[bytes, bytes | None]]:
    for record in records:
        summary.records += 1
        if progress and summary.records % 100_000 == 0:
            print(f"\r  {summary.records:,} history records read", end="", file=sys.stderr, flush=True)
        yield record
    if progress and summary.records >= 100_000:
        print(file=sys.stderr)


def export_training(settings: JobSettings, horizon_ms: int, out: Path, progress: bool = True) -> ExportSummary:
    """Write the rows of every user in the history to ``out`` (JSON lines); returns what was written."""
    summary = ExportSummary()
    users = every_user(_counted(history_records(settings), summary, progress))
    known_until = max((v.as_of_ms for versions in users.values() for v in versions), default=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for user in sorted(users):
            rows, still_open = training_rows(users[user], horizon_ms, known_until)
            summary.still_open += still_open
            for row in rows:
                f.write(json.dumps(row.to_dict(horizon_ms), sort_keys=True) + "\n")
                summary.positives += row.label
            summary.rows += len(rows)
            summary.users += bool(rows)
    return summary
