"""Suspected label errors: labels flipped on purpose must come out on top, on blobs and on real cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferkit.data.cache import PreparedData
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.label_issues import (
    embedding_model,
    find_issues,
    out_of_fold_probabilities,
    rank_issues,
    split_embeddings,
)
from transferkit.training.compute import Compute

FLIPPED = 8


def flip(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with ``count`` of them (chosen at random, both classes) swapped, and which."""
    chosen = np.random.default_rng(seed).choice(len(labels), count, replace=False)
    noisy = labels.copy()
    noisy[chosen] = 1 - noisy[chosen]
    return noisy, chosen


def test_flipped_labels_of_separable_blobs_are_the_issues_found() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    points = rng.normal(size=(200, 16)) + labels[:, None] * 3.0  # two blobs, far apart
    noisy, chosen = flip(labels, 10, seed=1)
    pred_probs = out_of_fold_probabilities(points, noisy, folds=5, seed=0, regularization=0.1)
    found = rank_issues(noisy, pred_probs)
    assert set(found.tolist()) == set(chosen.tolist())
    # Out of fold: a probe that saw each point's own (wrong) label would not be this sure against it.
    assert pred_probs[chosen, noisy[chosen]].max() < 0.2


def test_too_few_images_of_a_class_for_the_folds_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="fewer than the 5 folds; lower --folds"):
        out_of_fold_probabilities(np.zeros((12, 3)), np.array([0] * 9 + [1] * 3), 5, 0, 0.1)


def test_the_embedding_model_is_named_and_a_missing_checkpoint_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imagenet, trained"):
        embedding_model("pixels", tmp_path / "model.pt", "efficientnet_lite0", 2)
    with pytest.raises(DataError, match="run the train stage first"):
        embedding_model("trained", tmp_path / "model.pt", "efficientnet_lite0", 2)


def test_flipped_elpv_labels_rank_above_the_rest_with_imagenet_features(trained_shrunk) -> None:
    """Real cells (the shrunk pipeline's prepared subset), the pretrained backbone, labels flipped
    on purpose: the flipped images must be found far more often than the others are."""
    prepared = PreparedData.load(trained_shrunk.paths.prepared)
    model, version = embedding_model("imagenet", Path("unused"), trained_shrunk.model.architecture, 2)
    compute = Compute.from_params(trained_shrunk.train)
    indices, embeddings = split_embeddings(prepared, model, "train", compute, 32)
    given = prepared.labels(indices)
    noisy, chosen = flip(given, FLIPPED, seed=3)
    issues = find_issues(indices, noisy, embeddings, "imagenet", version)
    assert indices.tolist() == prepared.indices("train").tolist() and version == "imagenet"
    found = set(issues.ranked.tolist())
    caught = len(found & set(chosen.tolist()))
    false_alarms = len(found) - caught
    assert caught >= FLIPPED // 2, f"found {caught} of {FLIPPED} flipped labels"
    assert caught / FLIPPED > 3 * false_alarms / (len(given) - FLIPPED), "flipped ones are not found more often"
