"""A trained classifier's logits on uint8 images, at the evaluation precision and exactly."""

from __future__ import annotations

import numpy as np
import torch

from transferkit.inference import run_batched
from transferkit.models.classifier import ImageClassifier
from transferkit.training.compute import Compute


@torch.inference_mode()
def predict_logits(model: ImageClassifier, images: torch.Tensor, batch_size: int, compute: Compute) -> np.ndarray:
    """Full-model logits for uint8 NCHW images at ``compute``'s precision, in batches, with a progress bar."""
    compute.place_model(model).eval()

    def logits(batch: torch.Tensor) -> torch.Tensor:
        with compute.autocast():
            return model(compute.to_device(batch)).float().cpu()

    return run_batched(logits, images, batch_size, f"evaluate ({compute.precision})").numpy()


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


@torch.inference_mode()
def predict_heatmaps(model: ImageClassifier, images: torch.Tensor, temperature: float, compute: Compute) -> np.ndarray:
    """Class activation maps (N, classes, h, w) in calibrated-logit units, as the exported
    ``heatmap`` output has them; fp32, for the handful of images a gallery shows."""
    compute.place_model(model).eval()
    with compute.exact():
        maps = model.class_maps(model.feature_map(compute.to_device(images))) / temperature
    return maps.float().cpu().numpy()
