"""An exported model in ONNX Runtime, configured entirely from its own metadata.

Execution providers follow the device setting; when CUDA (or TensorRT) was asked for and the
session came up without it, this fails instead of silently running on the CPU. On a GPU the
session runs through IO binding, so the outputs are allocated once on the device and copied
back in one transfer instead of ONNX Runtime's per-call staging.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from transferkit.errors import ModelError
from transferkit.export.contract import INPUT_NAME, OUTPUT_NAMES, read_metadata
from transferkit.preprocessing import load_for_model

REQUIRED_METADATA = ("class_names", "image_size", "resize")
DEVICES = ("auto", "cpu", "cuda")


@functools.cache
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (the CUDA provider cannot start without it)."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def providers_for(device: str, tensorrt: bool = False) -> list[str]:
    """Execution providers for ``device``; a GPU provider that was asked for must exist."""
    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    # onnxruntime-gpu lists CUDA even where no driver exists; "auto" must not try it there.
    available = [p for p in ort.get_available_providers() if p == "CPUExecutionProvider" or cuda_driver_present()]
    if device == "cpu":
        if tensorrt:
            raise ModelError("TensorRT needs a GPU; drop --tensorrt or use --device cuda")
        return ["CPUExecutionProvider"]
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise ModelError("TensorRT requested but onnxruntime has no TensorRT provider here; drop --tensorrt")
        wanted.insert(0, "TensorrtExecutionProvider")
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
    """A checked, exported transferkit model: the ONNX checker and the metadata contract pass."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0, tensorrt: bool = False) -> None:
        import onnx

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        model_bytes = path.read_bytes()
        try:
            proto = onnx.load_from_string(model_bytes)
            onnx.checker.check_model(proto)
        except Exception as error:  # onnx raises DecodeError, ValidationError and others for damaged files
            raise ModelError(f"{path} is not a readable ONNX model: {error}") from None
        self.path = path
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        self.metadata: dict[str, Any] = read_metadata(proto)
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ModelError(f"{path} lacks transferkit metadata {missing}; export it with `transferkit export`")
        if device == "cuda":
            ort.preload_dlls()
        self.session = create_session(model_bytes, providers_for(device, tensorrt), threads)
        self.providers: list[str] = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError(f"CUDA was requested but the session runs on {self.providers}")
        self.on_gpu = self.providers[0] != "CPUExecutionProvider"
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.resize = str(self.metadata["resize"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) for uint8 NCHW images at the model's resolution."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not self.on_gpu:
            logits, probabilities = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
            return logits, probabilities
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, images)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        logits, probabilities = binding.copy_outputs_to_cpu()
        return logits, probabilities

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def preprocess(self, source: str | Path | bytes, max_pixels: int | None = None) -> np.ndarray:
        return load_for_model(source, self.image_size, self.resize, max_pixels)

    def label(self, probabilities: np.ndarray) -> Prediction:
        """One image's probabilities as a named prediction."""
        return Prediction(
            self.class_names[int(probabilities.argmax())],
            dict(zip(self.class_names, map(float, probabilities), strict=True)),
        )

    def predict(self, images: np.ndarray) -> list[Prediction]:
        return [self.label(p) for p in self.run(images)[1]]

    def warm_up(self) -> None:
        """One inference on a blank image, checking the output contract (catches a model that loads but is wrong)."""
        logits, probabilities = self.run(np.zeros((1, *self.input_shape), dtype=np.uint8))
        expected = (1, len(self.class_names))
        if logits.shape != expected or probabilities.shape != expected:
            raise ModelError(
                f"{self.path}: outputs have shape {logits.shape}/{probabilities.shape}, expected {expected} "
                "from its class_names metadata; re-export the model"
            )
        if not (np.isfinite(probabilities).all() and abs(float(probabilities.sum()) - 1.0) < 1e-3):
            raise ModelError(f"{self.path}: warm-up probabilities are not a distribution: {probabilities.tolist()}")
