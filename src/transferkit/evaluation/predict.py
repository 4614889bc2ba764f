"""A trained classifier's logits and embeddings on uint8 images, at the evaluation precision and exactly."""

from __future__ import annotations

import numpy as np
import torch

from transferkit.inference import run_batched
from transferkit.models.classifier import ImageClassifier
from transferkit.training.compute import Compute


def reference_embedded(
    model: ImageClassifier,
    images: torch.Tensor,
    batch_size: int,
    compute: Compute,
    evaluated: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact fp32 logits and embeddings, what the export's parity check compares ONNX Runtime
    against (``evaluated``: what ``predict_embedded`` gave at ``compute``'s precision).

    The metrics are those of the model as evaluated (bf16 on a GPU by default); bf16 keeps about
    three significant digits, so its logits can never serve as a 1e-4 reference.
    """
    if compute.precision == "fp32" and compute.device.type == "cpu":
        return evaluated
    with compute.exact():
        return predict_embedded(model, images, batch_size, compute.fp32, "reference")


@torch.inference_mode()
def predict_heatmaps(model: ImageClassifier, images: torch.Tensor, temperature: float, compute: Compute) -> np.ndarray:
    """Class activation maps (N, classes, h, w) in calibrated-logit units, as the exported
    ``heatmap`` output has them; fp32, for the handful of images a gallery shows."""
    compute.place_model(model).eval()
    with compute.exact():
        maps = model.class_maps(model.feature_map(compute.to_device(images))) / temperature
    return maps.float().cpu().numpy()


@torch.inference_mode()
def predict_embedded(
    model: ImageClassifier, images: torch.Tensor, batch_size: int, compute: Compute, description: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings (the pooled features the head sees) in one pass: the embedding is
    what the OOD reference is fitted on and scores, and the head applied to it is the model."""
    compute.place_model(model).eval()

    def both(batch: torch.Tensor) -> torch.Tensor:
        with compute.autocast():
            embedding = model.pool(model.feature_map(compute.to_device(batch))).flatten(1)
            return torch.cat([model.head(embedding), embedding], dim=1).float().cpu()

    joined = run_batched(both, images, batch_size, f"{description} ({compute.precision})").numpy()
    classes = model.head[-1].out_features
    return joined[:, :classes], joined[:, classes:]
