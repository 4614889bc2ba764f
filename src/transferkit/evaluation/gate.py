"""Quality gate: absolute rules plus "no worse than the baseline (production) model".

Every rule is evaluated (not just the first failure) so the report lists all that broke.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit.config import GateParams
from transferkit.errors import ConfigError
from transferkit.io import read_json


@dataclass(frozen=True)
class RuleResult:
    rule: str
    value: float
    threshold: float
    comparison: str  # ">=" or "<="
    passed: bool

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.rule}: {self.value:.4f} (must be {self.comparison} {self.threshold:.4f}) {verdict}"


def _rule(rule: str, value: float, threshold: float, comparison: str) -> RuleResult:
    passed = value >= threshold if comparison == ">=" else value <= threshold
    return RuleResult(rule, float(value), float(threshold), comparison, passed)


def load_baseline(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(
            f"gate.baseline_metrics points to {path}, which does not exist; "
            "set it to the production model's metrics.json or to null"
        )
    return read_json(path)


def check_gate(metrics: dict[str, Any], gate: GateParams, baseline: dict[str, Any] | None) -> list[RuleResult]:
    results = [
        _rule("min_accuracy", metrics["accuracy"], gate.min_accuracy, ">="),
        _rule("min_macro_f1", metrics["macro_f1"], gate.min_macro_f1, ">="),
        _rule("max_slice_gap", metrics["slice_gap"], gate.max_slice_gap, "<="),
    ]
    if baseline is not None:
        for metric in ("accuracy", "macro_f1"):
            results.append(
                _rule(f"no_regression_{metric}", metrics[metric], baseline[metric] - gate.max_regression, ">=")
            )
    return results


def gate_report(results: list[RuleResult]) -> dict[str, Any]:
    return {"passed": all(r.passed for r in results), "rules": [asdict(r) for r in results]}
