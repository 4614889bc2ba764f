"""How far an image is from everything the model was trained on: an out-of-distribution score.

A classifier's softmax is confident about anything: on the default model a photo of a building
gets "defective" at 0.98. The pooled features the head sees (the embedding) say more, since a
cell the model learned from lands near the training cells and a building does not. Two standard
scores, both fitted on the training split's embeddings:

- ``mahalanobis`` (Lee et al., 2018): class-conditional Gaussians with one shared covariance; the
  score is the squared Mahalanobis distance to the nearest class mean. The covariance is
  Ledoit-Wolf shrunk, since a few thousand images do not pin down a 1280 x 1280 matrix.
- ``knn`` (Sun et al., 2022): one minus the cosine similarity to the k-th nearest training
  embedding, over a bank of unit-length training embeddings.

The threshold is the validation split's ``in_distribution_rate`` quantile: that share of images
like the ones the model was validated on score below it. This module is the numpy twin of the
exported graph's ``ood_score`` output, which is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from transferkit.contract import OOD_OUTPUT
from transferkit.io import atomic_write

OodMethod = Literal["mahalanobis", "knn"]
DESCRIPTIONS = {
    "mahalanobis": "squared Mahalanobis distance to the nearest class mean (shared covariance)",
    "knn": "1 - cosine similarity to the k-th nearest training embedding",
}


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class OodReference:
    """A fitted reference: ``matrix`` is the whitening transform (mahalanobis, (D, D)) or the
    bank of unit training embeddings (knn, (N, D)); ``centers`` the whitened class means."""

    method: OodMethod
    matrix: np.ndarray
    centers: np.ndarray
    k: int
    threshold: float = float("inf")
    in_distribution_rate: float = 0.95

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """OOD scores (N,) of embeddings (N, D): higher is further from the training split."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if self.method == "mahalanobis":
            whitened = embeddings @ self.matrix
            distances = ((whitened[:, None, :] - self.centers[None, :, :]) ** 2).sum(-1)
            return distances.min(1)
        similarity = unit_rows(embeddings) @ self.matrix.T
        kth = -np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
        return 1.0 - kth

    def with_threshold(self, val_scores: np.ndarray, in_distribution_rate: float) -> OodReference:
        """The reference with its threshold: the ``in_distribution_rate`` quantile of validation scores."""
        threshold = float(np.quantile(np.asarray(val_scores, dtype=np.float64), in_distribution_rate))
        return replace(self, threshold=threshold, in_distribution_rate=in_distribution_rate)

    def as_metadata(self) -> dict[str, Any]:
        """The model's ``ood`` metadata: what the ``ood_score`` output means and where it turns."""
        return {
            "output": OOD_OUTPUT,
            "method": self.method,
            "score": DESCRIPTIONS[self.method],
            **({"k": self.k, "bank_size": int(self.matrix.shape[0])} if self.method == "knn" else {}),
            "fitted_on": "train",
            "threshold": self.threshold,
            "threshold_split": "val",
            "in_distribution_rate": self.in_distribution_rate,
        }

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as handle:
            np.savez(
                handle,
                method=np.array(self.method),
                matrix=self.matrix.astype(np.float32),
                centers=self.centers.astype(np.float32),
                k=np.array(self.k),
                threshold=np.array(self.threshold),
                in_distribution_rate=np.array(self.in_distribution_rate),
            )

    @classmethod
    def load(cls, path: str | Path) -> OodReference:
        with np.load(path) as stored:
            return cls(
                method=str(stored["method"]),  # type: ignore[arg-type]
                matrix=stored["matrix"].astype(np.float64),
                centers=stored["centers"].astype(np.float64),
                k=int(stored["k"]),
                threshold=float(stored["threshold"]),
                in_distribution_rate=float(stored["in_distribution_rate"]),
            )


def fit_reference(
    method: OodMethod, embeddings: np.ndarray, labels: np.ndarray, k: int, bank_size: int, seed: int
) -> OodReference:
    """A reference fitted on training ``embeddings`` (N, D) with their class ``labels``.

    ``knn`` keeps at most ``bank_size`` embeddings (a seeded sample): the bank is part of the model.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if method == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        classes = np.unique(labels)
        means = np.stack([embeddings[labels == c].mean(0) for c in classes])
        centred = embeddings - means[np.searchsorted(classes, labels)]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        # precision = W W^T, so (x - mu) precision (x - mu)^T = |x W - mu W|^2: the graph is one MatMul.
        whitening = np.linalg.cholesky((precision + precision.T) / 2)
        return OodReference(method, whitening, means @ whitening, k=0)
    if len(embeddings) > bank_size:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), bank_size, replace=False))
        embeddings = embeddings[keep]
    k = min(k, len(embeddings))
    return OodReference(method, unit_rows(embeddings), np.zeros((0, embeddings.shape[1])), k=k)


def detection_metrics(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How well scores separate in-distribution (negatives) from shifted images (positives):
    AUROC, the share of in-distribution images flagged when 95 % of shifted ones are, and the
    shares of each the model's own ``threshold`` sends to review."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([in_scores, out_scores])
    truth = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    cut = np.quantile(out_scores, 0.05)  # 95 % of the shifted images score at or above it
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "fpr_at_95_tpr": float((in_scores >= cut).mean()),
        "shifted_flagged": float((out_scores > threshold).mean()),
        "in_distribution_flagged": float((in_scores > threshold).mean()),
    }
