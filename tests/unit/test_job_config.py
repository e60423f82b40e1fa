"""The personalization job refuses bad configuration at start-up, with one line naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.personalization import main
from persona.settings import CONF_DIR


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("personalization: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_pattern_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "patterns.yaml"
    bad.write_text((CONF_DIR / "patterns.yaml").read_text().replace("profile.rfm.frequency_30d", "profile.rfm.frequency_31d"))
    err = _refused(["--set", f"patterns_file={bad}"], capsys)
    assert "patterns.loyalty.when.profile.rfm.frequency_31d: unknown profile field" in err


def test_negative_window(capsys: pytest.CaptureFixture[str]) -> None:
    assert "profile.session_gap_ms" in _refused(["--set", "profile.session_gap_ms=-5"], capsys)


def test_absence_within_must_exceed_allowed_lateness(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["--set", "profile.allowed_lateness_ms=1800000"], capsys)
    assert "patterns.cart_abandonment.within must exceed profile.allowed_lateness_ms" in err


def test_missing_patterns_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "file not found" in _refused(["--set", f"patterns_file={tmp_path / 'none.yaml'}"], capsys)


def test_the_mini_cluster_heap_is_capped_and_the_users_options_come_last() -> None:
    from jobs.runtime import mini_cluster_jvm_args
    from persona.settings import load_job_settings

    assert mini_cluster_jvm_args(load_job_settings().flink) == "-Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    assert mini_cluster_jvm_args(load_job_settings({"flink.local_heap_mb": "0", "flink.local_jit": "tiered",
                                                    "flink.local_gc": "g1"}).flink, "-Da=1") == "-Da=1"
    # The JVM takes the last of an option: an explicit one in flink.jvm_args overrides the cap, the JIT and the
    # collector (a second collector option is refused by the JVM, so a user's -XX:+UseG1GC needs local_gc: g1).
    assert mini_cluster_jvm_args(load_job_settings({"flink.local_heap_mb": "300", "flink.jvm_args": "-Xmx1g -Dz"}).flink,
                                 "-Dy") == "-Dy -Xmx300m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx1g -Dz"


def test_the_sinks_of_whole_states_compress_and_the_others_do_not() -> None:
    """The changelog's and the history's records are whole user states (docs/performance.md, the round "the
    changelog compressed"); triggers, dead letters and the audit are small and read by other teams' consumers."""
    from jobs.kafka_io import sink_options
    from jobs.personalization import ROUTES, SINK_COMPRESSION
    from persona.settings import load_job_settings

    kafka = load_job_settings().kafka
    compressed = {name for name in ROUTES
                  if sink_options(kafka, f"{name}_sink", "t", compression=SINK_COMPRESSION.get(name))
                  .get("properties.compression.type") == "lz4"}
    assert compressed == {"changes", "history"}
    plain = sink_options(kafka, "trigger_sink", "shop.triggers", exactly_once=True)
    assert "properties.compression.type" not in plain
    assert plain["sink.transactional-id-prefix"] == "persona-job.trigger_sink"
    assert plain["properties.linger.ms"] == "20" and plain["key.format"] == "raw"


def test_a_heap_too_small_for_the_mini_cluster_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "flink.local_heap_mb" in _refused(["--set", "flink.local_heap_mb=64"], capsys)


def test_an_unknown_jit_is_refused_with_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert "flink.local_jit" in _refused(["--set", "flink.local_jit=c2"], capsys)


def test_an_unknown_collector_is_refused_with_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert "flink.local_gc" in _refused(["--set", "flink.local_gc=zgc"], capsys)


def test_thread_mode_starts_no_loopback_worker_pool_in_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """In thread mode the driver skips PyFlink's Beam loopback pool (~133 MB of imports); process mode keeps it."""
    from jobs.runtime import _prepare_process
    from persona.settings import load_job_settings

    monkeypatch.setenv("_python_worker_execution_mode", "")   # recorded, so that the test's end restores it
    monkeypatch.delenv("_python_worker_execution_mode")
    monkeypatch.setenv("FLINK_LOG_DIR", "/tmp")
    for name in ("JVM_ARGS", "MALLOC_ARENA_MAX", "PATH"):   # set by _prepare_process: restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    _prepare_process(load_job_settings({"flink.execution_mode": "process"}).flink, "local", None)
    assert "_python_worker_execution_mode" not in os.environ
    _prepare_process(load_job_settings().flink, "local", None)
    assert os.environ["_python_worker_execution_mode"] == "process"
