"""Batch prediction over files: a local exported model or a running server, as CSV rows.

What ``transferkit predict`` prints: one row per file in the order given, ``file, label,
p_<class>..., error``; an unreadable file gets only its error and the others go on.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TextIO

import numpy as np

from transferkit.data.sources import IMAGE_SUFFIXES
from transferkit.errors import DataError
from transferkit.inference import batches_of

Row = list[str]


def expand_images(paths: list[Path]) -> list[Path]:
    """Image files named directly, or found under the folders named (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{path} does not exist; give image files or folders of images")
    return files


def _row(
    file: Path, class_names: list[str], label: str = "", probabilities: dict[str, float] | None = None, error: str = ""
) -> Row:
    """One CSV row [file, label, p_<class>..., error]; an unreadable file has only its error."""
    values = [f"{probabilities[name]:.6f}" for name in class_names] if probabilities else [""] * len(class_names)
    return [str(file), label, *values, error]


def local_rows(model: Path, files: list[Path], device: str, batch_size: int) -> tuple[list[str], list[Row]]:
    """Rows from a local ONNX model (ONNX Runtime and its metadata only), in ``files`` order."""
    from transferkit.serving.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, device)
    names = classifier.class_names
    rows: list[Row] = []
    for chunk in batches_of(files, batch_size):
        images, readable = [], []
        for file in chunk:
            try:
                images.append(classifier.preprocess(file))
                readable.append(file)
            except DataError as error:
                rows.append(_row(file, names, error=str(error)))
        predictions = classifier.predict(np.stack(images)) if images else []
        for file, result in zip(readable, predictions, strict=True):
            rows.append(_row(file, names, result.label, result.probabilities))
    order = {str(file): i for i, file in enumerate(files)}
    return names, sorted(rows, key=lambda row: order[row[0]])


def remote_rows(url: str, files: list[Path], batch_size: int) -> tuple[list[str], list[Row]]:
    """The same rows from a running ``transferkit serve`` (its batch endpoint, ``batch_size`` files a call)."""
    from transferkit.serving.client import ServingClient

    with ServingClient(url) as client:
        class_names: list[str] = client.model()["classes"]
        rows: list[Row] = []
        for chunk in batches_of(files, batch_size):
            for file, entry in zip(chunk, client.predict_batch(chunk), strict=True):
                rows.append(_row(file, class_names, entry["label"] or "", entry["probabilities"], entry["error"] or ""))
    return class_names, rows


def write_rows(handle: TextIO, class_names: list[str], rows: list[Row]) -> None:
    header = ["file", "label", *(f"p_{name}" for name in class_names), "error"]
    csv.writer(handle, lineterminator="\n").writerows([header, *rows])
