"""evaluate: the best checkpoint on the held-out test split.

Writes metrics.json (committed), per-sample predictions (the dvc confusion plot), a confusion
matrix PNG, and the test logits that export checks the ONNX model against.
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
from transferkit.stages.common import configure_threads, console, main, resolve_device
from transferkit.stages.train import MODEL
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint


@torch.inference_mode()
def predict_logits(model: ImageClassifier, images: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Full-model logits for uint8 NCHW images, in batches, with a progress bar."""
    model.to(device).eval().to(memory_format=torch.channels_last)
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="evaluate", unit="batch", dynamic_ncols=True):
        batch = images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(model(batch).float().cpu())
    return torch.cat(chunks).numpy()


def run(params: Params) -> dict[str, Any]:
    configure_threads(params.train.num_threads)
    device = resolve_device(params.train.device)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    model = model_from_checkpoint(payload)
    test_idx = prepared.indices("test")
    labels = prepared.labels(test_idx)
    logits = predict_logits(model, prepared.images_chw(test_idx), params.evaluate.batch_size, device)
    groups = prepared.groups(test_idx)
    metrics = classification_metrics(logits, labels, groups, prepared.class_names, params.evaluate.calibration_bins)

    out = Path(params.paths.evaluate)
    write_json(out / "metrics.json", metrics)
    with atomic_write(params.paths.test_logits) as handle:
        np.save(handle, logits.astype(np.float32))
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
