"""`persona bench` end to end with small numbers: it completes, writes its three outputs, and measures sanely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from persona.cli import main

pytestmark = pytest.mark.integration


def assert_physical(drain: dict[str, Any]) -> None:
    """The rate is the events over the span it reports (seconds rounded to 0.1), and the CPU the system used
    over that span fits in this machine's cores."""
    events, seconds = drain["events"], drain["seconds"]
    assert events / (seconds + 0.05) - 1 <= drain["events_per_s"] <= events / max(seconds - 0.05, 0.01) + 1, drain
    cpu_s = drain["cpu_s_per_10k"] * events / 10_000
    assert 0 < cpu_s <= (os.cpu_count() or 1) * (seconds + 0.05) + 0.2, drain
    # The shared broker and Redis can use less than the rounding over a drain of a tenth of a second.
    assert 0 <= drain["shared_cpu_s_per_10k"] * events / 10_000 <= (os.cpu_count() or 1) * (seconds + 0.05) + 0.2, drain


def test_bench_writes_json_markdown_and_png(tmp_path: Path) -> None:
    assert main(["bench", "--events", "3000", "--rate", "200", "--seconds", "20", "--rate-high", "800",
                 "--seconds-high", "4", "--ladder", "300,600", "--step-seconds", "4", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "bench.json").read_text())
    for side in ("job", "peer", "baseline"):
        m = r[side]
        assert m["drain"]["events"] == 3000
        # CPU over the drain span: the system's own processes, and the broker and Redis every system shares.
        assert_physical(m["drain"])
        assert m["live"]["sent"] >= 0.9 * 200 * 20 and m["live"]["freshness_ms"]["n"] > 100
        assert m["live_high"]["sent"] >= 0.9 * 800 * 4 and m["live_high"]["freshness_ms"]["n"] > 100
        steps = m["sustained"]["steps"]
        assert [s["rate"] for s in steps][:1] == [300] and m["sustained"]["events_per_s"] in (0, 300, 600)
        assert m["state"]["redis_bytes_per_profile"] > 0 and m["rss_mb"] > 0 and m["rss_mb_high"] > 0
        # A trigger comes after its deadline: a negative delay would mean timers fired early.
        delays = m["trigger_delay_ms"]
        assert delays["n"] > 0 and delays["p50"] > 0, delays
    assert r["job"]["state"]["checkpoint_bytes_per_user"] > 0
    assert r["logic_only"]["events"] == 3000 and r["logic_only"]["events_per_s"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| drain: events/s |" in table and "freshness at 200 events/s" in table and "per-event core alone" in table
    assert "freshness at 800 events/s" in table and "peer: Bytewax" in table and "`sustained.events_per_s`" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_quick_gives_the_job_and_the_logic_as_ratios_to_the_baseline(tmp_path: Path) -> None:
    assert main(["bench", "--quick", "--events", "3000", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "bench-quick.json").read_text())
    job, base, ratios = r["job"]["drain"], r["baseline"]["drain"], r["ratios"]
    assert job["events"] == base["events"] == r["logic_only"]["events"] == 3000
    assert_physical(job)
    assert_physical(base)
    assert 200 < job["rss_mb"] < 8000 and 20 < base["rss_mb"] < 4000   # a JVM with its Python; one Python process
    assert ratios["job_drain_to_baseline_drain"] == round(job["events_per_s"] / base["events_per_s"], 3)
    assert ratios["job_cpu_to_baseline_cpu"] == round(job["cpu_s_per_10k"] / base["cpu_s_per_10k"], 3)
    assert abs(ratios["logic_us_to_baseline_us"] - r["logic_only"]["us_per_event"] * base["events_per_s"] / 1e6) < 0.002
    assert "| drain, events/s |" in (tmp_path / "bench-quick.md").read_text()
    assert (tmp_path / "bench-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_bench_layouts_gives_cpu_per_event_for_the_job_the_peer_and_the_baseline(tmp_path: Path) -> None:
    assert main(["bench-layouts", "--layouts", "2x1", "--events", "1000", "15000", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "layouts.json").read_text())
    [row] = r["layouts"]
    assert (row["taskmanagers"], row["slots"], row["parallelism"]) == (2, 1, 2)
    # 14,000 more events cost CPU seconds well above what a start-up and an idle checkpoint wait spend: the
    # marginal CPU is positive for the cluster and the loader (the wall clock is too noisy to assert on).
    cpu = row["cpu_s"]
    assert cpu["15000"]["cluster_cpu_s"] > cpu["1000"]["cluster_cpu_s"] > 0
    assert cpu["15000"]["loader_cpu_s"] > cpu["1000"]["loader_cpu_s"] > 0
    assert abs(row["cpu_s_per_10k"] - row["cluster_cpu_s_per_10k"] - row["loader_cpu_s_per_10k"]) <= 0.02
    assert row["events_per_s"] is None or row["events_per_s"] > 0
    for name in ("peer", "baseline"):
        other = r["others"][name]
        assert other["events"] == 15000 and other["cpu_s_per_10k"] > 0 and other["events_per_s"] > 0, other
    table = (tmp_path / "layouts.md").read_text()
    assert "| job, 2 TaskManager(s) x 1 slot(s) | 2 |" in table and "| peer: Bytewax | 1 |" in table
    assert (tmp_path / "layouts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
