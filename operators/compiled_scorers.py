"""Served segment and bot models reduced to plain numbers: the same answers as River's, a few µs each.

River's pipeline (select, scale, KMeans) and HalfSpaceTrees walk dicts and tree objects through
generators: ~70 µs and ~150 µs per prediction, at every few events of every session. These classes
are built once per served snapshot and compute the same float operations in the same order, so the
answers are equal (``tests/unit/test_compiled_scorers.py`` checks that on learnt models).

They are also what a snapshot carries (``to_numbers``/``from_numbers``): JSON numbers, checked on the way
in, so a blob read from Redis or the models topic can never run code (River's own format is pickle).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import msgspec


class _KMeansNumbers(msgspec.Struct, forbid_unknown_fields=True):
    scaler: list[tuple[str, float, float]]
    centers: list[list[tuple[str, float]]]
    p: float


class _TreesNumbers(msgspec.Struct, forbid_unknown_fields=True):
    trees: list[list[tuple[str, float, float, int, int]]]
    size_limit: float
    max_score: float
    first_window: bool


def _finite(*values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("a model number is not finite")


@dataclass(frozen=True, slots=True)
class CompiledKMeans:
    """``Select | StandardScaler | KMeans`` (River): the nearest center to the scaled features."""

    scaler: tuple[tuple[str, float, float], ...]               # (feature, mean, std) in the pipeline's order
    centers: tuple[tuple[tuple[str, float], ...], ...]         # per cluster: (feature, coordinate) in River's order
    p: float

    @classmethod
    def of(cls, pipeline: Any, example: dict[str, float]) -> CompiledKMeans:
        """``example``: any feature dict of the right keys. A center whose coordinates River would create at
        its first prediction (randomly, from the model's seeded generator) gets them here the same way."""
        pipeline = copy.deepcopy(pipeline)
        pipeline.predict_one(example)
        *prep, km = pipeline.steps.values()
        z = example
        for step in prep:
            z = step.transform_one(z)
        scaler = prep[-1]
        keys = list(z)
        order = {c: list({*km.centers[c].keys(), *keys}) for c in km.centers}
        return cls(tuple((k, float(scaler.means[k]), float(scaler.vars[k] ** 0.5)) for k in keys),
                   tuple(tuple((k, float(km.centers[c][k])) for k in order[c]) for c in km.centers), km.p)

    def to_numbers(self) -> bytes:
        return msgspec.json.encode(_KMeansNumbers(list(self.scaler), [list(c) for c in self.centers], self.p))

    @classmethod
    def from_numbers(cls, blob: bytes, features: tuple[str, ...]) -> CompiledKMeans:
        """Raises ``ValueError`` (msgspec's ``ValidationError`` is one) unless ``blob`` is a well-formed model
        over exactly ``features``."""
        doc = msgspec.json.decode(blob, type=_KMeansNumbers)
        names = [k for k, _, _ in doc.scaler]
        if sorted(names) != sorted(features) or not doc.centers or doc.p <= 0:
            raise ValueError("segment model: features or shape differ from this job's")
        for _, mean, std in doc.scaler:
            _finite(mean, std)
        for center in doc.centers:
            if {k for k, _ in center} - set(features):
                raise ValueError("segment model: a center has an unknown feature")
            _finite(*(c for _, c in center))
        _finite(doc.p)
        return cls(tuple(doc.scaler), tuple(tuple(c) for c in doc.centers), doc.p)

    def predict_one(self, x: dict[str, float]) -> int:
        return self.assign(x, None, 0.0)

    def distances(self, x: dict[str, float]) -> list[float]:
        """River's KMeans distance (sum of |coordinate difference|^p) from the scaled ``x`` to each center."""
        z = {k: (x[k] - mean) / std if std else 0.0 for k, mean, std in self.scaler}
        p = self.p
        return [sum(abs(c - z.get(k, 0)) ** p for k, c in center) for center in self.centers]

    def assign(self, x: dict[str, float], current: int | None, margin: float) -> int:
        """The nearest center, unless the user's ``current`` one is nearly as near: a user moves only when the
        new center is nearer by more than ``margin`` (a share of the current distance). Hysteresis: a shopper
        near a boundary does not flip between segments session after session."""
        return hysteresis(self.distances(x), current, margin)

    def reordered(self, order: list[int]) -> CompiledKMeans:
        """The same model with center ``order[i]`` at index ``i`` (stable segment identities)."""
        return CompiledKMeans(self.scaler, tuple(self.centers[i] for i in order), self.p)

    def describe(self, top: int = 2) -> list[str]:
        """Per segment, its most distinctive features against the mean (centers are in standard deviations).

        >>> CompiledKMeans((("a", 0.0, 1.0), ("b", 0.0, 1.0)), ((("a", 1.8), ("b", -0.2)),), 2.0).describe()
        ['a +1.8σ, b -0.2σ']
        """
        out = []
        for center in self.centers:
            ranked = sorted(center, key=lambda kc: -abs(kc[1]))[:top]
            out.append(", ".join(f"{k} {c:+.1f}σ" for k, c in ranked))
        return out


def hysteresis(distances: list[float], current: int | None, margin: float) -> int:
    """The index of the smallest distance, or ``current`` if the smallest is not below (1 - margin) times its.

    >>> hysteresis([1.0, 0.9], 0, 0.25), hysteresis([1.0, 0.7], 0, 0.25), hysteresis([1.0, 0.7], None, 0.25)
    (0, 1, 1)
    """
    best = min(range(len(distances)), key=distances.__getitem__)
    if current is not None and 0 <= current < len(distances) and best != current \
            and distances[best] >= (1 - margin) * distances[current]:
        return current
    return best


def match_centers(previous: list[list[float]], new: list[list[float]]) -> list[int]:
    """For each previous center, the new center that keeps its identity: the assignment of least total squared
    distance (exhaustive up to 8 centers, greedy beyond). ``order[i]`` is the new index of identity ``i``.

    >>> match_centers([[0.0, 0.0], [5.0, 5.0]], [[5.1, 4.9], [0.2, 0.1]])
    [1, 0]
    """
    import itertools
    k = len(new)
    cost = [[sum((a - b) ** 2 for a, b in zip(p, n, strict=True)) for n in new] for p in previous]
    if k <= 8:
        best = min(itertools.permutations(range(k)), key=lambda perm: sum(cost[i][perm[i]] for i in range(k)))
        return list(best)
    order: list[int] = []
    for i in range(k):
        order.append(min((j for j in range(k) if j not in order), key=lambda j: cost[i][j]))
    return order


@dataclass(frozen=True, slots=True)
class CompiledHalfSpaceTrees:
    """River's ``HalfSpaceTrees.score_one``: per tree, the reference masses along the path, weighted 2^depth."""

    # Per tree, nodes in a flat tuple: (feature, threshold, r_mass, left index, right index); a leaf has left -1.
    trees: tuple[tuple[tuple[str, float, float, int, int], ...], ...]
    size_limit: float
    max_score: float
    first_window: bool

    @classmethod
    def of(cls, model: Any) -> CompiledHalfSpaceTrees:
        return cls(tuple(_flatten(root) for root in model.trees), model.size_limit, model._max_score,
                   model._first_window)

    def to_numbers(self) -> bytes:
        return msgspec.json.encode(_TreesNumbers([list(t) for t in self.trees], self.size_limit,
                                                 self.max_score, self.first_window))

    @classmethod
    def from_numbers(cls, blob: bytes, features: tuple[str, ...]) -> CompiledHalfSpaceTrees:
        """Raises ``ValueError`` unless ``blob`` is well formed: known features, finite numbers, and every
        child after its parent (so a walk always ends)."""
        doc = msgspec.json.decode(blob, type=_TreesNumbers)
        known = set(features)
        if not doc.first_window and not (doc.trees and doc.max_score > 0):
            raise ValueError("bot model: no trees, or a maximum score that is not positive")
        for nodes in doc.trees:
            for i, (feature, threshold, mass, left, right) in enumerate(nodes):
                _finite(threshold, mass)
                leaf = left < 0
                if not leaf and (feature not in known or not (i < left < len(nodes) and i < right < len(nodes))):
                    raise ValueError(f"bot model: node {i} has an unknown feature or a child out of order")
        _finite(doc.size_limit, doc.max_score)
        return cls(tuple(tuple(t) for t in doc.trees), doc.size_limit, doc.max_score, doc.first_window)

    def score_one(self, x: dict[str, float]) -> float:
        if self.first_window:
            return 0
        score = 0.0
        size_limit = self.size_limit
        for nodes in self.trees:
            i, weight = 0, 1
            while True:
                feature, threshold, mass, left, right = nodes[i]
                score += mass * weight
                if mass < size_limit or left < 0:
                    break
                i = left if x[feature] < threshold else right
                weight *= 2
        score /= self.max_score
        return 1 - score


def _flatten(root: Any) -> tuple[tuple[str, float, float, int, int], ...]:
    """A tree as a flat tuple of nodes, children after their parent: (feature, threshold, r_mass, left, right)."""
    nodes: list[tuple[str, float, float, int, int]] = []

    def add(node: Any) -> int:
        index = len(nodes)
        nodes.append(("", 0.0, 0.0, -1, -1))
        if hasattr(node, "children"):
            left, right = add(node.children[0]), add(node.children[1])
            nodes[index] = (node.feature, node.threshold, node.r_mass, left, right)
        else:
            nodes[index] = ("", 0.0, node.r_mass, -1, -1)
        return index

    add(root)
    return tuple(nodes)
