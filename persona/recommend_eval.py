"""``persona evaluate --recommend``: next-item prediction, prequentially, against batch recommenders in hindsight.

Before each product view, the streaming recommender (the job's own code: ``operators.co_occurrence`` and
``operators.recommendations``) gives the user's list as of that moment; then it learns the event. A view is a hit
at k when the viewed product is in the first k. The batch references are fitted on the whole stream in hindsight
and asked at the same moments, with the same recent items and the same exclusions:

- item-kNN: cosine of the user-item matrix (each user's highest weight per item), as in Sarwar et al. 2001;
- popularity: the items with the most weight over the whole stream.

- matrix factorisation: ``implicit``'s ALS on the same matrix (Hu, Koren and Volinsky 2008), the user's factors
  folded in from the same recent items at each moment (``AlsReference``; a dev extra: skipped with a note when it
  is not installed).

All leave out the asking user's own row (``BatchReference``; ALS by folds of users).

Intervals are 95% bootstrap intervals over users (a user's views are not independent of each other).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from operators.co_occurrence import RecommendRules, Touch, fold_signal, remember, touches
from operators.events import Event
from operators.recommendations import PopularItems, never_listed, newest_touch, personal_list, say_of
from operators.validation import parse_event
from persona.generator.items import CONTROL, PLANTED
from persona.rules import input_limits, recommend_rules
from persona.settings import load_generator_settings, load_job_settings
from state.item_state import ItemNeighbours, RecentItems

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

CUTOFFS = (10, 20)



@dataclass(frozen=True, slots=True)
class Decision:
    """One moment of truth: what the user had just done, and what they viewed next."""

    user: str
    target: str
    now: int
    anchors: tuple[tuple[str, float], ...]   # recent items and their say in the list (weight and recency)
    exclude: frozenset[str]


class InlineRecommender:
    """The recommender in one process: per-user windows, per-item states and popularity, as the job keeps them."""

    def __init__(self, rules: RecommendRules) -> None:
        self.rules = rules
        self.recent: dict[str, RecentItems] = {}
        self.carts: dict[str, set[str]] = {}
        self.table: dict[str, ItemNeighbours] = {}
        self.popular = PopularItems(rules)

    def decision(self, user: str, target: str, now: int) -> tuple[Decision, list[str]]:
        """The moment before ``user`` views ``target``: what the references are given, and this model's list."""
        recent = self.recent.get(user, RecentItems())
        exclude = never_listed(recent, self.carts.get(user, set()), self.rules)
        listed = personal_list(recent, self.table, self.popular, exclude, now, self.rules)
        newest = newest_touch(recent, now)
        anchors = tuple((r.item, say_of(r, newest, self.rules)) for r in recent.items)
        return Decision(user, target, now, anchors, frozenset(exclude)), [item for item, _ in listed]

    def learn(self, event: Event, event_touches: list[Touch]) -> None:
        user, p = event.user_id, event.payload
        cart = self.carts.setdefault(user, set())
        if event.event_type == "add_to_cart":
            cart.add(p["product_id"])
        elif event.event_type == "remove_from_cart":
            cart.discard(p["product_id"])
        elif event.event_type == "purchase":
            cart.clear()
        elif event.event_type == "erasure_request":
            self.recent.pop(user, None)
            self.carts.pop(user, None)
            return
        recent = self.recent.setdefault(user, RecentItems())
        for touch in event_touches:
            for signal in remember(recent, touch, self.rules):
                fold_signal(self.table.setdefault(signal.item, ItemNeighbours(signal.item)), signal, self.rules)
                self.popular.add(signal)


