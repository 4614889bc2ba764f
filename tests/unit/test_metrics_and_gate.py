"""Metrics against scikit-learn on a known case, and the gate's rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from transferkit.config import GateParams
from transferkit.errors import ConfigError
from transferkit.evaluation.gate import check_gate, gate_report, load_baseline
from transferkit.evaluation.metrics import classification_metrics, softmax
from transferkit.io import write_json


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


def _metrics(accuracy: float, macro_f1: float, gap: float) -> dict:
    return {"accuracy": accuracy, "macro_f1": macro_f1, "slice_gap": gap}


def test_gate_passes_and_fails_on_each_rule() -> None:
    gate = GateParams(min_accuracy=0.85, min_macro_f1=0.8, max_slice_gap=0.1)
    assert gate_report(check_gate(_metrics(0.9, 0.85, 0.05), gate, None))["passed"]
    results = check_gate(_metrics(0.84, 0.85, 0.2), gate, None)
    failed = {r.rule for r in results if not r.passed}
    assert failed == {"min_accuracy", "max_slice_gap"}
    assert "0.8400 (must be >= 0.8500) FAILED" in next(r.describe() for r in results if r.rule == "min_accuracy")


def test_gate_no_regression_against_baseline() -> None:
    gate = GateParams(min_accuracy=0, min_macro_f1=0, max_slice_gap=1, max_regression=0.01)
    baseline = _metrics(0.90, 0.85, 0.0)
    assert gate_report(check_gate(_metrics(0.895, 0.845, 0.0), gate, baseline))["passed"]
    failed = {r.rule for r in check_gate(_metrics(0.88, 0.85, 0.0), gate, baseline) if not r.passed}
    assert failed == {"no_regression_accuracy"}


def test_missing_baseline_file_is_a_clear_error(tmp_path) -> None:
    assert load_baseline(None) is None
    with pytest.raises(ConfigError, match="does not exist"):
        load_baseline(str(tmp_path / "prod.json"))
    write_json(tmp_path / "prod.json", _metrics(0.9, 0.8, 0.0))
    assert load_baseline(str(tmp_path / "prod.json"))["accuracy"] == 0.9
