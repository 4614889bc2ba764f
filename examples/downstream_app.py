"""Classify images with an exported transferkit model using only onnxruntime, numpy and Pillow.

Everything this needs (input size, resize method, class names) is read from the .onnx file's own
metadata; transferkit itself is not imported. Copy this file into any app as a starting point:

    python examples/downstream_app.py models/export/model.onnx data/raw/elpv/images/cell0001.png ...

Prints one CSV line per image: file, label, then one probability per class.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

PREFIX = "transferkit."
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def read_contract(session: ort.InferenceSession) -> dict:
    """The model's transferkit metadata: values under the ``transferkit.`` prefix, JSON or plain strings."""
    contract = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if key.startswith(PREFIX):
            try:
                contract[key[len(PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:
                contract[key[len(PREFIX) :]] = value
    return contract


def load_image(path: str, size: int, resize: str) -> np.ndarray:
    """uint8 RGB CHW at ``size`` x ``size``: the preprocessing the model was trained with."""
    with Image.open(path) as image:
        if image.mode in {"I", "I;16", "F"}:  # 16-bit or float grayscale: scale into 8 bits first
            array = np.asarray(image, dtype=np.float32)
            image = Image.fromarray((array * (255.0 / max(float(array.max()), 1.0))).astype(np.uint8))
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESAMPLING[resize])
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def main(model_path: str, image_paths: list[str]) -> None:
    ort.set_default_logger_severity(4)  # onnxruntime-gpu on a machine without CUDA: fall back quietly
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(model_path, providers=providers)
    contract = read_contract(session)
    classes, size, resize = contract["class_names"], contract["image_size"], contract["resize"]
    images = np.stack([load_image(path, size, resize) for path in image_paths])
    (probabilities,) = session.run(["probabilities"], {contract["input"]["name"]: images})
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["file", "label", *(f"p_{name}" for name in classes)])
    for path, row in zip(image_paths, probabilities, strict=True):
        writer.writerow([path, classes[int(row.argmax())], *(f"{p:.6f}" for p in row)])


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: downstream_app.py MODEL.onnx IMAGE [IMAGE ...]")
    main(sys.argv[1], sys.argv[2:])
