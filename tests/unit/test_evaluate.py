"""`persona evaluate` on a small replay: both AUCs printed, PNG and JSON written, the exact AUC helper checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate import auc, fit_logistic
from persona.cli import main


def test_rank_auc_counts_ties_as_half() -> None:
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0


def test_batch_logistic_regression_recovers_a_separable_rule() -> None:
    rng = np.random.default_rng(1)
    X = np.hstack([rng.normal(size=(400, 2)), np.ones((400, 1))])
    y = (X[:, 0] - X[:, 1] > 0).astype(float)
    w = fit_logistic(X, y)
    assert w[0] > 0 > w[1] and auc(X @ w, y) > 0.99


def test_evaluate_writes_the_plot_and_prints_both_aucs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--records", "12000", "--users", "300", "--seed", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prequential AUC" in out and "batch hindsight AUC" in out
    result = json.loads((tmp_path / "evaluate.json").read_text())
    assert result["examples"] > 1000 and 0 < result["positives"] < result["examples"]
    assert 0.5 < result["prequential_auc"] <= result["batch_hindsight_auc"]
    assert (tmp_path / "evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
