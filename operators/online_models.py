"""The three online models, their prequential metrics and versioned snapshots.

- ``propensity``: logistic regression on scaled numeric + one-hot categorical features. Metrics are
  prequential: each example carries the score the serving model gave it at the snapshot, the metric
  sees that score and the label, and only then does the trainer learn from the example.
- ``segments``: KMeans over scaled RFM and behaviour, learnt at session ends. KMeans rather than
  DBSTREAM because its ``k`` clusters have stable ids: a segment id is a Redis set that front-ends and
  campaigns refer to, and DBSTREAM creates and merges clusters (ids come and go) as density moves.
  Quality: River's silhouette on the scaled vectors; churn: how often a user's segment changes.
- ``bots``: HalfSpaceTrees over per-session rate features, with fixed feature ranges.

A snapshot is the model with its name, version and metrics. The propensity model is River's logistic
regression computed over flat numbers (``operators.propensity_learner``, equal to River's pipeline) and
its snapshot is JSON numbers. Segments and bots are River models in the trainer's Flink state; their
snapshots are the compiled scorers' numbers (``operators.compiled_scorers``), also JSON. No snapshot is
ever unpickled: a blob from Redis or the models topic is data, checked on the way in (docs/operations.md "Security").

>>> def x(items): return (0.0,) * 13 + (items,) + (0.0,) * (N_NUMERIC - 14) + ("mobile", "h3", "add_to_cart")
>>> t = ModelTrainer.new("propensity", seed=1)
>>> for i in range(400):   # the serving model knew nothing for the first half, then was right
...     t.learn(x(float(i % 2)), label=bool(i % 2), score=0.5 if i < 200 else 0.9 * (i % 2))
>>> snap = t.snapshot(created_at_ms=0)
>>> snap.version, snap.examples, round(snap.metrics["roc_auc"], 3)   # by hand: (200*100 + 100*100 + 100*100/2) / 200**2
(1, 400, 0.875)
>>> restore("propensity", snap.blob).predict(x(1.0)[:N_NUMERIC], x(1.0)[N_NUMERIC:]) > 0.5
True
"""

from __future__ import annotations

import base64
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson

from operators.compiled_scorers import CompiledHalfSpaceTrees, CompiledKMeans, hysteresis, match_centers
from operators.model_features import BOT_LIMITS, PROPENSITY_CATEGORICAL, PROPENSITY_NUMERIC, SEGMENT_FEATURES
from operators.propensity_learner import PropensityLearner, sigmoid
from operators.score_auc import HistogramAUC, auc_interval
from operators.slot_state import restore_slots

MODEL_NAMES = ("propensity", "segments", "bots")
# Bumped when a model's features or structure change: snapshots of another schema are not loaded.
# propensity 2: features as one packed tuple, snapshot as JSON numbers (1 was a pickled River pipeline).
# segments 2, bots 2: the compiled scorer's JSON numbers (1 was a pickled River model).
# propensity 3: session-sequence and recency-weighted features (21 numbers, was 17).
MODEL_SCHEMA = {"propensity": 3, "segments": 2, "bots": 2}
N_NUMERIC = len(PROPENSITY_NUMERIC)
N_FEATURES = N_NUMERIC + len(PROPENSITY_CATEGORICAL)
# A user moves to another segment only when its center is nearer than the current one by this share of the
# current distance (River's KMeans distance, squared: the new center must be within about 45% of the current
# one's distance; docs/models.md: stable segments). The trainer's churn metric applies the same rule.
SEGMENT_MARGIN = 0.8


def new_model(name: str, seed: int, segments: int = 5) -> Any:
    # River is imported where a model is made, not with this module: River's package imports SciPy and pandas
    # (~190 MB, ~1.4 s), and the job's driver process, which only builds the job graph, never trains.
    from river import anomaly, cluster, compose, preprocessing

    if name == "propensity":
        # AdaGrad (River's optim.AdaGrad): on the generated stream it lifts the prequential AUC from 0.807 to 0.817
        # over SGD at 0.005 (docs/models.md), at two square roots per weight and example, off the per-event path.
        return PropensityLearner.new(N_NUMERIC, PROPENSITY_CATEGORICAL, lr=0.03, l2=1e-4, optimizer="adagrad")
    if name == "segments":
        pipeline = (compose.Select(*SEGMENT_FEATURES) | preprocessing.StandardScaler()
                    # halflife 0.01 (was 0.1): centers drift slowly, so segments keep their meaning between snapshots
                    # (docs/models.md).
                    | cluster.KMeans(n_clusters=segments, halflife=0.01, sigma=1.0, seed=seed))
        # River draws a center's coordinate when a feature is first read, in the order Select yields them (a set:
        # it changes with the process's hash seed). Drawn here in a fixed order, the model is the same in every
        # process.
        for center in pipeline["KMeans"].centers.values():
            for feature in SEGMENT_FEATURES:
                center[feature]
        return pipeline
    if name == "bots":
        limits: dict[Hashable, tuple[float, float]] = {k: v for k, v in BOT_LIMITS.items()}
        return anomaly.HalfSpaceTrees(n_trees=15, height=6, window_size=200, limits=limits, seed=seed)
    raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")


