"""``persona evaluate``: prequential AUC over a replayed stream vs a batch logistic regression fitted in hindsight.

The prequential AUC scores each example with the model served when it was snapshotted (before any
label of it was known). The batch model sees all examples at once and is scored on the same examples
(in-sample): an upper bound that the online model approaches as it learns.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib
import numpy as np

from bench.replay import Replay
from operators.model_features import PROPENSITY_CATEGORICAL, PROPENSITY_NUMERIC
from operators.model_scoring import Example
from persona.generator.shoppers import generate
from persona.settings import load_generator_settings, load_job_settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC by ranks (ties count one half).

    >>> auc(np.array([0.9, 0.8, 0.3, 0.85]), np.array([1, 1, 0, 0]))
    0.75
    """
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], labels[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def encode(xs: list[tuple]) -> np.ndarray:
    """Standardised numeric features plus one-hot categoricals (packed tuples), as the online model does."""
    n = len(PROPENSITY_NUMERIC)
    num = np.array([x[:n] for x in xs], dtype=float)
    num = (num - num.mean(0)) / np.where(num.std(0) > 0, num.std(0), 1.0)
    cats = []
    for k in range(n, n + len(PROPENSITY_CATEGORICAL)):
        values = sorted({x[k] for x in xs})
        cats.append(np.array([[x[k] == v for v in values] for x in xs], dtype=float))
    return np.hstack([num, *cats, np.ones((len(xs), 1))])


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Newton's method (IRLS) with a small ridge penalty."""
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y) + l2 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        w -= np.linalg.solve(hess, grad)
    return w


def run_evaluation(records: int, users: int, seed: int, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    examples: list[Example] = []
    replay = Replay(load_job_settings(), on_example=lambda ex: examples.append(ex) if ex.model == "propensity" else None)
    gen = load_generator_settings({"users": users, "seed": seed, "span_hours": 96})
    t0 = time.monotonic()
    for i, rec in enumerate(generate(gen, max_records=records), 1):
        replay.process(rec.value)
        if i % 10_000 == 0:
            print(f"  replayed {i:,}/{records:,} records, {len(examples):,} labelled examples "
                  f"({i / (time.monotonic() - t0):,.0f} records/s)", flush=True)
    if len(examples) < 100 or len({e.label for e in examples}) < 2:
        print("persona evaluate: error: too few labelled examples; use more --records")
        return 2
    scores = np.array([e.score for e in examples])
    labels = np.array([1 if e.label else 0 for e in examples])
    prequential = auc(scores, labels)
    X = encode([e.x for e in examples])
    batch_scores = X @ fit_logistic(X, labels)
    hindsight = auc(batch_scores, labels)
    checkpoints = list(range(500, len(examples) + 1, max(len(examples) // 60, 1)))
    cumulative = [auc(scores[:n], labels[:n]) for n in checkpoints]
    window = 2_000
    recent = [auc(scores[max(0, n - window):n], labels[max(0, n - window):n]) for n in checkpoints]
    trainer = replay.trainers["propensity"]
    result = {"examples": len(examples), "positives": int(labels.sum()), "prequential_auc": prequential,
              "prequential_auc_last_2000": recent[-1], "batch_hindsight_auc": hindsight, "gap": hindsight - prequential,
              "online_log_loss": trainer.metric_values()["log_loss"], "records": records, "users": users, "seed": seed}
    (out / "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(checkpoints, cumulative, label="prequential AUC (cumulative)")
    ax.plot(checkpoints, recent, label=f"prequential AUC (last {window:,} examples)", alpha=0.7)
    ax.axhline(hindsight, color="black", linestyle="--", label=f"batch logistic regression in hindsight ({hindsight:.3f})")
    ax.set_xlabel("labelled examples (stream order)")
    ax.set_ylabel("ROC AUC")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(f"Purchase propensity: online (River) vs batch hindsight, {records:,} events, seed {seed}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "evaluate.png", dpi=110)
    print(f"prequential AUC {prequential:.3f} (last {window:,}: {recent[-1]:.3f}); batch hindsight AUC {hindsight:.3f}; "
          f"gap {hindsight - prequential:+.3f} over {len(examples):,} examples")
    print(f"wrote {out / 'evaluate.png'} and {out / 'evaluate.json'}")
    if math.isnan(prequential):
        return 1
    return 0
