"""``persona evaluate``: prequential AUC over a replayed stream vs a batch logistic regression fitted in hindsight.

The prequential AUC scores each example with the model served when it was snapshotted (before any
label of it was known). The batch model sees all examples at once and is scored on the same examples
(in-sample): an upper bound that the online model approaches as it learns.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from operators.model_features import PROPENSITY_CATEGORICAL, PROPENSITY_NUMERIC
from operators.model_scoring import Example
from operators.runner import END_OF_INPUT
from persona.generator.shoppers import bot_users, generate
from persona.replay import Replay
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


def encode(xs: list[tuple], fit_on: list[tuple] | None = None) -> np.ndarray:
    """Standardised numeric features plus one-hot categoricals (packed tuples), as the online model does.

    The means, deviations and categories come from ``fit_on`` (default: ``xs`` itself), so a model fitted on one
    part of a stream encodes the rest with what it knew then: a category first seen later is all zeros.
    """
    n = len(PROPENSITY_NUMERIC)
    ref = xs if fit_on is None else fit_on
    ref_num = np.array([x[:n] for x in ref], dtype=float)
    mean, std = ref_num.mean(0), ref_num.std(0)
    num = (np.array([x[:n] for x in xs], dtype=float) - mean) / np.where(std > 0, std, 1.0)
    cats = []
    for k in range(n, n + len(PROPENSITY_CATEGORICAL)):
        values = sorted({x[k] for x in ref})
        cats.append(np.array([[x[k] == v for v in values] for x in xs], dtype=float))
    return np.hstack([num, *cats, np.ones((len(xs), 1))])


def forward_comparison(xs: list[tuple], scores: np.ndarray, labels: np.ndarray, hindsight_scores: np.ndarray,
                       warm: float) -> dict[str, Any]:
    """``--warm``: the online model learns the first ``warm`` share of the labelled examples (as a backfill over
    history would), then is scored prequentially on the rest. Against two batch logistic regressions scored on
    the same rest: one fitted on the warm part only (the same information at the split), one in hindsight.

    >>> rng = np.random.default_rng(0)
    >>> xs = [(float(v), *(0.0,) * (len(PROPENSITY_NUMERIC) - 1), *("a",) * len(PROPENSITY_CATEGORICAL))
    ...       for v in rng.normal(size=400)]
    >>> labels = np.array([1 if x[0] + rng.normal() > 0 else 0 for x in xs])
    >>> f = forward_comparison(xs, np.array([x[0] for x in xs]), labels, np.array([x[0] for x in xs]), 0.5)
    >>> (f["warm_examples"], f["forward_examples"], f["forward_auc"] == f["batch_hindsight_auc"])
    (200, 200, True)
    """
    k = int(len(labels) * warm)
    rest = slice(k, None)
    w = fit_logistic(encode(xs[:k]), labels[:k])
    warm_scores = encode(xs[k:], fit_on=xs[:k]) @ w
    forward, warm_batch, hindsight = (auc(scores[rest], labels[rest]), auc(warm_scores, labels[rest]),
                                      auc(hindsight_scores[rest], labels[rest]))
    return {"warm_fraction": warm, "warm_examples": k, "forward_examples": len(labels) - k,
            "forward_positives": int(labels[rest].sum()),
            "forward_auc": forward, "batch_warm_auc": warm_batch, "batch_hindsight_auc": hindsight,
            "gap_to_warm": warm_batch - forward, "gap_to_hindsight": hindsight - forward,
            "auc_ci95": {"forward": bootstrap_interval(scores[rest], labels[rest]),
                         "batch_warm": bootstrap_interval(warm_scores, labels[rest]),
                         "batch_hindsight": bootstrap_interval(hindsight_scores[rest], labels[rest])}}


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Newton's method (IRLS) with a small ridge penalty."""
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y) + l2 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        w -= np.linalg.solve(hess, grad)
    return w