def replay(stream: Iterable[bytes], rules: RecommendRules, limits: Any) -> tuple[list[Decision], list[int], dict[str, dict[str, float]]]:
    """Prequential pass: the streaming recommender's rank of each viewed product (0 = missed), the decisions,
    and each user's highest weight per item over the whole stream (the batch references' matrix)."""
    model = InlineRecommender(rules)
    decisions: list[Decision] = []
    ranks: list[int] = []
    matrix: dict[str, dict[str, float]] = {}
    t0, n = time.monotonic(), 0
    for n, raw in enumerate(stream, 1):
        event = parse_event(raw, limits)
        if not isinstance(event, Event):
            continue
        event_touches = touches(event.event_type, event.payload, event.event_time_ms, rules)
        if event.event_type == "page_view" and event_touches:     # a product view: a moment of truth
            target = event_touches[0].item
            decision, listed = model.decision(event.user_id, target, event.event_time_ms)
            decisions.append(decision)
            ranks.append(listed.index(target) + 1 if target in listed else 0)
        for touch in event_touches:
            row = matrix.setdefault(event.user_id, {})
            row[touch.item] = max(row.get(touch.item, 0.0), touch.weight)
        model.learn(event, event_touches)
        if n % 20_000 == 0:
            print(f"  replayed {n:,} records, {len(decisions):,} product views ({n / (time.monotonic() - t0):,.0f} records/s)",
                  flush=True)
    return decisions, ranks, matrix


class BatchReference:
    """A recommender fitted on the whole stream in hindsight, leaving out the user it is asked about.

    It knows every other user's whole history, future included, but not the asking user's own future: with it,
    an item-item similarity would find the user's next view through the user's own row (each item of the control
    stream is seen by a handful of users, so that leak alone scores well where there is nothing to learn).
    """

    def __init__(self, name: str, items: list[str], users: dict[str, int], matrix: np.ndarray, kind: str) -> None:
        self.name, self.items, self.users, self.m, self.kind = name, items, users, matrix, kind
        self.index = {item: i for i, item in enumerate(items)}
        self.co = matrix.T @ matrix if kind == "item-knn" else None
        self.popularity = matrix.sum(axis=0)

    def rank(self, d: Decision, k: int) -> int:
        own = self.m[self.users[d.user]]
        popularity = self.popularity - own
        if self.co is None:
            scores = popularity.astype(float)
        else:
            norms = np.sqrt(np.maximum(np.diag(self.co) - own * own, 0.0))
            scores = 1e-9 * popularity / max(float(popularity.max()), 1.0)   # ties and users with no history
            for item, say in d.anchors:
                j = self.index.get(item)
                if j is not None and norms[j] > 0:
                    co = self.co[j] - own[j] * own
                    scores = scores + say * co / (norms[j] * np.where(norms > 0, norms, 1.0))
        return _rank_of(scores, d, self.items, self.index, k)


def reference_matrix(matrix: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, int], np.ndarray]:
    """The users x items matrix of each user's highest weight per item, with its item and user indexes."""
    items = sorted({item for row in matrix.values() for item in row})
    index = {item: i for i, item in enumerate(items)}
    users = {user: u for u, user in enumerate(sorted(matrix))}
    m = np.zeros((len(users), len(items)), dtype=np.float64)
    for user, u in users.items():
        for item, weight in matrix[user].items():
            m[u, index[item]] = weight
    return items, users, m


def fit_references(matrix: dict[str, dict[str, float]]) -> list[BatchReference]:
    """Item-kNN (cosine) and popularity, fitted on the whole stream (each user's highest weight per item)."""
    items, users, m = reference_matrix(matrix)
    return [BatchReference("item-kNN (cosine), in hindsight", items, users, m, "item-knn"),
            BatchReference("popularity, in hindsight", items, users, m, "popularity")]