LOSS_CAP = 5.0   # the drift detector's log loss is capped here (a served score under 0.7 % for what happened)


def new_drift_detector(name: str) -> Any:
    """River's ADWIN for the propensity model's log loss (None for the others). delta 0.002 is River's default,
    the confidence bound of each test for a change between two sub-windows."""
    if name != "propensity":
        return None
    from river import drift
    return drift.ADWIN(delta=0.002)   # type: ignore[no-untyped-call]  # unannotated in River


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    name: str
    version: int
    schema: int
    created_at_ms: int
    examples: int
    metrics: dict[str, float]
    blob: bytes

    def to_record(self, kind: str = "snapshot") -> dict[str, Any]:
        """The models-topic record (schemas/model_update.v1.json)."""
        return {"schema_version": 1, "kind": kind, "model": self.name, "version": self.version,
                "model_schema": self.schema, "created_at": self.created_at_ms, "examples": self.examples,
                "metrics": self.metrics, "blob": base64.b64encode(self.blob).decode()}

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> ModelSnapshot:
        return cls(doc["model"], int(doc["version"]), int(doc["model_schema"]), int(doc["created_at"]),
                   int(doc["examples"]), dict(doc["metrics"]), base64.b64decode(doc["blob"]))


def describe_segments(record: dict[str, Any]) -> list[str]:
    """``seg{i}: ...`` per segment of a segments snapshot record: its most distinctive features, in standard
    deviations from the mean (docs/models.md)."""
    model = restore("segments", base64.b64decode(record["blob"]))
    return [f"seg{i}: {text}" for i, text in enumerate(model.describe())]


def restore(name: str, blob: bytes) -> Any:
    """The served model of a snapshot blob (JSON numbers, never code): a ``PropensityLearner``, a
    ``CompiledKMeans`` or a ``CompiledHalfSpaceTrees``. Raises ``ValueError`` on a malformed blob."""
    if name == "propensity":
        try:
            learner = PropensityLearner.from_numbers(orjson.loads(blob))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"propensity model: {type(e).__name__}: {e}") from None
        if (len(learner.means) != N_NUMERIC or len(learner.variances) != N_NUMERIC or len(learner.weights) != N_NUMERIC
                or learner.names != PROPENSITY_CATEGORICAL):
            raise ValueError("propensity model: features differ from this job's")
        if not all(math.isfinite(v) for v in (*learner.means, *learner.variances, *learner.weights, learner.intercept,
                                               *learner.categories.values())):
            raise ValueError("propensity model: a number is not finite")
        return learner
    if name == "segments":
        return CompiledKMeans.from_numbers(blob, SEGMENT_FEATURES)
    if name == "bots":
        return CompiledHalfSpaceTrees.from_numbers(blob, tuple(BOT_LIMITS))
    raise ValueError(f"unknown model {name!r}")


def model_blob(name: str, model: Any) -> bytes:
    """A snapshot's blob: JSON numbers for every model (see ``restore``)."""
    if name == "propensity":
        return orjson.dumps(model.to_numbers())
    if name == "segments":
        return CompiledKMeans.of(model, dict.fromkeys(SEGMENT_FEATURES, 0.0)).to_numbers()
    return CompiledHalfSpaceTrees.of(model).to_numbers()


