"""The committed model's decision rule: what other choices would cost, and whether it survives fp16 and int8.

Two measurements on the pipeline's outputs (run `dvc repro` first):

1. The export stage at fp32, fp16 and int8 (params.yaml's export settings, into a temp folder):
   each one's logit parity and the fraction of test images whose in-graph decision differs from
   the rule on fp32 PyTorch's probabilities (the stage's own check, `export.max_decision_flips`).
2. The rule chosen on validation under other `decision.*` settings (the recall bound's
   confidence, the review band's target accuracy), each measured on test with exact intervals,
   from the fp32 export's calibrated probabilities on both splits.

    .venv/bin/python benchmarks/operating_point.py

Writes benchmarks/results/operating_point.json and .md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from int8 import export_each
from results import write_results
from transferkit.config import DecisionParams, load_params
from transferkit.contract import OUTPUT_NAMES
from transferkit.data.cache import PreparedData
from transferkit.evaluation.operating_point import choose_rule, decision_figures, positive_classes
from transferkit.inference import onnx_outputs

PRECISIONS = ("fp32", "fp16", "int8")
CONFIDENCES = (0.5, 0.8, 0.9, 0.95)
REVIEW_TARGETS = (0.95, 0.97, 0.98, 0.99)


def choices(model: Path) -> list[dict[str, Any]]:
    """The rule under each setting, chosen on val and measured on test."""
    params = load_params("params.yaml")
    prepared = PreparedData.load(params.paths.prepared)
    splits = {}
    for split in ("val", "test"):
        indices = prepared.indices(split)
        probabilities = onnx_outputs(model.read_bytes(), prepared.images_chw(indices).numpy(), [OUTPUT_NAMES[1]])
        splits[split] = probabilities[OUTPUT_NAMES[1]].astype("float64"), prepared.labels(indices)
    positive = positive_classes(params.decision.positive, params.data.source, prepared.class_names)
    settings = [{"confidence": c} for c in CONFIDENCES] + [{"review": {"target_accuracy": t}} for t in REVIEW_TARGETS]
    rows = []
    for setting in settings:
        decision = DecisionParams(**{**params.decision.model_dump(), **setting})
        choice = choose_rule(*splits["val"], positive, decision)
        rows.append(
            {
                "setting": setting,
                "threshold": choice.rule.threshold,
                "review_band": [choice.rule.lower, choice.rule.upper],
                "test": decision_figures(choice.rule, *splits["test"]),
            }
        )
    return rows


def _cell(figure: dict[str, Any]) -> str:
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def _setting(setting: dict[str, Any], prefix: str = "decision.") -> str:
    return ", ".join(
        _setting(value, f"{prefix}{key}.") if isinstance(value, dict) else f"{prefix}{key} {value}"
        for key, value in setting.items()
    )


def table(reports: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| precision | parity | decisions that differ from fp32 PyTorch |",
        "|---|---|---|",
    ]
    for precision, report in reports.items():
        parity = report["parity"]
        check = (
            f"accuracy drop {parity['accuracy_drop'] * 100:.2f} points"
            if "accuracy_drop" in parity
            else f"max abs logit diff {parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.2e})"
        )
        flips = report["decision"]
        lines.append(f"| {precision} | {check} | {flips['flips']} of {flips['count']} ({flips['flip_fraction']:.2%}) |")
    lines += [
        "",
        "| setting (the rest as params.yaml) | threshold | review band | test recall | test false alarms | review "
        "| accuracy on the rest |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        test, (lower, upper) = row["test"], row["review_band"]
        lines.append(
            f"| {_setting(row['setting'])} | {row['threshold']:.3f} | [{lower:.3f}, {upper:.3f}) | "
            f"{_cell(test['recall'])} | {_cell(test['false_alarm'])} | {_cell(test['review'])} | "
            f"{_cell(test['auto_accuracy'])} |"
        )
    return lines


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        reports = export_each(Path(folder), PRECISIONS)
        rows = choices(Path(reports["fp32"]["model"]))
    for report in reports.values():
        report.pop("model")  # a temp folder's path, gone with it
    write_results("operating_point", {"precisions": reports, "choices": rows}, table(reports, rows))


if __name__ == "__main__":
    main()
