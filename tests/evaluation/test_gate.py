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