class AlsReference:
    """Implicit-feedback ALS fitted in hindsight, ``folds`` times, each time without one fold of users: a decision is
    ranked by the model that never saw its user, whose factors are folded in from the decision's recent items
    (weighted by their say, as the streaming list weighs them), and the same exclusions."""

    name = "matrix factorisation (implicit ALS), in hindsight"

    def __init__(self, items: list[str], users: dict[str, int], matrix: np.ndarray, folds: int = 5, factors: int = 64,
                 regularization: float = 0.05, iterations: int = 15, seed: int = 0) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        self.items, self.index = items, {item: i for i, item in enumerate(items)}
        self.fold_of = {user: u % folds for user, u in users.items()}
        self.models = []
        for f in range(folds):
            keep = np.array([u % folds != f for u in range(matrix.shape[0])])
            with threadpool_limits(1, "blas"):   # implicit's advice: BLAS threads under its own slow it down
                model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=iterations,
                                                random_state=seed, num_threads=1)
                model.fit(csr_matrix(matrix[keep]), show_progress=False)
            self.models.append(model)

    def ranks(self, decisions: list[Decision], k: int) -> list[int]:
        from scipy.sparse import csr_matrix

        out = [0] * len(decisions)
        by_fold: dict[int, list[int]] = {}
        for i, d in enumerate(decisions):
            by_fold.setdefault(self.fold_of[d.user], []).append(i)
        for f, chosen in by_fold.items():
            model = self.models[f]
            for start in range(0, len(chosen), 2_000):   # decisions x items scores, a block at a time
                block = chosen[start:start + 2_000]
                rows, cols, vals = [], [], []
                for r, i in enumerate(block):
                    for item, say in decisions[i].anchors:
                        if item in self.index:
                            rows.append(r)
                            cols.append(self.index[item])
                            vals.append(say)
                liked = csr_matrix((vals, (rows, cols)), shape=(len(block), len(self.items)), dtype=np.float32)
                factors = model.recalculate_user(np.arange(len(block)), liked)
                scores = np.asarray(factors @ model.item_factors.T, dtype=np.float64)
                for r, i in enumerate(block):
                    out[i] = _rank_of(scores[r], decisions[i], self.items, self.index, k)
        return out


def _rank_of(scores: np.ndarray, d: Decision, items: list[str], index: dict[str, int], k: int) -> int:
    """The target's place in the top ``k`` of ``scores`` after the decision's exclusions (0: not there), ties by id."""
    for item in d.exclude:
        if item in index:
            scores[index[item]] = -np.inf
    top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
    ordered = sorted(top, key=lambda i: (-scores[i], items[i]))
    listed = [items[i] for i in ordered if scores[i] > -np.inf]
    return listed.index(d.target) + 1 if d.target in listed else 0


def hit_rates(ranks: np.ndarray, users: np.ndarray, rounds: int = 200, seed: int = 0) -> dict[str, Any]:
    """HR@10, HR@20 and MRR@20 with 95% bootstrap intervals over users.

    >>> r = hit_rates(np.array([1, 0, 12, 3]), np.array(["a", "a", "b", "b"]), rounds=20)
    >>> r["hr@10"], r["hr@20"], r["mrr@20"]
    (0.5, 0.75, 0.3542)
    """
    values = {f"hr@{k}": ((ranks > 0) & (ranks <= k)).astype(float) for k in CUTOFFS}
    values["mrr@20"] = np.where((ranks > 0) & (ranks <= 20), 1.0 / np.maximum(ranks, 1), 0.0)
    keys, inverse = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    sums = {name: np.bincount(inverse, weights=v, minlength=len(keys)) for name, v in values.items()}
    counts = np.bincount(inverse, minlength=len(keys)).astype(float)
    out: dict[str, Any] = {}
    samples = [rng.integers(0, len(keys), len(keys)) for _ in range(rounds)]
    for name, v in values.items():
        boot = [sums[name][s].sum() / counts[s].sum() for s in samples]
        out[name] = round(float(v.mean()), 4)
        out[f"{name}_ci95"] = [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])]
    return out