@dataclass(slots=True)
class ModelTrainer:
    """One model, its metrics and its version counter: the value the trainer keeps in Flink state."""

    name: str
    model: Any
    version: int = 0
    examples: int = 0
    since_snapshot: int = 0
    meters: dict[str, Any] = field(default_factory=dict)
    churned: int = 0
    assigned: int = 0
    # Segments: stable identities. ``order[i]`` is the KMeans center that segment i is now; at each snapshot the
    # new centers are matched to the published ones (least total distance), so seg2 keeps meaning the same
    # kind of shopper. ``switches`` counts centers whose identity the matching changed (label switching).
    order: list[int] = field(default_factory=list)
    published: list[list[float]] = field(default_factory=list)
    switches: int = 0
    matched: int = 0
    stale: int = 0   # propensity examples of another build's features, not learnt
    # Propensity: River's ADWIN over each example's capped log loss (docs/models.md "Drift"). ``drifts`` counts the changes
    # it detected in which the loss rose; ``drift_at`` is the example count at the last one. The policy is to keep
    # learning (the adaptive learner follows a drift by itself) and to say so: a metric, `persona status`, a panel.
    drift: Any = None
    drifts: int = 0
    drift_at: int = 0

    def __setstate__(self, state: Any) -> None:
        restore_slots(self, state)   # a trainer pickled by an older build has fewer fields
        if self.name == "propensity" and len(self.model.weights) != N_NUMERIC:
            # A build with other features: its weights mean nothing here. Learn afresh; the version goes on.
            self.model = new_model("propensity", 0)

    @classmethod
    def new(cls, name: str, seed: int = 42, segments: int = 5) -> ModelTrainer:
        from river import metrics  # where it is used, as in new_model

        meters: dict[str, Any]
        if name == "propensity":
            meters = {"roc_auc": HistogramAUC(), "log_loss": metrics.LogLoss(),  # type: ignore[no-untyped-call]  # River's metrics are unannotated
                      "roc_auc_recent": HistogramAUC(half_life=1000)}
        elif name == "segments":
            meters = {"silhouette": metrics.Silhouette()}  # type: ignore[no-untyped-call]  # unannotated in River
        else:
            meters = {}
        return cls(name, new_model(name, seed, segments), meters=meters, drift=new_drift_detector(name))

    def learn(self, x: Any, label: bool | None = None, score: float | None = None,
              previous: int | None = None) -> None:
        """Learn one example. Propensity: ``x`` is the packed feature tuple (``PROPENSITY_FEATURES`` order) and
        ``score`` the serving model's prediction at the snapshot. Segments: ``previous`` is the user's
        segment before this session (None: first), for churn."""
        if self.name == "propensity":
            assert label is not None and score is not None
            if len(x) != N_FEATURES:   # waited in a user's state since a build with other features
                self.stale += 1
                return
            p = min(max(score, 1e-6), 1 - 1e-6)
            self.meters["roc_auc"].update(label, p)
            self.meters["roc_auc_recent"].update(label, p)
            self.meters["log_loss"].update(label, {True: p, False: 1 - p})
            self._watch_loss(-math.log(p if label else 1 - p))
            self.model.learn(x[:N_NUMERIC], x[N_NUMERIC:], label)
        elif self.name == "segments":
            self.model.learn_one(x)
            *prep, km = self.model.steps.values()
            z = x
            for step in prep:
                z = step.transform_one(z)
            raw = sorted(km.centers)
            if not self.order:
                self.order = list(raw)
            # River's distance to every center (learn_one gave each one all of z's keys), then the hysteresis the
            # scorers apply, in identity space.
            distances = [sum(abs(km.centers[c][k] - zk) ** km.p for k, zk in z.items()) for c in raw]
            current = self.order[previous] if previous is not None and 0 <= previous < len(self.order) else None
            nearest = raw[hysteresis(distances, raw.index(current) if current in raw else None, SEGMENT_MARGIN)]
            seg = self.order.index(nearest)
            self.meters["silhouette"].update(z, nearest, km.centers)
            if previous is not None:
                self.churned += previous != seg
                self.assigned += 1
        else:
            self.model.learn_one(x)
        self.examples += 1
        self.since_snapshot += 1

    def _watch_loss(self, loss: float) -> None:
        if self.drift is None:   # a trainer restored from a build without drift detection
            self.drift = new_drift_detector(self.name)
        before = self.drift.estimation
        # ADWIN's bound holds for values in [0, 1]: the loss capped at LOSS_CAP, scaled. Uncapped, one confident
        # miss (a loss of 10 or more) fired it ~20 times on a stationary stream (docs/models.md "Drift").
        self.drift.update(min(loss, LOSS_CAP) / LOSS_CAP)
        # ADWIN drops the older part of its window when the two parts differ: a drop in the loss (the model
        # learning, or the stream getting easier) is not a drift to report.
        if self.drift.drift_detected and self.drift.estimation > before:
            self.drifts += 1
            self.drift_at = self.examples + 1

    def metric_values(self) -> dict[str, float]:
        out = {}
        for k, m in self.meters.items():
            v = m.get()
            out[k] = float(v) if v is not None and math.isfinite(v) else 0.0
        if self.name == "propensity":
            # The sample behind the AUC, and its 95% interval (docs/models.md: metrics people can trust).
            auc_meter = self.meters["roc_auc"]
            positives, negatives = sum(auc_meter.pos), sum(auc_meter.neg)
            out["positives"], out["negatives"] = float(positives), float(negatives)
            out["roc_auc_ci_low"], out["roc_auc_ci_high"] = auc_interval(out["roc_auc"], positives, negatives)
            if self.stale:   # after an upgrade that changed the features: examples of the old ones, not learnt
                out["stale_examples"] = float(self.stale)
            out["drifts"], out["drift_at_examples"] = float(self.drifts), float(self.drift_at)
            out["loss_window"] = float(self.drift.estimation) * LOSS_CAP if self.drift is not None else 0.0
        if self.name == "segments":
            out["churn"] = self.churned / self.assigned if self.assigned else 0.0
            out["churn_n"] = float(self.assigned)
            out["label_switching"] = self.switches / self.matched if self.matched else 0.0
            out["label_switching_n"] = float(self.matched)
        return out

    def snapshot(self, created_at_ms: int) -> ModelSnapshot:
        self.version += 1
        self.since_snapshot = 0
        blob = self._segments_blob() if self.name == "segments" else model_blob(self.name, self.model)
        return ModelSnapshot(self.name, self.version, MODEL_SCHEMA[self.name], created_at_ms, self.examples,
                             self.metric_values(), blob)

    def _segments_blob(self) -> bytes:
        """The compiled KMeans with its centers in identity order, matched to the last published ones."""
        compiled = CompiledKMeans.of(self.model, dict.fromkeys(SEGMENT_FEATURES, 0.0))
        vectors = [[dict(center).get(k, 0.0) for k in SEGMENT_FEATURES] for center in compiled.centers]
        raw = sorted(self.model.steps["KMeans"].centers) if "KMeans" in self.model.steps else list(range(len(vectors)))
        position = {c: i for i, c in enumerate(raw)}
        if len(self.order) != len(vectors):
            self.order = list(raw)
        if self.published and len(self.published) == len(vectors):
            matched = match_centers(self.published, vectors)          # identity -> position in the compiled model
            new_order = [raw[j] for j in matched]
            self.switches += sum(a != b for a, b in zip(new_order, self.order, strict=True))
            self.matched += len(vectors)
            self.order = new_order
        positions = [position[c] for c in self.order]
        self.published = [vectors[j] for j in positions]
        return compiled.reordered(positions).to_numbers()


