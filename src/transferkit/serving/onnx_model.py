"""An exported model in ONNX Runtime, configured entirely from its own metadata.

Execution providers follow the device setting; when CUDA was asked for and the session came up
without it, this fails instead of silently running on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from transferkit.errors import ModelError
from transferkit.export.onnx_export import INPUT_NAME, read_metadata
from transferkit.preprocessing import load_for_model

REQUIRED_METADATA = ("class_names", "image_size", "resize")


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelError("device 'cuda' requested but onnxruntime has no CUDA provider here; use --device cpu")
    return [p for p in wanted if p in available]


def create_session(model: bytes, providers: list[str], threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session with ``threads`` intra-op threads (0 = ORT's choice), quiet logging."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=providers)


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]


class OnnxClassifier:
    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0) -> None:
        import onnx

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as error:  # onnx raises DecodeError and others for damaged files
            raise ModelError(f"{path} is not a readable ONNX model: {error}") from None
        self.metadata: dict[str, Any] = read_metadata(proto)
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ModelError(f"{path} lacks transferkit metadata {missing}; export it with `transferkit export`")
        if device == "cuda":
            ort.preload_dlls()
        self.session = create_session(proto.SerializeToString(), providers_for(device), threads)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelError(f"CUDA was requested but the session runs on {self.session.get_providers()}")
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.resize = str(self.metadata["resize"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits for uint8 NCHW images at the model's resolution."""
        logits, _ = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})
        return logits

    def preprocess(self, source: str | Path | bytes) -> np.ndarray:
        return load_for_model(source, self.image_size, self.resize)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        _, probabilities = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})
        return [
            Prediction(self.class_names[int(p.argmax())], dict(zip(self.class_names, map(float, p), strict=True)))
            for p in probabilities
        ]
