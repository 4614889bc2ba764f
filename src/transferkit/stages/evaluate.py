"""evaluate: the best checkpoint on the held-out test split, and the decision rule it ships with.

Logits are divided by the temperature that train fitted on the validation split, as the exported
model does. The operating point and review band (decision.*) are chosen on the validation split
and measured on test (evaluation/operating_point.py). Writes metrics.json (committed, with the
precision it was computed at, the calibration error before and after the temperature, and the
rule with its figures and intervals), per-sample predictions with probabilities and decision
(the dvc confusion plot), ROC / precision-recall / risk-coverage curves (CSV for dvc plots and
one PNG), confusion matrix, reliability and error gallery PNGs, and exact fp32 test logits that
export checks the ONNX model against whatever precision evaluation ran at.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.decision import DecisionRule
from transferkit.evaluation.gallery import gallery_figure, worst_mistakes
from transferkit.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from transferkit.evaluation.operating_point import choose_rule, operating_point_metrics, positive_classes
from transferkit.evaluation.plots import (
    confusion_matrix_figure,
    operating_point_figure,
    reliability_figure,
    risk_coverage,
    save_figure,
)
from transferkit.evaluation.predict import predict_embedded, predict_heatmaps, reference_embedded
from transferkit.io import atomic_write, write_json
from transferkit.models.classifier import ImageClassifier
from transferkit.ood import OodReference, fit_reference
from transferkit.stages.common import ERRORS_PNG, RELIABILITY_PNG, configure_threads, console, main
from transferkit.training.checkpoint import MODEL, checkpoint_temperature, load_checkpoint, model_from_checkpoint
from transferkit.training.compute import Compute

# Curves dvc plots draws (paths.evaluate/<name>.csv: x column, y column); the PNG has them all.
CURVES = {
    "roc": ("false_alarm", "recall"),
    "precision_recall": ("recall", "precision"),
    "risk_coverage": ("coverage", "risk"),
}
OPERATING_POINT_PNG = "operating_point.png"


def _write_csv(path: Path, header: list[str], rows: Any) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_predictions(
    path: Path, prepared: PreparedData, test_idx: np.ndarray, probabilities: np.ndarray, rule: DecisionRule
) -> None:
    """One row per test image: file, slice, true and predicted class, every probability, decision."""
    names, labels = prepared.class_names, prepared.labels(test_idx)
    decisions = rule.decide(probabilities)
    rows = (
        [file, group, names[actual], names[row.argmax()], *(f"{p:.6f}" for p in row), rule.names[decision]]
        for file, group, actual, row, decision in zip(
            prepared.files(test_idx), prepared.groups(test_idx), labels, probabilities, decisions, strict=True
        )
    )
    _write_csv(path, ["file", "group", "actual", "predicted", *(f"p_{n}" for n in names), "decision"], rows)


def write_curves(
    out: Path, rule: DecisionRule, probabilities: np.ndarray, labels: np.ndarray, test: dict[str, Any]
) -> None:
    """ROC and precision-recall of the positive score (with positive classes) and risk-coverage
    of the decision, as CSVs and one PNG with the chosen point marked on each."""
    scores = rule.scores(probabilities).astype(np.float64)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    points: dict[str, tuple[float, float]] = {}
    if rule.positive:
        is_positive = np.isin(labels, rule.positive)
        false_alarm, recall, _ = roc_curve(is_positive, scores)
        precision, recall_pr, _ = precision_recall_curve(is_positive, scores)
        curves["roc"] = false_alarm, recall
        curves["precision_recall"] = recall_pr[::-1], precision[::-1]
        flagged = test["flagged"]["count"]
        points["roc"] = test["false_alarm"]["value"], test["recall"]["value"]
        points["precision_recall"] = test["recall"]["value"], test["recall"]["count"] / max(flagged, 1)
        # How far a cell is from the threshold in log-odds: the cells a widening band reviews first.
        logit = np.log(np.clip(scores, 1e-7, 1 - 1e-7) / np.clip(1 - scores, 1e-7, 1))
        threshold = np.clip(rule.threshold, 1e-7, 1 - 1e-7)
        confidence = np.abs(logit - np.log(threshold / (1 - threshold)))
        correct = (scores >= rule.threshold) == is_positive
    else:
        confidence, correct = scores, probabilities.argmax(1) == labels
    curves["risk_coverage"] = risk_coverage(confidence, correct)
    auto = test["auto_accuracy"]["value"]
    points["risk_coverage"] = 1 - test["review"]["value"], (1 - auto) if auto is not None else 0.0
    for name, (x_name, y_name) in CURVES.items():
        if name in curves:
            x, y = curves[name]
            _write_csv(
                out / f"{name}.csv", [x_name, y_name], ((f"{a:.6f}", f"{b:.6f}") for a, b in zip(x, y, strict=True))
            )
    title = f"test split, threshold {rule.threshold:.3f}, review band [{rule.lower:.3f}, {rule.upper:.3f})"
    save_figure(operating_point_figure(curves, points, CURVES, title), out / OPERATING_POINT_PNG)


def write_gallery(
    path: Path,
    model: ImageClassifier,
    prepared: PreparedData,
    test_idx: np.ndarray,
    probabilities: np.ndarray,
    rule: DecisionRule,
    temperature: float,
    compute: Compute,
) -> None:
    labels, names = prepared.labels(test_idx), prepared.class_names
    worst = worst_mistakes(rule, probabilities, labels)
    images = prepared.images_chw(test_idx[worst])
    heatmaps = predict_heatmaps(model, images, temperature, compute) if len(worst) else np.zeros((0,))
    files, scores, decisions = (
        prepared.files(test_idx[worst]),
        rule.scores(probabilities[worst]),
        rule.decide(probabilities[worst]),
    )
    titles = [
        f"{Path(file).name}\n{names[labels[i]]}: score {score:.3f} -> {rule.names[decision]}"
        for file, i, score, decision in zip(files, worst, scores, decisions, strict=True)
    ]
    explained = [rule.positive or (int(probabilities[i].argmax()),) for i in worst]
    heading = f"worst wrong automatic decisions on the test split ({len(worst)} shown)"
    save_figure(gallery_figure(images.numpy(), heatmaps, titles, explained, heading), path, dpi=80)  # photos: big PNGs


def fit_ood(
    params: Params, prepared: PreparedData, model: ImageClassifier, compute: Compute, val_embeddings: np.ndarray
) -> tuple[OodReference, np.ndarray] | None:
    """The OOD reference (decision.ood) on the training split's embeddings, thresholded on val's,
    and val's scores (the drift reference's)."""
    ood = params.decision.ood
    if ood.method is None:
        return None
    train_idx = prepared.indices("train")
    _, embeddings = predict_embedded(
        model, prepared.images_chw(train_idx), params.evaluate.batch_size, compute, "embed train"
    )
    reference = fit_reference(
        ood.method, embeddings, prepared.labels(train_idx), ood.k, ood.bank_size, params.data.seed
    )
    val_scores = reference.score(val_embeddings)
    return reference.with_threshold(val_scores, ood.in_distribution_rate), val_scores


def drift_reference(val_probabilities: np.ndarray, val_ood: np.ndarray | None) -> dict[str, Any]:
    """What a server compares its recent traffic with (contract.DRIFT_REFERENCE): the validation
    split's sorted top-class confidences and, with an OOD reference, its OOD scores."""
    sample = {"confidence": val_probabilities.max(1)} | ({} if val_ood is None else {"ood_score": val_ood})
    return {"split": "val", **{key: [round(float(v), 6) for v in np.sort(values)] for key, values in sample.items()}}


