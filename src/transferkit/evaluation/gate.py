"""Quality gate: absolute rules plus "no worse than the baseline (production) model".

The rules cover the headline metrics and the operating point evaluate chose (recall, false
alarms, review fraction on test), so a model that misses the point its line was promised stops
here.

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


# The operating point's test figures (metrics.json decision.test.<name>.value) the gate reads,
# with the direction that is better; recall and false alarms exist only with positive classes.
DECISION_RULES = {"recall": ">=", "false_alarm": "<=", "review": "<="}


def decision_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The operating point's figures on test; empty for metrics written before it existed.
    A figure with nothing to count (no positives on test) is NaN, which fails its rule. The review
    fraction is the whole rule's, out-of-distribution reviews included, where evaluate measured it."""
    test = metrics.get("decision", {}).get("test", {})
    values = {
        name: float("nan") if test[name]["value"] is None else test[name]["value"]
        for name in DECISION_RULES
        if name in test
    }
    if "review" in values and "ood" in metrics:  # what a person gets includes the OOD threshold's share
        values["review"] = metrics["ood"]["test_review"]
    return values


def check_gate(metrics: dict[str, Any], gate: GateParams, baseline: dict[str, Any] | None) -> list[RuleResult]:
    results = [
        _rule("min_accuracy", metrics["accuracy"], gate.min_accuracy, ">="),
        _rule("min_macro_f1", metrics["macro_f1"], gate.min_macro_f1, ">="),
        _rule("max_slice_gap", metrics["slice_gap"], gate.max_slice_gap, "<="),
    ]
    decision = decision_values(metrics)
    limits = {"recall": gate.min_recall, "false_alarm": gate.max_false_alarm, "review": gate.max_review_fraction}
    for name, comparison in DECISION_RULES.items():
        if name in decision and limits[name] is not None:
            prefix = "min" if comparison == ">=" else "max"
            suffix = "_fraction" if name == "review" else ""
            results.append(_rule(f"{prefix}_{name}{suffix}", decision[name], limits[name], comparison))
    if baseline is not None:
        for metric in ("accuracy", "macro_f1"):
            results.append(
                _rule(f"no_regression_{metric}", metrics[metric], baseline[metric] - gate.max_regression, ">=")
            )
        # A production model evaluated before the operating point existed has nothing to compare.
        for name, value in decision_values(baseline).items():
            if name in decision:
                comparison = DECISION_RULES[name]
                allowed = value - gate.max_regression if comparison == ">=" else value + gate.max_regression
                results.append(_rule(f"no_regression_{name}", decision[name], allowed, comparison))
    return results


def gate_report(results: list[RuleResult]) -> dict[str, Any]:
    return {"passed": all(r.passed for r in results), "rules": [asdict(r) for r in results]}
