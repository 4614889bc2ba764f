"""How well the exported model's OOD score tells ELPV test cells from shifts nobody tuned for.

On the pipeline's outputs (run `dvc repro` first): the exported model's `embedding` output on the
train, val and test splits and on every shift of evaluation/shifts.py (near: ELPV test cells
blurred, inverted, rotated 45 degrees, JPEG quality 5, cropped at twice the scale, with sensor
noise; far: the example datasets, photos from installed packages, uniform noise). Both OOD
methods are fitted on the train embeddings and thresholded on val exactly as evaluate does, and
the softmax's own confidence (one minus the top probability) is the baseline. For each shift:
AUROC against the test cells, the false-positive rate at 95 % true-positive rate, and the share
the model's threshold sends to review; plus the shipped model's own `ood_score` and test accuracy.

    .venv/bin/python benchmarks/ood.py

Writes benchmarks/results/ood.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from results import write_results
from transferkit.config import load_params
from transferkit.contract import EMBEDDING_OUTPUT, OOD_KEY, OOD_OUTPUT, OUTPUT_NAMES, read_metadata
from transferkit.data.cache import PreparedData
from transferkit.evaluation.shifts import NEAR_SHIFTS, far_shifts, near_shift
from transferkit.inference import onnx_outputs
from transferkit.ood import detection_metrics, fit_reference

METHODS = ("mahalanobis", "knn")
WANTED = [OUTPUT_NAMES[1], EMBEDDING_OUTPUT, OOD_OUTPUT]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/export/model.onnx"))
    parser.add_argument("--far-count", type=int, default=200, help="images per far shift")
    args = parser.parse_args()
    params = load_params("params.yaml")
    prepared = PreparedData.load(params.paths.prepared)
    model_bytes = args.model.read_bytes()
    metadata = read_metadata(args.model)
    size = prepared.image_size

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return onnx_outputs(model_bytes, images, WANTED, params.train.num_threads)

    splits = {split: prepared.images_chw(prepared.indices(split)).numpy() for split in ("train", "val", "test")}
    outputs = {split: run(images) for split, images in splits.items()}
    test_labels = prepared.labels(prepared.indices("test"))
    shifted = {name: near_shift(name, splits["test"]) for name in NEAR_SHIFTS}
    shifted |= far_shifts(size, args.far_count, seed=params.data.seed)
    shifted_outputs = {name: run(images) for name, images in shifted.items()}

    ood = params.decision.ood
    scorers = {}
    for method in METHODS:
        reference = fit_reference(
            method,
            outputs["train"][EMBEDDING_OUTPUT],
            prepared.labels(prepared.indices("train")),
            ood.k,
            ood.bank_size,
            params.data.seed,
        )
        reference = reference.with_threshold(
            reference.score(outputs["val"][EMBEDDING_OUTPUT]), ood.in_distribution_rate
        )
        scorers[method] = (lambda found, r=reference: r.score(found[EMBEDDING_OUTPUT]), reference.threshold)
    val_confidence = 1 - outputs["val"][OUTPUT_NAMES[1]].max(1)
    scorers["softmax confidence"] = (
        lambda found: 1 - found[OUTPUT_NAMES[1]].max(1),
        float(np.quantile(val_confidence, ood.in_distribution_rate)),
    )
    scorers["model's ood_score"] = (lambda found: found[OOD_OUTPUT], metadata[OOD_KEY]["threshold"])

    rows: dict[str, dict[str, Any]] = {}
    for scorer, (score, threshold) in scorers.items():
        in_scores = score(outputs["test"])
        rows[scorer] = {
            name: detection_metrics(in_scores, score(found), threshold) for name, found in shifted_outputs.items()
        }
    test_probabilities = outputs["test"][OUTPUT_NAMES[1]]
    building = shifted_outputs["package_photos"]
    result = {
        "model": {"ood": metadata[OOD_KEY], "test_accuracy": metadata["test_metrics"]["accuracy"]},
        "onnx_test_accuracy": float((test_probabilities.argmax(1) == test_labels).mean()),
        "counts": {"test": len(test_labels), **{name: len(images) for name, images in shifted.items()}},
        "near_shifts": list(NEAR_SHIFTS),
        "mean_defective_probability": {
            name: float(found[OUTPUT_NAMES[1]][:, 1:].sum(1).mean()) for name, found in shifted_outputs.items()
        },
        "package_photos_max_defective": float(building[OUTPUT_NAMES[1]][:, 1:].sum(1).max()),
        "methods": rows,
    }
    lines = [
        f"OOD detection, ELPV test cells ({len(test_labels)}) against each shift; "
        f"model ood = {metadata[OOD_KEY]['method']}, threshold {metadata[OOD_KEY]['threshold']:.4g}; "
        f"ONNX test accuracy {result['onnx_test_accuracy']:.4f} (evaluate: {result['model']['test_accuracy']:.4f})",
        "",
        "| shift | images | p(defective) | " + " | ".join(f"{m} AUROC / FPR95 / flagged" for m in scorers) + " |",
        "|---|---:|---:|" + "---|" * len(scorers),
    ]
    for name in shifted:
        figures = [rows[m][name] for m in scorers]
        cells = [f"{f['auroc']:.3f} / {f['fpr_at_95_tpr']:.3f} / {f['shifted_flagged']:.2f}" for f in figures]
        kind = "near" if name in NEAR_SHIFTS else "far"
        lines.append(
            f"| {name} ({kind}) | {len(shifted[name])} | {result['mean_defective_probability'][name]:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    in_flagged = {m: rows[m][next(iter(shifted))]["in_distribution_flagged"] for m in scorers}
    lines += ["", "test cells over each threshold: " + ", ".join(f"{m} {v:.3f}" for m, v in in_flagged.items())]
    write_results("ood", result, lines)


if __name__ == "__main__":
    main()