def ood_metrics(reference: OodReference, rule: DecisionRule, probabilities: np.ndarray, scores: np.ndarray) -> dict:
    """What the OOD threshold adds on the (in-distribution) test split: the share it sends to
    review, and the review share with it and without it."""
    return {
        **reference.as_metadata(),
        "test_over_threshold": float((scores > reference.threshold).mean()),
        "test_review": float((rule.decide(probabilities, scores) == rule.review_code).mean()),
        "test_review_without_ood": float((rule.decide(probabilities) == rule.review_code).mean()),
    }


def run(params: Params) -> dict[str, Any]:
    configure_threads(params.train.num_threads)
    compute = Compute.from_params(params.train)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    model = model_from_checkpoint(payload)
    test_idx, val_idx = prepared.indices("test"), prepared.indices("val")
    labels = prepared.labels(test_idx)
    images = prepared.images_chw(test_idx)
    batch_size = params.evaluate.batch_size
    raw, embeddings = predict_embedded(model, images, batch_size, compute, "evaluate")
    temperature = checkpoint_temperature(payload)
    logits = raw / temperature
    groups = prepared.groups(test_idx)
    bins = params.evaluate.calibration_bins
    names = prepared.class_names
    metrics = classification_metrics(logits, labels, groups, names, bins)
    metrics.update(
        ece_uncalibrated=expected_calibration_error(softmax(raw), labels, bins),
        temperature=temperature,
        augment_preset=payload["meta"]["augment_preset"],
        **compute.describe(),
    )
    val_raw, val_embeddings = predict_embedded(model, prepared.images_chw(val_idx), batch_size, compute, "validate")
    val = (softmax(val_raw / temperature), prepared.labels(val_idx))
    positive = positive_classes(params.decision.positive, params.data.source, names)
    choice = choose_rule(*val, positive, params.decision)
    probabilities = softmax(logits)
    metrics["decision"] = operating_point_metrics(choice, names, params.decision, val, (probabilities, labels, groups))
    reference, reference_embeddings = reference_embedded(model, images, batch_size, compute, (raw, embeddings))
    reference = reference / temperature
    fitted = fit_ood(params, prepared, model, compute, val_embeddings)
    val_ood = None
    if fitted is not None:
        ood, val_ood = fitted
        rule = replace(choice.rule, ood_threshold=ood.threshold)
        metrics["decision"]["rule"] = rule.as_metadata(names)
        metrics["ood"] = ood_metrics(ood, rule, probabilities, ood.score(embeddings))
        ood.save(params.paths.ood_reference)
    write_json(params.paths.drift_reference, drift_reference(val[0], val_ood))
    with atomic_write(params.paths.test_embeddings) as handle:
        np.save(handle, reference_embeddings.astype(np.float32))

    out = Path(params.paths.evaluate)
    write_json(out / "metrics.json", metrics)
    with atomic_write(params.paths.test_logits) as handle:
        np.save(handle, reference.astype(np.float32))
    write_predictions(out / "predictions.csv", prepared, test_idx, probabilities, choice.rule)
    write_curves(out, choice.rule, probabilities, labels, metrics["decision"]["test"])
    write_gallery(out / ERRORS_PNG, model, prepared, test_idx, probabilities, choice.rule, temperature, compute)
    title = f"test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    save_figure(confusion_matrix_figure(metrics["confusion_matrix"], names, title), out / "confusion_matrix.png")
    reliability = {"raw": softmax(raw), f"temperature {temperature:.2f}": probabilities}
    eces = dict(zip(reliability, (metrics["ece_uncalibrated"], metrics["ece"]), strict=True))
    save_figure(reliability_figure(reliability, labels, bins, eces), out / RELIABILITY_PNG)
    console.print(
        f"test: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f} (temperature {temperature:.3f}), "
        f"slice gap {metrics['slice_gap']:.4f} on {metrics['count']} images",
        highlight=False,
    )
    console.print(describe_decision(metrics["decision"]), highlight=False)
    if "ood" in metrics:
        found = metrics["ood"]
        console.print(
            f"ood ({found['method']}): threshold {found['threshold']:.4g} (val {found['in_distribution_rate']:.0%}), "
            f"{found['test_over_threshold']:.3f} of test over it; review {found['test_review_without_ood']:.3f} -> "
            f"{found['test_review']:.3f} with it",
            highlight=False,
        )
    return metrics


def describe_decision(decision: dict[str, Any]) -> str:
    """One line on what the chosen rule does on test."""
    test, rule = decision["test"], decision["rule"]
    lower, upper = rule["review_band"]
    parts = [f"decision: threshold {rule['threshold']:.3f}, review band [{lower:.3f}, {upper:.3f})"]
    if "recall" in test:
        parts.append(f"test recall {test['recall']['value']:.3f}, false alarms {test['false_alarm']['value']:.3f}")
    parts.append(f"review {test['review']['value']:.3f}")
    if test["auto_accuracy"]["value"] is not None:
        parts.append(f"accuracy on the rest {test['auto_accuracy']['value']:.3f}")
    if not (decision["threshold_met_on_val"] and decision["band_met_on_val"]):
        parts.append("[yellow]validation could not meet decision.* targets (metrics.json: *_met_on_val)[/]")
    return ", ".join(parts)


if __name__ == "__main__":
    main(run)
