"""Training images whose given label the data itself disputes: confident learning on a probe.

cleanlab's ``find_label_issues`` needs out-of-sample probabilities: a model that was fitted on an
image's label agrees with that label, right or wrong. So each training image's probabilities come
from a logistic-regression probe fitted on the *other* folds (``cross_val_predict``), on a
network's pooled embeddings (the features the head sees). Which network is ``features``:

- ``imagenet`` (the default): the pretrained backbone the model started from. No training label
  ever shaped it, so the probe's folds are out of sample all the way down.
- ``trained``: the fine-tuned checkpoint. A stronger probe, but its top units were fitted on these
  very labels (wrong ones included), so it tends to agree with them; a cross-check, not the default.

Either costs one forward pass over the training split and a few seconds of probe fitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.cache import PreparedData
from transferkit.decision import LABEL_SUSPECTED, REVIEW
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.predict import predict_embedded
from transferkit.models.classifier import ImageClassifier, build_classifier
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from transferkit.training.compute import Compute

FEATURES = ("imagenet", "trained")


@dataclass(frozen=True)
class LabelIssues:
    """One split's suspects: ``ranked`` are positions into ``indices`` / ``labels`` / ``pred_probs``,
    most likely mislabelled first (lowest out-of-fold probability of the given label)."""

    indices: np.ndarray  # the split's rows in the prepared dataset
    labels: np.ndarray  # their given labels
    pred_probs: np.ndarray  # out-of-fold probabilities (N, classes)
    ranked: np.ndarray
    features: str  # one of FEATURES
    model_version: str  # what produced the embeddings: "imagenet" or the checkpoint's fingerprint

    @property
    def probe_accuracy(self) -> float:
        """How often the out-of-fold probe agrees with the given labels: how much to trust it."""
        return float((self.pred_probs.argmax(1) == self.labels).mean())

    def self_confidence(self, position: int) -> float:
        return float(self.pred_probs[position, self.labels[position]])


def embedding_model(features: str, checkpoint: Path, architecture: str, classes: int) -> tuple[ImageClassifier, str]:
    """The network whose pooled embeddings the probe sees, and a version string naming it."""
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    if features == "imagenet":
        return build_classifier(architecture, "imagenet", classes, dropout=0.0), "imagenet"
    if not checkpoint.is_file():
        raise DataError(f"no trained model at {checkpoint}; run the train stage first (dvc repro train)")
    payload = load_checkpoint(checkpoint)
    return model_from_checkpoint(payload), str(payload["meta"].get("fingerprint", "trained"))


def out_of_fold_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, folds: int, seed: int, regularization: float
) -> np.ndarray:
    """Each sample's class probabilities from a probe fitted on the other ``folds - 1`` folds.

    Standardised features and an L2-penalised logistic regression (``regularization`` is sklearn's
    C): no class weights, so the probabilities stay calibrated; confident learning's per-class
    thresholds already allow for imbalance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < folds:
        raise DataError(
            f"the rarest class has {smallest} training image(s), fewer than the {folds} folds; lower --folds"
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=2000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(probe, embeddings, labels, cv=splitter, method="predict_proba")


def rank_issues(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's label issues (confident learning's off-diagonal counts), most suspect first."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence"), np.int64)


def split_embeddings(
    prepared: PreparedData, model: ImageClassifier, split: str, compute: Compute, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The split's rows in the prepared dataset and their pooled embeddings (float64, for the probe)."""
    indices = prepared.indices(split)
    if not len(indices):
        raise DataError(f"{prepared.root} has no {split!r} images")
    _, embeddings = predict_embedded(model, prepared.images_chw(indices), batch_size, compute, f"embed {split}")
    return indices, embeddings.astype(np.float64)


def find_issues(
    indices: np.ndarray,
    labels: np.ndarray,
    embeddings: np.ndarray,
    features: str,
    model_version: str,
    folds: int = 5,
    seed: int = 0,
    regularization: float = 0.1,
) -> LabelIssues:
    """The suspects among ``indices`` given ``labels`` (the prepared ones, or a test's flipped ones)."""
    pred_probs = out_of_fold_probabilities(embeddings, labels, folds, seed, regularization)
    return LabelIssues(indices, labels, pred_probs, rank_issues(labels, pred_probs), features, model_version)


def suspect_entry(issues: LabelIssues, rank: int, prepared: PreparedData, time: str) -> dict[str, Any]:
    """The review-queue sidecar of the ``rank``-th suspect: the keys a served image's sidecar has
    (serving/monitor.py), ``label`` being the probe's class, plus the given label and the rank."""
    position = int(issues.ranked[rank])
    index = int(issues.indices[position])
    names = prepared.class_names
    probabilities = issues.pred_probs[position]
    return {
        "time": time,
        "model": {"name": f"label-issues probe ({issues.features} embeddings)", "version": issues.model_version},
        "file": prepared.rows[index]["file"],
        "label": names[int(probabilities.argmax())],
        "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities, strict=True)},
        "decision": REVIEW,
        "reason": LABEL_SUSPECTED,
        "given_label": names[int(issues.labels[position])],
        "self_confidence": round(issues.self_confidence(position), 6),
        "suspect_rank": rank + 1,
        "suspects": len(issues.ranked),
        "group": prepared.rows[index]["group"],
    }