def evaluate_stream(stream: Iterable[bytes], rules: RecommendRules, limits: Any) -> dict[str, Any]:
    decisions, streaming_ranks, matrix = replay(stream, rules, limits)
    users = np.array([d.user for d in decisions])
    results = {"streaming co-occurrence (this job)": hit_rates(np.array(streaming_ranks), users)}
    for reference in fit_references(matrix):
        results[reference.name] = hit_rates(np.array([reference.rank(d, 20) for d in decisions]), users)
    try:
        als = AlsReference(*reference_matrix(matrix))
    except ImportError:
        print("  (implicit is not installed: no matrix-factorisation reference; it is in the dev extras)", flush=True)
    else:
        results[als.name] = hit_rates(np.array(als.ranks(decisions, 20)), users)
    return {"product_views": len(decisions), "users": len(set(users.tolist())), "items": len({i for r in matrix.values() for i in r}),
            "models": results}


def run_recommend_evaluation(records: int, users: int, seed: int, out: Path, events: Path | None = None,
                             generator: dict[str, Any] | None = None, control: bool = True) -> int:
    """The structured stream (or ``events``), and the control stream unless told not to; a JSON and a PNG."""
    out.mkdir(parents=True, exist_ok=True)
    settings = load_job_settings()
    rules, limits = recommend_rules(settings), input_limits(settings)
    runs: dict[str, dict[str, Any]] = {}
    streams: list[tuple[str, dict[str, Any] | None]] = [("planted structure", {**PLANTED, **(generator or {})})]
    if events is None and control:
        streams.append(("control (no structure)", {**(generator or {}), **CONTROL}))
    for name, overrides in streams:
        print(f"{name}:", flush=True)
        runs[name] = evaluate_stream(_stream(events, records, users, seed, overrides), rules, limits)
        runs[name]["source"] = str(events) if events else f"generated: {records:,} records, {users:,} users, seed {seed}" + (
            "; " + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) if overrides else "")
        _print_run(name, runs[name])
    (out / "recommend.json").write_text(json.dumps(runs, indent=2) + "\n")
    _plot(runs, out / "recommend.png")
    print(f"wrote {out / 'recommend.png'} and {out / 'recommend.json'}")
    return 0 if all(run["product_views"] for run in runs.values()) else 1


def _stream(events: Path | None, records: int, users: int, seed: int, overrides: dict[str, Any] | None) -> Iterable[bytes]:
    if events is not None:
        from persona.dry_run import read_lines
        return read_lines(events)
    from persona.generator.shoppers import generate
    gen = load_generator_settings({"users": users, "seed": seed, "span_hours": 96, **(overrides or {})})
    return (rec.value for rec in generate(gen, max_records=records))


def _print_run(name: str, run: dict[str, Any]) -> None:
    print(f"  {run['product_views']:,} product views of {run['users']:,} users over {run['items']:,} items")
    for model, r in run["models"].items():
        print(f"  {model:<36} HR@10 {r['hr@10']:.3f} {r['hr@10_ci95']}  HR@20 {r['hr@20']:.3f} {r['hr@20_ci95']}  "
              f"MRR@20 {r['mrr@20']:.3f}", flush=True)


def _plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items(), strict=True):
        models = list(run["models"])
        for j, metric in enumerate(("hr@10", "hr@20", "mrr@20")):
            values = [run["models"][m][metric] for m in models]
            low = [v - run["models"][m][f"{metric}_ci95"][0] for m, v in zip(models, values, strict=True)]
            high = [run["models"][m][f"{metric}_ci95"][1] - v for m, v in zip(models, values, strict=True)]
            ax.bar(np.arange(len(models)) + (j - 1) * 0.27, values, 0.27, yerr=[low, high], capsize=2, label=metric.upper())
        ax.set_xticks(np.arange(len(models)))
        ax.set_xticklabels([m.replace(", in hindsight", "\n(hindsight)").replace(" (this job)", "\n(this job)") for m in models],
                           fontsize=7)
        ax.set_title(f"{name}\n{run['product_views']:,} product views", fontsize=9)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("next product view in the list (prequential)")
    fig.suptitle("Next-item prediction: streaming recommender vs batch recommenders in hindsight (95% CI over users)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":   # pragma: no cover - python -m persona.recommend_eval
    sys.exit(run_recommend_evaluation(40_000, 1_500, 42, Path("reports")))
