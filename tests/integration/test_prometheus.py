"""Scrape the job's Prometheus endpoint (Flink's reporter) and the loader's while a bounded stream goes through
``persona run``: the counters equal what the test sent (an independent oracle), and the loader reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persona.generator.shoppers import generate
from persona.settings import ROOT, load_generator_settings
from persona.stack.procs import stop_process_group, wait_until
from tests.fixtures.kafka_io import produce, read_all_json
from tests.fixtures.personalization_oracle import expected
from tests.fixtures.services import TopicNames
from tests.integration.test_personalization_job import job_overrides

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[str, float]:
    """Every sample, summed over its labels (subtasks), by metric name; empty while the endpoint is not up (the
    mini-cluster starts its reporter when the job is submitted)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] += sample.value
    return dict(out)


def operator_metric(samples: dict[str, float], suffix: str) -> float | None:
    """A user metric of the personalize operator, e.g. ``ingest_valid``."""
    names = [n for n in samples if n.startswith("flink_taskmanager_job_task_operator_") and n.endswith(suffix)]
    return sum(samples[n] for n in names) if names else None


def test_prometheus_scrape_counts_what_the_job_was_sent(kafka_bootstrap: str, redis_url: str, topics: TopicNames,
                                                        redis_prefix: str, tmp_path: Path) -> None:
    records = list(generate(load_generator_settings({"users": 100, "seed": 14, "bot_fraction": 0.0}), max_records=3_000))
    want = expected(records)
    valid = sum(1 for r in records if r.event is not None)
    sets = [a for o in job_overrides(topics, kafka_bootstrap, redis_url, redis_prefix, "prom") for a in ("--set", o)]
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "persona.cli", "run", "--quiet", *sets], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)

    def endpoint(what: str) -> str | None:
        found = re.search(rf"{what} metrics \(Prometheus\): (http://\S+/metrics)", log_path.read_text(errors="replace"))
        return found.group(1) if found else None
    try:
        wait_until(lambda: endpoint("job") is not None and endpoint("loader") is not None, 120,
                   "the run printing its Prometheus endpoints", interval_s=0.5)
        job_url, loader_url = endpoint("job"), endpoint("loader")
        assert job_url and loader_url
        wait_until(lambda: operator_metric(scrape(job_url), "ingest_valid") is not None, 120,
                   "the job's counters on the endpoint", interval_s=1)
        produce(kafka_bootstrap, topics.events, records)
        sent = Counter(t["pattern"] for t in read_all_json(kafka_bootstrap, topics.triggers))

        def settled() -> bool:
            samples = scrape(job_url)
            if operator_metric(samples, "ingest_valid") != valid:
                return False
            nonlocal sent
            sent = Counter(t["pattern"] for t in read_all_json(kafka_bootstrap, topics.triggers))
            return all(operator_metric(samples, f"personalize_triggers_{p}") == n for p, n in sent.items()) and bool(sent)
        wait_until(settled, 180, "the scraped counters equal to the stream", interval_s=2)
        samples = scrape(job_url)
        for reason, n in want.dead_letter_reasons.items():
            if reason == "late_event":
                assert operator_metric(samples, "personalize_late_events") == n
            else:
                assert operator_metric(samples, f"ingest_rejected_{reason}") == n, reason
        # Flink's own metrics are there too: checkpoints (the dashboard's) and records in.
        assert any(n.startswith("flink_jobmanager_job_numberOfCompletedCheckpoints") for n in samples)
        loader = scrape(loader_url)
        assert loader["persona_loader_records_total"] > 0 and loader["persona_loader_written_total"] > 0
        assert 0 <= loader["persona_loader_freshness_seconds"] < 60
        # Every metric the Grafana dashboard draws exists on one of the two endpoints (a name, or a name pattern).
        names = set(samples) | set(loader)
        dashboard = json.loads((ROOT / "docker" / "grafana" / "persona-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(exprs) >= 12
        for expr in exprs:
            for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
                if "experiments" not in pattern and "_bot_" not in pattern:   # no experiment, no bot in this run
                    assert any(re.fullmatch(pattern, n) for n in names), pattern
            for name in re.findall(r"\b((?:flink|persona)_[A-Za-z0-9_]+)\b(?![^{]*\})", re.sub(r'__name__=~"[^"]+"', "", expr)):
                assert any(n == name or n.startswith(name + "_") for n in names), name
    finally:
        stop_process_group(job, timeout_s=60)