@dataclass(frozen=True, slots=True)
class CompiledLogistic:
    """A propensity snapshot frozen for serving: 1/std precomputed, one score in a few µs.

    Built from a snapshot, never trained (the trainer keeps learning the ``PropensityLearner``).
    """

    numeric: tuple[tuple[float, float, float], ...]   # (mean, 1/std or 0, weight) per numeric feature
    names: tuple[str, ...]                             # categorical feature names
    one_hot_weights: dict[str, float]                  # "device_mobile" -> weight
    intercept: float

    @classmethod
    def of(cls, m: PropensityLearner) -> CompiledLogistic:
        numeric = tuple((mean, 1.0 / var ** 0.5 if var > 0 else 0.0, w)
                        for mean, var, w in zip(m.means, m.variances, m.weights, strict=True))
        return cls(numeric, m.names, dict(m.categories), m.intercept)

    def score(self, x: tuple[Any, ...]) -> float:
        """P(purchase within the label window) for a packed feature tuple."""
        z = self.intercept
        for xi, (mean, inv_std, w) in zip(x, self.numeric, strict=False):   # x: numeric, then categorical
            z += w * (xi - mean) * inv_std
        weights = self.one_hot_weights
        for name, value in zip(self.names, x[N_NUMERIC:], strict=True):
            z += weights.get(f"{name}_{value}", 0.0)
        return sigmoid(z)
