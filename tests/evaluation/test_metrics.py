"""Metrics against scikit-learn, and the calibration error of a known case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from transferkit.evaluation.metrics import classification_metrics, softmax


def _known_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    logits = np.array(
        [[2, 0], [1, 0], [0, 1], [3, 0], [0, 2], [0, 1], [1, 0], [2, 1], [0, 3], [0, 0.5]], dtype=np.float64
    )
    groups = ["mono"] * 5 + ["poly"] * 5
    return logits, labels, groups


def test_metrics_match_scikit_learn() -> None:
    logits, labels, groups = _known_case()
    metrics = classification_metrics(logits, labels, groups, ["ok", "defect"])
    predicted = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted)) == pytest.approx(0.7)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, softmax(logits)[:, 1]))
    assert metrics["confusion_matrix"] == [[4, 2], [1, 3]]
    assert metrics["per_class"]["defect"]["recall"] == pytest.approx(0.75)
    assert metrics["slices"]["mono"]["accuracy"] == pytest.approx(0.8)
    assert metrics["slices"]["poly"]["accuracy"] == pytest.approx(0.6)
    assert metrics["slice_gap"] == pytest.approx(0.2)


def test_expected_calibration_error_of_a_known_case() -> None:
    # Every prediction has confidence 0.9 and half are right: ECE = |0.9 - 0.5| = 0.4.
    p = 0.9
    logits = np.log(np.array([[p, 1 - p]] * 10))
    labels = np.array([0] * 5 + [1] * 5)
    metrics = classification_metrics(logits, labels, ["all"] * 10, ["a", "b"], calibration_bins=10)
    assert metrics["ece"] == pytest.approx(0.4, abs=1e-5)
