"""`persona evaluate` on a small replay: both AUCs printed, PNG and JSON written, the exact AUC helper checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from operators.model_features import PROPENSITY_CATEGORICAL, PROPENSITY_NUMERIC
from persona.cli import main
from persona.evaluate import auc, encode, fit_logistic


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


@pytest.mark.slow
def test_evaluate_writes_the_plot_and_prints_both_aucs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--records", "12000", "--users", "300", "--seed", "4", "--warm", "0.5",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prequential AUC" in out and "batch logistic regression" in out and "batch trees" in out
    assert "forward (warm on the first 50%" in out
    result = json.loads((tmp_path / "evaluate.json").read_text())
    assert result["examples"] > 1000 and 0 < result["positives"] < result["examples"]
    assert 0.5 < result["prequential_auc"] <= result["batch_hindsight_auc"]
    assert 0.5 < result["batch_trees_auc"] < 1
    # Every AUC with its bootstrap interval; the segments' churn with its sample and the label switching.
    for name, value in (("prequential", result["prequential_auc"]), ("batch_logistic", result["batch_hindsight_auc"])):
        low, high = result["auc_ci95"][name]
        assert low < value < high
    assert result["segments"]["churn_n"] > 0 and 0 <= result["segments"]["churn"] < 1
    assert result["segments"]["label_switching"] is not None
    # The generator's bots against the bot flag: its precision and recall, rule and model apart.
    bots = result["bots"]
    assert bots["bots"] > 0 and {"rule", "model", "either"} <= set(bots)
    # Every bot the generator made is flagged (by the rule here), and no shopper is.
    assert bots["either"] == {"flagged": bots["bots"], "precision": 1.0, "recall": 1.0}
    # Forward mode: the halves add up, and each AUC sits in its interval over the second half.
    fwd = result["forward"]
    assert fwd["warm_examples"] + fwd["forward_examples"] == result["examples"]
    assert fwd["warm_examples"] == result["examples"] // 2
    for name, key in (("forward", "forward_auc"), ("batch_warm", "batch_warm_auc"), ("batch_hindsight", "batch_hindsight_auc")):
        low, high = fwd["auc_ci95"][name]
        assert 0.5 < low < fwd[key] < high
    assert (tmp_path / "evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_fitted_on_the_warm_part_encodes_the_rest_with_what_it_knew_then() -> None:
    n, c = len(PROPENSITY_NUMERIC), len(PROPENSITY_CATEGORICAL)
    warm = [(float(v), *(0.0,) * (n - 1), *("phone",) * c) for v in (1.0, 3.0)]
    rest = [(5.0, *(0.0,) * (n - 1), *("tablet",) * c)]
    X = encode(rest, fit_on=warm)
    assert X[0, 0] == (5.0 - 2.0) / 1.0   # the warm part's mean and deviation
    assert X[0, n:n + c].tolist() == [0.0] * c   # a category first seen after the split: all zeros
    assert X[0, -1] == 1.0


@pytest.mark.slow
def test_evaluate_replays_a_recorded_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file written by `persona generate --out`, then one written by hand in the contract."""
    generated = tmp_path / "generated.jsonl"
    assert main(["generate", "--records", "12000", "--users", "300", "--seed", "4", "--out", str(generated)]) == 0
    assert main(["evaluate", "--events", str(generated), "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "evaluate.json").read_text())
    assert result["source"] == str(generated) and result["records"] == 12_000 and "bots" not in result
    assert result["examples"] > 1000 and 0.5 < result["prequential_auc"]

    # By hand: 60 shoppers, each views a product and adds it to the cart; every third buys it within minutes.
    lines = []
    for u in range(60):
        t = 1_793_620_800_000 + u * 3_600_000
        steps = [("page_view", {"page_type": "product", "product_id": f"p{u}", "category": "toys", "dwell_ms": 30_000}),
                 ("add_to_cart", {"product_id": f"p{u}", "category": "toys", "price": 10, "currency": "EUR",
                                  "quantity": 1})]
        if u % 3 == 0:
            steps.append(("purchase", {"order_id": f"o{u}", "total": 10, "currency": "EUR",
                                       "items": [{"product_id": f"p{u}", "category": "toys", "price": 10, "quantity": 1}]}))
        for i, (kind, payload) in enumerate(steps):
            stamp = datetime.fromtimestamp((t + i * 60_000) / 1000, UTC).isoformat().replace("+00:00", "Z")
            lines.append(json.dumps({"event_id": f"h{u}-{i}", "event_type": kind, "user_id": f"h{u}", "schema_version": 1,
                                     "event_time": stamp, "context": {"device": "mobile"}, "payload": payload}))
    hand = tmp_path / "hand.jsonl"
    hand.write_text("\n".join(lines) + "\n")
    assert main(["evaluate", "--events", str(hand), "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "evaluate.json").read_text())
    assert result["records"] == len(lines) and result["examples"] >= 100 and result["positives"] > 0
    # Too few shoppers for a report: refused with the count, not a traceback; so is a missing file.
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(lines[:12]) + "\n")
    code = main(["evaluate", "--events", str(few), "--out", str(tmp_path / "c")])
    assert code == 2 and "too few labelled examples" in capsys.readouterr().err
    assert main(["evaluate", "--events", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.slow
def test_the_streaming_recommender_meets_issue_26_against_batch_references(tmp_path: Path) -> None:
    """`persona evaluate --recommend` with its defaults: on the planted stream the streaming model's prequential
    HR@20 is at least 0.9 times item-kNN fitted in hindsight and twice popularity; on the control stream it stays
    within popularity's confidence interval (it invents no structure)."""
    assert main(["evaluate", "--recommend", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "recommend.json").read_text())
    planted, control = runs["planted structure"]["models"], runs["control (no structure)"]["models"]
    mine = "streaming co-occurrence (this job)"
    knn, popular = "item-kNN (cosine), in hindsight", "popularity, in hindsight"
    assert planted[mine]["hr@20"] >= 0.9 * planted[knn]["hr@20"]
    assert planted[mine]["hr@20"] >= 2 * planted[popular]["hr@20"]
    low, high = control[popular]["hr@20_ci95"]
    assert low <= control[mine]["hr@20"] <= high
    assert (tmp_path / "recommend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
