"""Classify images with an exported transferkit model using only onnxruntime, numpy and Pillow.

Everything this needs (input size, resize method, class names) is read from the .onnx file's own
metadata; transferkit itself is not imported. Copy this file into any app as a starting point:

    python examples/downstream_app.py models/export/model.onnx data/raw/elpv/images/cell0001.png ...

Prints one CSV line per image: file, label, then one probability per class, and ``decision``
(pass / flag / review) when the model has that output: a line acts on the decision, which
carries the thresholds chosen at export. A model exported without a rule has no decision; act on
``label`` (the most probable class) or on a probability then, with a threshold of your own.
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
    # Optional outputs: ask only for what this model has (an older export lacks the decision).
    has_decision = "decision" in [output.name for output in session.get_outputs()]
    wanted = ["probabilities", "decision"] if has_decision else ["probabilities"]
    images = np.stack([load_image(path, size, resize) for path in image_paths])
    outputs = dict(zip(wanted, session.run(wanted, {contract["input"]["name"]: images}), strict=True))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["file", "label", *(f"p_{name}" for name in classes), *(["decision"] if has_decision else [])])
    for i, path in enumerate(image_paths):
        row = outputs["probabilities"][i]
        # The decision output holds codes into the names in the model's ``decision`` metadata.
        decision = [contract["decision"]["names"][int(outputs["decision"][i])]] if has_decision else []
        writer.writerow([path, classes[int(row.argmax())], *(f"{p:.6f}" for p in row), *decision])


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: downstream_app.py MODEL.onnx IMAGE [IMAGE ...]")
    main(sys.argv[1], sys.argv[2:])
