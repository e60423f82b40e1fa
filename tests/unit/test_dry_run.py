"""`persona rules dry-run` over a recorded file: the report, the table, the PNG (no Kafka needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persona.cli import main
from persona.generator.shoppers import generate
from persona.generator.sink import write_lines
from persona.settings import CONF_DIR, load_generator_settings


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dry") / "events.jsonl"
    write_lines(generate(load_generator_settings({"users": 80, "seed": 3}), max_records=2_500), path)
    return path


def run(tmp_path: Path, events: Path, patterns: dict) -> dict:  # type: ignore[type-arg]
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(patterns))
    assert main(["rules", "dry-run", str(candidate), "--events", str(events), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dry-run.png").stat().st_size > 10_000
    return json.loads((tmp_path / "dry-run.json").read_text())


def test_the_live_rules_as_candidate_differ_in_nothing(tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run(tmp_path, events, yaml.safe_load((CONF_DIR / "patterns.yaml").read_text()))
    assert doc["records"] == 2_500
    sent = {p: d["live"]["triggers"] for p, d in doc["patterns"].items()}
    assert sent["cart_abandonment"] > 0
    for d in doc["patterns"].values():
        assert d["candidate"] == d["live"] and d["only_candidate"] == d["only_live"] == 0
    assert "cart_abandonment" in capsys.readouterr().out


def test_a_removed_pattern_shows_as_triggers_only_live(tmp_path: Path, events: Path) -> None:
    patterns = yaml.safe_load((CONF_DIR / "patterns.yaml").read_text())
    del patterns["patterns"]["loyalty"]
    doc = run(tmp_path, events, patterns)
    loyalty = doc["patterns"]["loyalty"]
    assert loyalty["candidate"]["triggers"] == 0 and loyalty["only_live"] == loyalty["live"]["triggers"] > 0


def test_a_broken_candidate_is_refused_with_its_key(tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patterns = yaml.safe_load((CONF_DIR / "patterns.yaml").read_text())
    patterns["patterns"]["cart_abandonment"]["within"] = "soon"
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(patterns))
    assert main(["rules", "dry-run", str(candidate), "--events", str(events), "--out", str(tmp_path)]) == 2
    assert "patterns.cart_abandonment.within" in capsys.readouterr().err
