"""`persona status --json` on a running job (the embedded mini-cluster): its counters equal what the test sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from persona.generator.shoppers import generate
from persona.settings import ROOT, load_generator_settings
from persona.stack.procs import stop_process_group, wait_until
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.personalization_oracle import expected
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration


def test_status_json_counts_what_the_job_was_sent(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                 redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 100, "seed": 12, "bot_fraction": 0.0}), max_records=3_000))
    want = expected(records)
    valid = sum(1 for r in records if r.event is not None)
    assert want.dead_letter_reasons["late_event"] > 0 and len(want.dead_letter_reasons) > 3
    sets = [a for o in job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "status") for a in ("--set", o)]
    with open(tmp_path / "run.log", "wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "persona.cli", "run", *sets], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)

    def status() -> dict[str, Any] | None:
        out = subprocess.run([sys.executable, "-m", "persona.cli", "status", "--json", *sets], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    try:
        wait_until(lambda: (s := status()) is not None and s["state"] == "RUNNING", 120, "the job's status", interval_s=1)
        produce(kafka_bootstrap, topics.events, records)

        def settled() -> bool:
            s = status()
            if s is None or s["counters"]["valid"] != valid:
                return False
            sent = Counter(t["pattern"] for t in read_all_json(kafka_bootstrap, topics.triggers))
            return s["counters"]["triggers"] == dict(sent) and s["kafka"]["lag"] == 0 and s["checkpoint"] is not None
        wait_until(settled, 180, "status counters equal to the stream", interval_s=2)
        final = status()
        assert final is not None
        assert final["counters"]["dead_letters"] == dict(want.dead_letter_reasons)
        assert final["counters"]["late_events"] == want.dead_letter_reasons["late_event"]
        assert final["counters"]["triggers"] and final["restarts"] == 0
        assert final["redis"]["profiles"] > 0 and final["checkpoint"] is not None
        assert set(final["kafka"]["partitions"]) == {"0", "1"}
        # The human view says the same in a few lines; the run printed its web UI and a live line.
        text = subprocess.run([sys.executable, "-m", "persona.cli", "status", *sets], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=True).stdout
        assert f"valid {valid:,}" in text and "kafka lag 0" in text
        # The served propensity model's line (its drift detector's count with it) once the trainer has published.
        model = final["redis"]["propensity"]
        assert model is None or (model["version"] >= 1 and model["drifts"] >= 0 and "loss_window" in model)
        # (read after `final`: a model published in between shows in the text, never the other way round)
        assert "propensity v" in text if model is not None else \
            ("propensity v" in text or "propensity: no version published yet" in text)
        # The live line comes every 5 s from its own reads of the REST API: it reaches the final count on its
        # next tick (under load, after the status commands above were done).
        wait_until(lambda: f"live: {valid:,} valid" in (tmp_path / "run.log").read_text(errors="replace"), 60,
                   "the live line with the final count", interval_s=1)
    finally:
        stop_process_group(job, timeout_s=60)
    log_text = (tmp_path / "run.log").read_text(errors="replace")
    assert "web UI and REST API: http://127.0.0.1:" in log_text and f"live: {valid:,} valid" in log_text
