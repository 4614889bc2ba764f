"""Classification metrics on the test split, computed by scikit-learn and torchmetrics.

Besides the headline numbers: per-class precision/recall, per-group slices (mono/poly cells
for ELPV) with the largest accuracy gap between them, and expected calibration error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def _headline(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def _roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary: AUC of the positive class; multi-class: macro one-vs-rest. None if a class is absent."""
    if len(np.unique(labels)) < probabilities.shape[1]:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Top-label ECE: |confidence - accuracy| averaged over equal-width bins, weighted by count."""
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probabilities, dtype=torch.float32),
            torch.as_tensor(labels),
            num_classes=probabilities.shape[1],
            n_bins=bins,
            norm="l1",
        )
    )


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    calibration_bins: int = 15,
) -> dict[str, Any]:
    probabilities = softmax(logits)
    predicted = probabilities.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(class_names)), zero_division=0
    )
    group_array = np.asarray(groups)
    slices = {
        group: {**_headline(labels[mask], predicted[mask]), "count": int(mask.sum())}
        for group in sorted(set(groups))
        for mask in [group_array == group]
    }
    slice_accuracies = [s["accuracy"] for s in slices.values()]
    return {
        **_headline(labels, predicted),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "roc_auc": _roc_auc(labels, probabilities),
        "ece": expected_calibration_error(probabilities, labels, calibration_bins),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
        "slices": slices,
        "slice_gap": float(max(slice_accuracies) - min(slice_accuracies)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=range(len(class_names))).tolist(),
        "count": len(labels),
    }
