"""evaluate: the best checkpoint on the held-out test split.

Writes metrics.json (committed, with the precision it was computed at), per-sample predictions
(the dvc confusion plot), a confusion matrix PNG, and exact fp32 test logits that export checks
the ONNX model against whatever precision evaluation ran at.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.evaluation.metrics import classification_metrics
from transferkit.evaluation.plots import confusion_matrix_figure, save_figure
from transferkit.io import atomic_write, write_json
from transferkit.models.classifier import ImageClassifier
from transferkit.stages.common import configure_threads, console, main
from transferkit.training.checkpoint import MODEL, load_checkpoint, model_from_checkpoint
from transferkit.training.compute import Compute


@torch.inference_mode()
def predict_logits(model: ImageClassifier, images: torch.Tensor, batch_size: int, compute: Compute) -> np.ndarray:
    """Full-model logits for uint8 NCHW images at ``compute``'s precision, in batches, with a progress bar."""
    compute.place_model(model).eval()
    chunks = []
    desc = f"evaluate ({compute.precision})"
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        with compute.autocast():
            chunks.append(model(compute.to_device(images[start : start + batch_size])).float().cpu())
    return torch.cat(chunks).numpy()


def reference_logits(
    model: ImageClassifier, images: torch.Tensor, batch_size: int, compute: Compute, logits: np.ndarray
) -> np.ndarray:
    """Exact fp32 logits, what the export's parity check compares ONNX Runtime against.

    The metrics are those of the model as evaluated (bf16 on a GPU by default); bf16 keeps about
    three significant digits, so its logits can never serve as a 1e-4 reference.
    """
    if compute.precision == "fp32" and compute.device.type == "cpu":
        return logits
    with compute.exact():
        return predict_logits(model, images, batch_size, compute.fp32)


def run(params: Params) -> dict[str, Any]:
    configure_threads(params.train.num_threads)
    compute = Compute.from_params(params.train)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    model = model_from_checkpoint(payload)
    test_idx = prepared.indices("test")
    labels = prepared.labels(test_idx)
    images = prepared.images_chw(test_idx)
    logits = predict_logits(model, images, params.evaluate.batch_size, compute)
    groups = prepared.groups(test_idx)
    metrics = classification_metrics(logits, labels, groups, prepared.class_names, params.evaluate.calibration_bins)
    metrics.update(compute.describe())
    reference = reference_logits(model, images, params.evaluate.batch_size, compute, logits)

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
    console.print(
        f"test: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, ECE {metrics['ece']:.4f}, "
        f"slice gap {metrics['slice_gap']:.4f} on {metrics['count']} images",
        highlight=False,
    )
    return metrics


if __name__ == "__main__":
    main(run)
