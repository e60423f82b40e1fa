"""Experiments on triggers: variants per pattern, sticky assignment, outcome tallies with confidence intervals.

A pattern may declare an experiment (docs/behaviour.md "Experiments"): variants with weights, one of them perhaps a
holdout that is sent nothing, a policy, and an outcome (a step within a window after the trigger).

- **Assignment** is deterministic and sticky: ``unit_draw(experiment, user)`` is a uniform number from a
  hash of the two, kept with the user at the first assignment. The holdout owns ``[0, h)`` with ``h`` its
  weight share under every policy, so its share never moves.
- **fixed**: the rest of ``[0, 1)`` is split by weight.
- **thompson**: a Beta-Bernoulli Thompson sampler over the variants that are sent. Each arm's conversion
  rate is drawn from Beta(1 + converted, 1 + exposed - converted) with a generator seeded by the user's
  hash, and the best draw wins: traffic moves to the variant that converts best as outcomes come in, and
  the same user with the same tallies always gets the same variant.
- **Tallies** count outcomes once resolved (converted within the window, or not when it closed); each
  variant's rate comes with a 95% Wilson interval.

>>> spec = ExperimentSpec("copy", (("A", 1.0), ("B", 1.0), ("none", 0.5)), "none", "fixed", 86_400_000)
>>> [assign(spec, f"u{i}", {}) for i in range(6)]
['none', 'B', 'A', 'B', 'B', 'none']
>>> round(wilson(30, 100)[0], 3), round(wilson(30, 100)[1], 3)
(0.219, 0.396)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("fixed", "thompson")
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    name: str
    variants: tuple[tuple[str, float], ...]     # (variant, weight), in file order
    holdout: str | None                         # the variant that is sent nothing
    policy: str                                 # fixed | thompson
    window_ms: int                              # the outcome must come within this after the trigger
    outcome: Any = None                         # operators.pattern_spec.Step: what counts as a conversion

    @property
    def holdout_share(self) -> float:
        total = sum(w for _, w in self.variants)
        return sum(w for v, w in self.variants if v == self.holdout) / total

    @property
    def arms(self) -> tuple[tuple[str, float], ...]:
        """The variants that are sent."""
        return tuple((v, w) for v, w in self.variants if v != self.holdout)


def unit_draw(experiment: str, user_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from the experiment and the user (SHA-256, so any language can repeat it)."""
    digest = hashlib.sha256(f"{experiment}\x1f{user_id}{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(spec: ExperimentSpec, user_id: str, tallies: Mapping[str, tuple[int, int]]) -> str:
    """The variant of a user seen for the first time; ``tallies``: variant -> (exposed, converted) so far."""
    u = unit_draw(spec.name, user_id)
    share = spec.holdout_share
    if spec.holdout is not None and u < share:
        return spec.holdout
    arms = spec.arms
    if spec.policy == "thompson":
        rng = random.Random(int(unit_draw(spec.name, user_id, "\x1fthompson") * 2**53))
        draws = []
        for variant, _ in arms:
            exposed, converted = tallies.get(variant, (0, 0))
            draws.append((rng.betavariate(1 + converted, 1 + max(exposed - converted, 0)), variant))
        return max(draws)[1]
    x = (u - share) / (1 - share) * sum(w for _, w in arms) if share < 1 else 0.0
    for variant, weight in arms:
        if x < weight:
            return variant
        x -= weight
    return arms[-1][0]


def wilson(converted: int, exposed: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sound at small counts and rates near 0 or 1)."""
    if exposed <= 0:
        return 0.0, 1.0
    p = converted / exposed
    denominator = 1 + z * z / exposed
    centre = (p + z * z / (2 * exposed)) / denominator
    half = z * math.sqrt(p * (1 - p) / exposed + z * z / (4 * exposed * exposed)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class ExperimentOutcome:
    """A resolved exposure: the trigger (or the holdout's would-be trigger) and whether the outcome followed."""

    experiment: str
    variant: str
    trigger_id: str
    exposed_at: int
    converted: bool

    def to_json(self, holdout: bool) -> str:
        """The record the tally operator reads (no user id: the tallies are aggregates)."""
        return json.dumps({"variant": self.variant, "converted": self.converted, "holdout": holdout,
                           "exposed_at": self.exposed_at}, sort_keys=True)


@dataclass
class Tally:
    """Per variant: (exposed, converted). Plain data: the job keeps it in Flink state per experiment."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    holdouts: list[str] = field(default_factory=list)

    def add(self, variant: str, converted: bool) -> None:
        c = self.counts.setdefault(variant, [0, 0])
        c[0] += 1
        c[1] += int(converted)

    def tallies(self) -> dict[str, tuple[int, int]]:
        return {v: (c[0], c[1]) for v, c in self.counts.items()}

    def summary(self, spec: ExperimentSpec | None = None) -> dict[str, Any]:
        """Per variant: exposed, converted, rate, 95% interval and share of exposures (the Redis and CLI view)."""
        total = sum(c[0] for c in self.counts.values()) or 1
        names = [v for v, _ in spec.variants] if spec else sorted(self.counts)
        out: dict[str, Any] = {}
        for v in names + sorted(set(self.counts) - set(names)):
            exposed, converted = self.counts.get(v, [0, 0])
            low, high = wilson(converted, exposed)
            out[v] = {"exposed": exposed, "converted": converted, "rate": converted / exposed if exposed else None,
                      "ci95": [round(low, 6), round(high, 6)], "share": exposed / total,
                      "holdout": v in self.holdouts or (spec is not None and v == spec.holdout)}
        return out
