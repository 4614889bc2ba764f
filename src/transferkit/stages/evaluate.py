"""evaluate: the best checkpoint on the held-out test split.

Logits are divided by the temperature that train fitted on the validation split, as the exported
model does. Writes metrics.json (committed, with the precision it was computed at and the
calibration error before and after the temperature), per-sample predictions (the dvc confusion
plot), confusion matrix and reliability diagram PNGs, and exact fp32 test logits that export
checks the ONNX model against whatever precision evaluation ran at.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from transferkit.evaluation.plots import confusion_matrix_figure, reliability_figure, save_figure
from transferkit.evaluation.predict import predict_logits, reference_logits
from transferkit.io import atomic_write, write_json
from transferkit.stages.common import RELIABILITY_PNG, configure_threads, console, main
from transferkit.training.checkpoint import MODEL, checkpoint_temperature, load_checkpoint, model_from_checkpoint
from transferkit.training.compute import Compute


def run(params: Params) -> dict[str, Any]:
    configure_threads(params.train.num_threads)
    compute = Compute.from_params(params.train)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    model = model_from_checkpoint(payload)
    test_idx = prepared.indices("test")
    labels = prepared.labels(test_idx)
    images = prepared.images_chw(test_idx)
    raw = predict_logits(model, images, params.evaluate.batch_size, compute)
    temperature = checkpoint_temperature(payload)
    logits = raw / temperature
    groups = prepared.groups(test_idx)
    bins = params.evaluate.calibration_bins
    metrics = classification_metrics(logits, labels, groups, prepared.class_names, bins)
    metrics.update(
        ece_uncalibrated=expected_calibration_error(softmax(raw), labels, bins),
        temperature=temperature,
        augment_preset=payload["meta"]["augment_preset"],
        **compute.describe(),
    )
    reference = reference_logits(model, images, params.evaluate.batch_size, compute, raw) / temperature

    out = Path(params.paths.evaluate)
    write_json(out / "metrics.json", metrics)
    with atomic_write(params.paths.test_logits) as handle:
        np.save(handle, reference.astype(np.float32))
    names = prepared.class_names
    with atomic_write(out / "predictions.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "group", "actual", "predicted"])
        for file, group, actual, predicted in zip(
            prepared.files(test_idx), groups, labels, logits.argmax(1), strict=True
        ):
            writer.writerow([file, group, names[actual], names[predicted]])
    title = f"test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    save_figure(confusion_matrix_figure(metrics["confusion_matrix"], names, title), out / "confusion_matrix.png")
    reliability = {"raw": softmax(raw), f"temperature {temperature:.2f}": softmax(logits)}
    eces = dict(zip(reliability, (metrics["ece_uncalibrated"], metrics["ece"]), strict=True))
    save_figure(reliability_figure(reliability, labels, bins, eces), out / RELIABILITY_PNG)
    console.print(
        f"test: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f} (temperature {temperature:.3f}), "
        f"slice gap {metrics['slice_gap']:.4f} on {metrics['count']} images",
        highlight=False,
    )
    return metrics


if __name__ == "__main__":
    main(run)
