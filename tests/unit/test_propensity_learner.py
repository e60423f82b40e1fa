"""The compiled propensity learner against its reference, River's pipeline, on the same examples."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from river import compose, linear_model, optim, preprocessing

from operators.propensity_learner import PropensityLearner

NUMERIC = tuple(f"n{i}" for i in range(17))
CATEGORICAL = ("device", "hour_block", "decision")


def river_reference(numeric: tuple[str, ...], categorical: tuple[str, ...], lr: float = 0.005, l2: float = 1e-4,
                    optimizer: str = "sgd"):
    """The River pipeline the learner reproduces."""
    num = compose.Select(*numeric) | preprocessing.StandardScaler()
    cat = compose.Select(*categorical) | preprocessing.OneHotEncoder()
    opt = optim.SGD(lr) if optimizer == "sgd" else optim.AdaGrad(lr)
    return (num + cat) | linear_model.LogisticRegression(optimizer=opt, l2=l2)


def _examples(n: int, seed: int) -> list[tuple[tuple[float, ...], tuple[str, ...], bool]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        # Mixed scales, a constant feature (no variance: scales to 0) and integer-valued counts.
        x = tuple(0.0 if j == 3 else rng.gauss(i % 3, 2) if j % 4 else float(rng.randint(0, 3)) for j in range(17))
        cats = (rng.choice(["mobile", "desktop", "tablet"]), f"h{rng.randint(0, 7)}",
                rng.choice(["add_to_cart", "page_view"]))
        out.append((x, cats, rng.random() < 0.2 + 0.5 * (x[1] > 1)))
    return out


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.005), ("adagrad", 0.03)])
def test_weights_and_predictions_equal_rivers_after_thousands_of_examples(optimizer: str, lr: float) -> None:
    river = river_reference(NUMERIC, CATEGORICAL, lr=lr, optimizer=optimizer)
    ours = PropensityLearner.new(len(NUMERIC), CATEGORICAL, lr=lr, optimizer=optimizer)
    for x, cats, y in _examples(3000, seed=1):
        river.learn_one({**dict(zip(NUMERIC, x, strict=True)), **dict(zip(CATEGORICAL, cats, strict=True))}, y)
        ours.learn(x, cats, y)
    lr = list(river.steps.values())[-1]
    weights = dict(lr.weights)
    assert set(weights) == set(NUMERIC) | set(ours.categories)   # every category seen is a feature
    for i, name in enumerate(NUMERIC):
        assert math.isclose(weights[name], ours.weights[i], rel_tol=1e-9, abs_tol=1e-12), name
    for key, w in ours.categories.items():
        assert math.isclose(weights[key], w, rel_tol=1e-9, abs_tol=1e-12), key
    assert math.isclose(lr.intercept, ours.intercept, rel_tol=1e-9, abs_tol=1e-12)
    for x, cats, _ in _examples(200, seed=2):
        features = {**dict(zip(NUMERIC, x, strict=True)), **dict(zip(CATEGORICAL, cats, strict=True))}
        assert math.isclose(river.predict_proba_one(features)[True], ours.predict(x, cats), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_snapshot_numbers_and_pickle_round_trip_continue_identically(optimizer: str) -> None:
    a = PropensityLearner.new(len(NUMERIC), CATEGORICAL, optimizer=optimizer)
    data = _examples(600, seed=3)
    for x, cats, y in data[:300]:
        a.learn(x, cats, y)
    b = PropensityLearner.from_numbers(a.to_numbers())
    c = pickle.loads(pickle.dumps(a))
    for x, cats, y in data[300:]:
        for m in (a, b, c):
            m.learn(x, cats, y)
    assert a == b == c
