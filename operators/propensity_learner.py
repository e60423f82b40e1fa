"""Purchase propensity: River's online logistic regression, computed over flat numbers.

The reference is River's pipeline (``tests/unit/test_propensity_learner.py`` builds it)::

    (Select(numeric) | StandardScaler()) + (Select(categorical) | OneHotEncoder())
        | LogisticRegression(optimizer=SGD(lr), l2=l2)

It costs ~110 µs per example in River (pipeline orchestration, dict arithmetic) and the stream makes
about one example for every two events, so it cannot run per example on a 50 µs-per-event budget. This
class does the same arithmetic in the same order over a tuple of numbers and three category strings:

1. the scaler learns the example first (Welford), then scales it with the updated mean and variance
   (a feature with no variance scales to 0);
2. the one-hot encoder learns the categories first; every category seen so far is a feature, 0 unless
   present, so its weight is decayed by the L2 term on every step, as in River;
3. the gradient of the log loss at the raw score (clipped at 1e12), the intercept step
   (``intercept_lr``), then the SGD step on every feature of the example.

``tests/unit/test_propensity_learner.py`` checks that weights and predictions equal River's to 1e-9
after thousands of examples. Snapshots are numbers only (``to_numbers``), so loading one runs no code.

>>> m = PropensityLearner.new(numeric=2)
>>> for i in range(200):
...     m.learn((float(i % 2), 1.0), ("mobile",), label=bool(i % 2))
>>> m.predict((1.0, 1.0), ("mobile",)) > 0.5 > m.predict((0.0, 1.0), ("mobile",))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from operators.slot_state import restore_slots

CLIP = 1e12
ADAGRAD_EPS = 1e-8


def sigmoid(z: float) -> float:
    """River's sigmoid (``river.utils.math.sigmoid``), saturating at |z| > 30."""
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def log_loss_gradient(label: bool, raw: float) -> float:
    """d(log loss)/d(raw score), as ``river.optim.losses.Log.gradient`` computes it."""
    y = 1 if label else -1
    z = raw * y
    if z > 18.0:
        g = math.exp(-z) * -y
    elif z < -18.0:
        g = float(-y)
    else:
        g = -y / (math.exp(z) + 1.0)
    return min(max(g, -CLIP), CLIP)


@dataclass(slots=True)
class PropensityLearner:
    lr: float
    l2: float
    intercept_lr: float
    n: int = 0
    means: list[float] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)        # one per numeric feature, in order
    categories: dict[str, float] = field(default_factory=dict)  # "device_mobile" -> weight, every one seen
    intercept: float = 0.0
    names: tuple[str, ...] = ()                                # categorical feature names, in order
    # "sgd" (River's optim.SGD) or "adagrad" (River's optim.AdaGrad: a step per weight that shrinks with the
    # squared gradients it has seen, eps 1e-8): sums of squared gradients per numeric weight and per category.
    optimizer: str = "sgd"
    g2: list[float] = field(default_factory=list)
    g2_categories: dict[str, float] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        restore_slots(self, state)   # a learner pickled before AdaGrad (in the trainer's Flink state) is SGD

    @classmethod
    def new(cls, numeric: int, categorical: tuple[str, ...] = ("device",), lr: float = 0.005, l2: float = 1e-4,
            intercept_lr: float = 0.01, optimizer: str = "sgd") -> PropensityLearner:
        if optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer {optimizer!r} is not sgd or adagrad")
        return cls(lr, l2, intercept_lr, 0, [0.0] * numeric, [0.0] * numeric, [0.0] * numeric, {}, 0.0,
                   categorical, optimizer, [0.0] * numeric, {})

    def _scaled(self, x: tuple[float, ...]) -> list[float]:
        out = []
        for xi, m, v in zip(x, self.means, self.variances, strict=True):
            sd = v ** 0.5
            out.append((xi - m) / sd if sd else 0.0)
        return out

    def _keys(self, cats: tuple[str, ...]) -> list[str]:
        return [f"{name}_{value}" for name, value in zip(self.names, cats, strict=True)]

    def learn(self, x: tuple[float, ...], cats: tuple[str, ...], label: bool) -> None:
        # 1. The scaler learns, then scales (River's pipeline order for unsupervised steps).
        self.n += 1
        n = self.n
        means, variances = self.means, self.variances
        for i, xi in enumerate(x):
            old = means[i]
            new = old + (xi - old) / n
            means[i] = new
            variances[i] += ((xi - old) * (xi - new) - variances[i]) / n
        z = self._scaled(x)
        # 2. The encoder learns the categories; all seen ones are features of this example.
        keys = self._keys(cats)
        weights = self.categories
        for k in keys:
            if k not in weights:
                weights[k] = 0.0
        # 3. Gradient at the current weights, then the intercept and the SGD steps.
        raw = self.intercept
        for zi, wi in zip(z, self.weights, strict=True):
            raw += wi * zi
        for k in keys:
            raw += weights[k]
        g = log_loss_gradient(label, raw)
        self.intercept -= self.intercept_lr * g
        lr, l2 = self.lr, self.l2
        w = self.weights
        active = set(keys)
        if self.optimizer == "adagrad":
            g2, g2c = self.g2, self.g2_categories
            for i, zi in enumerate(z):
                gi = g * zi + l2 * w[i]
                g2[i] += gi * gi
                w[i] -= lr / (g2[i] + ADAGRAD_EPS) ** 0.5 * gi
            for k, wk in weights.items():
                gk = (g if k in active else 0.0) + l2 * wk
                g2c[k] = g2c.get(k, 0.0) + gk * gk
                weights[k] = wk - lr / (g2c[k] + ADAGRAD_EPS) ** 0.5 * gk
            return
        for i, zi in enumerate(z):
            w[i] -= lr * (g * zi + l2 * w[i])
        for k, wk in weights.items():
            weights[k] = wk - lr * ((g if k in active else 0.0) + l2 * wk)

    def predict(self, x: tuple[float, ...], cats: tuple[str, ...]) -> float:
        """P(label) with the current weights (no learning)."""
        raw = self.intercept
        for zi, wi in zip(self._scaled(x), self.weights, strict=True):
            raw += wi * zi
        weights = self.categories
        for k in self._keys(cats):
            raw += weights.get(k, 0.0)
        return sigmoid(raw)

    def to_numbers(self) -> dict[str, Any]:
        """Plain numbers and strings (a snapshot that cannot execute code when loaded)."""
        return {"lr": self.lr, "l2": self.l2, "intercept_lr": self.intercept_lr, "n": self.n, "means": self.means,
                "variances": self.variances, "weights": self.weights, "categories": self.categories,
                "intercept": self.intercept, "names": list(self.names), "optimizer": self.optimizer, "g2": self.g2,
                "g2_categories": self.g2_categories}

    @classmethod
    def from_numbers(cls, doc: dict[str, Any]) -> PropensityLearner:
        return cls(float(doc["lr"]), float(doc["l2"]), float(doc["intercept_lr"]), int(doc["n"]),
                   [float(v) for v in doc["means"]], [float(v) for v in doc["variances"]],
                   [float(v) for v in doc["weights"]], {str(k): float(v) for k, v in doc["categories"].items()},
                   float(doc["intercept"]), tuple(str(n) for n in doc["names"]), str(doc.get("optimizer", "sgd")),
                   [float(v) for v in doc.get("g2", [0.0] * len(doc["weights"]))],
                   {str(k): float(v) for k, v in doc.get("g2_categories", {}).items()})
