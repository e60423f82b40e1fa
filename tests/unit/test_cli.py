"""CLI misuse gives a usage message and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.job_cli import parse_job_args
from persona.cli import main


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["services"], ["services", "sideways"],
                                  ["generate", "--records", "-5"], ["generate", "--records", "many"],
                                  ["cluster"], ["profile"], ["bench-layouts", "--layouts", "2y1"],
                                  ["bench-layouts", "--layouts", "0x1"], ["bench-layouts", "--events", "40000", "10000"],
                                  ["bench-layouts", "--events", "0", "10"],
                                  ["evaluate", "--warm", "1.5"], ["evaluate", "--warm", "x"],
                                  ["evaluate", "--recommend", "--warm", "0.5"],
                                  ["backfill", "--history-until", "yesterday"], ["backfill", "--frobnicate"]])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: persona") and "Traceback" not in err


def test_config_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERSONA_KAFKA_PORT", "99999")
    assert main(["services", "status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona services: error:") and "kafka.port" in err and "\n" not in err


def test_job_rejects_bad_override_with_usage_style_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_job_args("event_counter", "test", ["--set", "redis.flush_interval_ms=0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "redis.flush_interval_ms" in err and "Traceback" not in err


def test_generate_to_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "events.jsonl"
    assert main(["generate", "--records", "300", "--users", "20", "--out", str(out)]) == 0
    assert len(out.read_bytes().splitlines()) == 300
    assert '"valid"' in capsys.readouterr().out


def test_allow_non_restored_state_needs_a_savepoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "submit", "--allow-non-restored-state"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--allow-non-restored-state needs --from-savepoint" in err and "\n" not in err


def test_a_bounded_run_from_a_savepoint_and_a_missing_history_file_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--bounded", "--from-savepoint", "file:/x"]) == 2
    assert main(["backfill", "--events", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--bounded and --from-savepoint exclude each other" in err[0] and "no such file" in err[1]


def test_cluster_stop_without_a_savepoint_dir_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "stop", "0123"])
    assert exit_info.value.code == 2 and "--savepoint" in capsys.readouterr().err


def test_library_logs_go_to_the_log_file_and_ours_to_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from persona.cli import _setup_logging
    from persona.settings import load_stack_settings

    root = logging.getLogger()
    before = list(root.handlers)
    handler = _setup_logging()
    try:
        logging.getLogger("kafka.cluster").error("Topic t not found in cluster metadata")
        logging.getLogger("persona.loader").warning("the loader says so")
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
        if handler is not None:
            handler.close()
    err = capsys.readouterr().err
    assert "the loader says so" in err and "cluster metadata" not in err
    text = (load_stack_settings().run_path / "logs" / "persona-cli.log").read_text()
    assert "Topic t not found in cluster metadata" in text


@pytest.mark.parametrize("argv, says", [
    (["backfill", "--to", "2026-01-01T00:00:00Z"], "--to goes with --events"),
    (["backfill", "--events", "x.jsonl", "--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
     "--from must be before --to"),
    (["profile", "u1", "--from", "2026-01-01T00:00:00Z"], "--from and --to go with --history"),
    (["profile", "u1", "--at", "yesterday"], "is neither epoch milliseconds nor an ISO 8601 time"),
    (["export-training", "--horizon", "30", "--out", "x.jsonl"], "is not a duration"),
])
def test_history_options_misused_print_usage(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and "usage:" in err and "Traceback" not in err


def test_the_live_command_after_a_dry_run_backfill_drops_the_dry_run_sink() -> None:
    from persona.backfill import live_command
    command = live_command("file:/sp", 5, ["kafka.group_id=shop", "history.dry_run_topic=dry",
                                           "kafka.starting_offsets=timestamp"], drops_sinks=True)
    assert command == ("persona run --from-savepoint file:/sp --allow-non-restored-state "
                       "--set history.triggers_before_ms=5 --set kafka.group_id=shop")
