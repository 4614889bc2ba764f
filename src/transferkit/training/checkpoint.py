"""Self-describing checkpoints: weights plus everything needed to rebuild and trust them.

``meta`` holds the architecture, class names, input contract (image size, resize method),
params, params hash and data hash; a checkpoint can be loaded with ``weights_only=True`` and
turned back into a model with no other file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transferkit.errors import ModelError
from transferkit.io import atomic_write
from transferkit.models.classifier import ImageClassifier, build_classifier

FORMAT_VERSION = 1
MODEL = "model.pt"  # the trained model in paths.train: what evaluate and export read


def save_checkpoint(path: str | Path, model: ImageClassifier, meta: dict[str, Any], **extra: Any) -> None:
    payload = {"format": FORMAT_VERSION, "meta": meta, "model": model.state_dict(), **extra}
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}; run the train stage first (dvc repro train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ModelError(f"cannot read checkpoint {path}: {error}. Delete it and retrain.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ModelError(f"{path} is not a transferkit checkpoint (format {FORMAT_VERSION})")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> ImageClassifier:
    meta = payload["meta"]
    model = build_classifier(meta["architecture"], "none", len(meta["class_names"]), meta["dropout"])
    model.load_state_dict(payload["model"])
    return model.eval()


def checkpoint_temperature(payload: dict[str, Any]) -> float:
    """The temperature the train stage fitted on the validation split (1.0: not calibrated)."""
    calibration = payload["meta"].get("calibration")
    if calibration is None:
        raise ModelError("this checkpoint predates probability calibration; retrain it (dvc repro train)")
    return float(calibration["temperature"])