def bootstrap_interval(scores: np.ndarray, labels: np.ndarray, rounds: int = 200, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the AUC: examples resampled with replacement, ``rounds`` times."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        i = rng.integers(0, len(scores), len(scores))
        if 0 < labels[i].sum() < len(i):
            values.append(auc(scores[i], labels[i]))
    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def tree_scores(X: np.ndarray, y: np.ndarray, folds: int = 5) -> np.ndarray | None:
    """Out-of-fold probabilities of gradient-boosted trees (scikit-learn, a dev extra): a stronger batch model in
    hindsight, each example scored by trees that did not see it (in-sample, trees would just remember it).
    None when scikit-learn is not installed."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.model_selection import cross_val_predict
    except ImportError:
        return None
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=0)
    return np.asarray(cross_val_predict(model, X, y, cv=folds, method="predict_proba")[:, 1])


def calibration(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error (mean |predicted - observed| over equal-width score bins, weighted by their
    examples) and each bin's figures: does a propensity of 0.3 mean 30% buy?

    >>> c = calibration(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 0]))
    >>> c["ece"], c["bins"][-1]
    (0.25, {'from': 0.9, 'n': 2, 'predicted': 0.9, 'observed': 0.5})
    """
    which = np.minimum((scores * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        n = int(chosen.sum())
        if n:
            predicted, observed = float(scores[chosen].mean()), float(labels[chosen].mean())
            ece += abs(predicted - observed) * n
            table.append({"from": round(b / bins, 3), "n": n, "predicted": round(predicted, 3),
                          "observed": round(observed, 3)})
    return {"ece": round(ece / len(scores), 3), "bins": table}


def bot_quality(flags: dict[str, str | None], bots: set[str], users: set[str],
                model_verdicts: set[str] | None = None) -> dict[str, Any]:
    """Precision and recall of the bot flag against the generator's own bots: by the rule, by the model where the
    rule had not flagged, either, and the model's own verdicts whatever the rule said (``model_alone``).

    >>> q = bot_quality({"a": "rule", "b": "model", "c": None, "d": "model"}, {"a", "b", "c"}, {"a", "b", "c", "d"},
    ...                 model_verdicts={"a", "b", "d"})
    >>> q["either"]["precision"], q["either"]["recall"], q["rule"]["recall"], q["model_alone"]["recall"]
    (0.667, 0.667, 0.333, 0.667)
    """
    out: dict[str, Any] = {"bots": len(bots & users), "users": len(users)}
    chosen_sets = {name: {u for u, by in flags.items() if by in chosen}
                   for name, chosen in (("rule", {"rule"}), ("model", {"model"}), ("either", {"rule", "model"}))}
    if model_verdicts is not None:
        chosen_sets["model_alone"] = model_verdicts & users
    for name, flagged in chosen_sets.items():
        hit = len(flagged & bots)
        out[name] = {"flagged": len(flagged), "precision": round(hit / len(flagged), 3) if flagged else None,
                     "recall": round(hit / len(bots & users), 3) if bots & users else None}
    return out


# The noisier stream (``persona evaluate --noisy``): a third of product views say nothing of intent, dwell
# times vary twice as much, the signal fades by half over the span, and buying swings by 60% over the day.
NOISY: dict[str, Any] = {"signal_strength": 0.65, "dwell_noise": 0.6, "drift": 0.5, "seasonality": 0.6}


def _records(events: Path | None, records: int, users: int, seed: int, generator: dict[str, Any] | None = None
             ) -> tuple[Iterable[bytes], set[str] | None]:
    """The stream to replay, and the generator's bots when it is generated (a recorded file has no labels)."""
    if events is not None:
        from persona.dry_run import read_lines
        return read_lines(events), None
    gen = load_generator_settings({"users": users, "seed": seed, "span_hours": 96, **(generator or {})})
    return (rec.value for rec in generate(gen, max_records=records)), bot_users(gen)


def run_evaluation(records: int, users: int, seed: int, out: Path, events: Path | None = None,
                   generator: dict[str, Any] | None = None, warm: float | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    examples: list[Example] = []
    replay = Replay(load_job_settings(), on_example=lambda ex: examples.append(ex) if ex.model == "propensity" else None)
    stream, bots = _records(events, records, users, seed, generator)
    t0 = time.monotonic()
    n = 0
    for n, raw in enumerate(stream, 1):
        replay.process(raw)
        if n % 10_000 == 0:
            print(f"  replayed {n:,} records, {len(examples):,} labelled examples "
                  f"({n / (time.monotonic() - t0):,.0f} records/s)", flush=True)
    replay.advance(END_OF_INPUT)   # the last label windows close
    source = str(events) if events is not None else f"generated: {records:,} records, {users:,} users, seed {seed}" + (
        "; " + ", ".join(f"{k}={v}" for k, v in sorted(generator.items())) if generator else "")
    if len(examples) < 100 or len({e.label for e in examples}) < 2:
        print(f"persona evaluate: error: too few labelled examples ({len(examples)}) in {source}", file=sys.stderr)
        return 2
    scores = np.array([e.score for e in examples])
    labels = np.array([1 if e.label else 0 for e in examples])
    prequential = auc(scores, labels)
    X = encode([e.x for e in examples])
    batch_scores = X @ fit_logistic(X, labels)
    hindsight = auc(batch_scores, labels)
    trees = tree_scores(X, labels)
    tree_auc = auc(trees, labels) if trees is not None else None
    checkpoints = list(range(500, len(examples) + 1, max(len(examples) // 60, 1))) or [len(examples)]
    window = 2_000
    recent = [auc(scores[max(0, k - window):k], labels[max(0, k - window):k]) for k in checkpoints]
    trainer = replay.trainers["propensity"]
    intervals = {"prequential": bootstrap_interval(scores, labels), "batch_logistic": bootstrap_interval(batch_scores, labels)}
    if trees is not None:
        intervals["batch_trees"] = bootstrap_interval(trees, labels)
    segments = replay.trainers.get("segments")
    result: dict[str, Any] = {
        "source": source, "records": n, "examples": len(examples), "positives": int(labels.sum()),
        "prequential_auc": prequential, "prequential_auc_last_2000": recent[-1], "batch_hindsight_auc": hindsight,
        "gap": hindsight - prequential, "batch_trees_auc": tree_auc,
        "gap_trees": None if tree_auc is None else tree_auc - prequential,
        "online_log_loss": trainer.metric_values()["log_loss"], "users": users, "seed": seed,
        "drift": {k: trainer.metric_values()[k] for k in ("drifts", "drift_at_examples", "loss_window")},
        "auc_ci95": intervals, "calibration": calibration(scores, labels),
        "segments": {k: segments.metric_values()[k] for k in ("churn", "churn_n", "label_switching", "silhouette")}
        if segments is not None and segments.examples else None}
    xs = [e.x for e in examples]
    if warm is not None:
        result["forward"] = forward_comparison(xs, scores, labels, batch_scores, warm)
    if bots is not None:
        flags = {u: s.models.bot_by if s.models.bot else None for u, s in replay.states.items()}
        judged = {u for u, s in replay.states.items() if s.models.model_judged_bot}
        result["bots"] = bot_quality(flags, bots, set(replay.states), judged)
    (out / "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # Each model's AUC over the examples seen so far, in stream order: the batch models' curves are what a model
    # fitted on the whole stream in hindsight scores on the same prefix.
    for values, label, style in ((scores, "prequential (River, online)", "-"),
                                 (batch_scores, f"batch logistic regression in hindsight ({hindsight:.3f})", "--"),
                                 (trees, f"batch gradient-boosted trees, out-of-fold ({tree_auc or 0:.3f})", "-.")):
        if values is not None:
            ax.plot(checkpoints, [auc(values[:k], labels[:k]) for k in checkpoints], style, label=label)
    ax.plot(checkpoints, recent, label=f"prequential (last {window:,} examples)", alpha=0.6)
    title = f"Purchase propensity: online vs batch in hindsight\n{source.replace('; ', chr(10))}"
    if warm is not None:
        f = result["forward"]
        ax.axvline(f["warm_examples"], color="gray", linewidth=0.8, linestyle=":", label="end of the warm part")
        title += (f"\nafter the warm part: online {f['forward_auc']:.3f}, batch fitted on the warm part "
                  f"{f['batch_warm_auc']:.3f}, batch in hindsight {f['batch_hindsight_auc']:.3f}")
    ax.set_xlabel("labelled examples (stream order)")
    ax.set_ylabel("ROC AUC (cumulative)")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "evaluate.png", dpi=110)
    trees_text = "not installed (scikit-learn, dev extra)" if tree_auc is None else f"{tree_auc:.3f}"
    ci = intervals
    print(f"prequential AUC {prequential:.3f} {list(ci['prequential'])} (last {window:,}: {recent[-1]:.3f}); batch "
          f"logistic regression {hindsight:.3f} {list(ci['batch_logistic'])} (gap {hindsight - prequential:+.3f}); "
          f"batch trees {trees_text}" + (f" {list(ci['batch_trees'])}" if "batch_trees" in ci else "")
          + f"; over {len(examples):,} examples ({int(labels.sum()):,} bought)")
    if warm is not None:
        f = result["forward"]
        print(f"forward (warm on the first {warm:.0%}: {f['warm_examples']:,} examples; scored on the other "
              f"{f['forward_examples']:,}): online {f['forward_auc']:.3f} {list(f['auc_ci95']['forward'])}; batch "
              f"fitted on the warm part {f['batch_warm_auc']:.3f} {list(f['auc_ci95']['batch_warm'])} (gap "
              f"{f['gap_to_warm']:+.3f}); batch in hindsight {f['batch_hindsight_auc']:.3f} (gap "
              f"{f['gap_to_hindsight']:+.3f})")
    d = result["drift"]
    print(f"drift of the online model's loss (ADWIN): {d['drifts']:.0f} detected"
          + (f", the last at example {d['drift_at_examples']:,.0f}" if d["drifts"] else "")
          + f"; log loss over its window {d['loss_window']:.3f}")
    cal = result["calibration"]
    top = cal["bins"][-1]
    print(f"calibration of the online model: ECE {cal['ece']:.3f}; scores from {top['from']}: predicted "
          f"{top['predicted']:.3f}, observed {top['observed']:.3f} (n={top['n']:,})")
    if result["segments"]:
        seg = result["segments"]
        print(f"segments: user churn {seg['churn']:.3f} per session end (n={seg['churn_n']:,.0f}), label switching "
              f"{seg['label_switching']:.3f}, silhouette {seg['silhouette']:.3f}")
    if "bots" in result:
        b = result["bots"]
        print(f"bot flag vs the generator's {b['bots']} bots: " + "; ".join(
            f"{k} precision {b[k]['precision']} recall {b[k]['recall']}"
            for k in ("rule", "model", "either", "model_alone") if k in b))
    print(f"wrote {out / 'evaluate.png'} and {out / 'evaluate.json'}")
    if math.isnan(prequential):
        return 1
    return 0
