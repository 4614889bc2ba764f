"""The gate's rules, absolute and against a baseline, and a missing baseline named."""

from __future__ import annotations

import pytest

from transferkit.config import GateParams
from transferkit.errors import ConfigError
from transferkit.evaluation.gate import check_gate, gate_report, load_baseline
from transferkit.io import write_json


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


def _with_decision(metrics: dict, recall: float | None, false_alarm: float, review: float) -> dict:
    figures = {"review": {"value": review}}
    if recall is not None:
        figures |= {"recall": {"value": recall}, "false_alarm": {"value": false_alarm}}
    return {**metrics, "decision": {"test": figures}}


def test_operating_point_rules_name_the_rule_and_the_numbers() -> None:
    gate = GateParams(min_recall=0.93, max_false_alarm=0.4, max_review_fraction=0.5)
    passing = _with_decision(_metrics(0.9, 0.85, 0.05), 0.96, 0.37, 0.45)
    assert gate_report(check_gate(passing, gate, None))["passed"]
    results = check_gate(_with_decision(_metrics(0.9, 0.85, 0.05), 0.92, 0.41, 0.55), gate, None)
    failed = {r.rule: r.describe() for r in results if not r.passed}
    assert set(failed) == {"min_recall", "max_false_alarm", "max_review_fraction"}
    assert failed["min_recall"] == "min_recall: 0.9200 (must be >= 0.9300) FAILED"
    # Without positive classes only the review fraction applies; a null limit turns a rule off.
    confidence_only = {r.rule for r in check_gate(_with_decision(_metrics(0.9, 0.85, 0.0), None, 0, 0.2), gate, None)}
    assert "max_review_fraction" in confidence_only and "min_recall" not in confidence_only
    off = GateParams(min_recall=None, max_false_alarm=None, max_review_fraction=None)
    assert {r.rule for r in check_gate(passing, off, None)} == {"min_accuracy", "min_macro_f1", "max_slice_gap"}


def test_a_test_split_without_positives_fails_the_recall_rule() -> None:
    metrics = {**_metrics(0.9, 0.85, 0.0), "decision": {"test": {"recall": {"value": None}, "review": {"value": 0}}}}
    [recall] = [r for r in check_gate(metrics, GateParams(), None) if r.rule == "min_recall"]
    assert not recall.passed and "nan" in recall.describe()


def test_operating_point_does_not_regress_against_production() -> None:
    gate = GateParams(min_accuracy=0, min_macro_f1=0, max_slice_gap=1, max_regression=0.01)
    production = _with_decision(_metrics(0.9, 0.85, 0.0), 0.96, 0.37, 0.45)
    worse = _with_decision(_metrics(0.9, 0.85, 0.0), 0.94, 0.39, 0.455)
    failed = {r.rule for r in check_gate(worse, gate, production) if not r.passed}
    assert failed == {"no_regression_recall", "no_regression_false_alarm"}
    # A production model evaluated before the operating point existed is compared on the rest.
    rules = {r.rule for r in check_gate(worse, gate, _metrics(0.9, 0.85, 0.0))}
    assert "no_regression_accuracy" in rules and "no_regression_recall" not in rules


def test_the_review_fraction_counts_what_the_ood_threshold_sends_to_review() -> None:
    """The band alone reviews 0.45; with the images over the OOD threshold a person gets 0.52."""
    gate = GateParams(max_review_fraction=0.5)
    band_only = _with_decision(_metrics(0.9, 0.85, 0.05), 0.96, 0.37, 0.45)
    assert gate_report(check_gate(band_only, gate, None))["passed"]
    with_ood = {**band_only, "ood": {"test_review": 0.52, "test_review_without_ood": 0.45}}
    [review] = [r for r in check_gate(with_ood, gate, None) if r.rule == "max_review_fraction"]
    assert not review.passed and "0.5200" in review.describe()
