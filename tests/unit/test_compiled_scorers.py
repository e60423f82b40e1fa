"""Compiled segment and bot scorers give exactly River's answers, on fresh and on learnt models."""

from __future__ import annotations

import random

from operators.compiled_scorers import CompiledHalfSpaceTrees, CompiledKMeans
from operators.model_features import BOT_LIMITS, SEGMENT_FEATURES
from operators.online_models import ModelTrainer


def _segment_x(r: random.Random) -> dict[str, float]:
    return {k: r.expovariate(0.3) for k in SEGMENT_FEATURES}


def _bot_x(r: random.Random) -> dict[str, float]:
    return {k: r.uniform(lo, hi) for k, (lo, hi) in BOT_LIMITS.items()}


def test_kmeans_predictions_equal_rivers() -> None:
    r = random.Random(1)
    trainer = ModelTrainer.new("segments", seed=3)
    for n in (0, 1, 50, 400):   # a fresh model too: River creates its centers' coordinates at the first prediction
        while trainer.examples < n:
            trainer.learn(_segment_x(r), previous=None)
        compiled = CompiledKMeans.of(trainer.model, dict.fromkeys(SEGMENT_FEATURES, 0.0))
        probe = [_segment_x(random.Random(i)) for i in range(300)]
        reference = [trainer.model.predict_one(x) for x in probe]
        assert [compiled.predict_one(x) for x in probe] == reference
        assert len(set(reference)) > 1 or n < 50   # learnt centers split the probes


def test_half_space_tree_scores_equal_rivers() -> None:
    r = random.Random(2)
    trainer = ModelTrainer.new("bots", seed=3)
    for n in (0, 150, 250, 900):   # before and after the first window (200) and a few windows later
        while trainer.examples < n:
            trainer.learn(_bot_x(r))
        compiled = CompiledHalfSpaceTrees.of(trainer.model)
        probe = [_bot_x(random.Random(i)) for i in range(300)]
        reference = [trainer.model.score_one(x) for x in probe]
        assert [compiled.score_one(x) for x in probe] == reference
        assert len(set(reference)) > 1 or n < 200   # scores vary once the first window is in
