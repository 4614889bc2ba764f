"""Batch prediction over files: a local exported model or a running server, as CSV rows.

What ``transferkit predict`` prints: one row per file in the order given, ``file, label,
p_<class>..., error``; an unreadable file gets only its error and the others go on. A model with
a decision output adds a ``decision`` column just before ``error``: the columns a reader of an
older model's CSV knows keep their places (``error`` stays last).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from transferkit.contract import DECISION_OUTPUT
from transferkit.data.sources import IMAGE_SUFFIXES
from transferkit.errors import DataError
from transferkit.inference import batches_of

if TYPE_CHECKING:  # the CLI imports this module at start; the model (ONNX Runtime) loads when used
    from transferkit.serving.onnx_model import OnnxClassifier

Row = list[str]


@dataclass(frozen=True)
class Table:
    """The rows of ``transferkit predict`` and what their columns are."""

    class_names: list[str]
    decision: bool  # the model has a decision output: a ``decision`` column before ``error``
    rows: list[Row]

    def header(self) -> Row:
        return ["file", "label", *(f"p_{name}" for name in self.class_names), *self._decision("decision"), "error"]

    def row(
        self,
        file: Path,
        label: str = "",
        probabilities: dict[str, float] | None = None,
        decision: str | None = None,
        error: str = "",
    ) -> Row:
        """One CSV row in ``header``'s order; an unreadable file has only its error."""
        names = self.class_names
        values = [f"{probabilities[name]:.6f}" for name in names] if probabilities else [""] * len(names)
        return [str(file), label, *values, *self._decision(decision or ""), error]

    def _decision(self, value: str) -> list[str]:
        return [value] if self.decision else []


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


def read_chunk(
    classifier: OnnxClassifier, files: list[Path]
) -> tuple[list[np.ndarray], list[Path], list[tuple[Path, str]]]:
    """The model inputs of the readable ``files``, those files, and each unreadable one with why:
    one bad file in a batch is reported, not fatal."""
    images, readable, unreadable = [], [], []
    for file in files:
        try:
            images.append(classifier.preprocess(file))
            readable.append(file)
        except DataError as error:
            unreadable.append((file, str(error)))
    return images, readable, unreadable


def local_rows(model: Path, files: list[Path], device: str, batch_size: int) -> Table:
    """Rows from a local ONNX model (ONNX Runtime and its metadata only), in ``files`` order."""
    from transferkit.serving.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, device)
    table = Table(classifier.class_names, DECISION_OUTPUT in classifier.output_names, [])
    for chunk in batches_of(files, batch_size):
        images, readable, unreadable = read_chunk(classifier, chunk)
        table.rows.extend(table.row(file, error=error) for file, error in unreadable)
        predictions = classifier.predict(np.stack(images)) if images else []
        for file, result in zip(readable, predictions, strict=True):
            table.rows.append(table.row(file, result.label, result.probabilities, result.decision))
    order = {str(file): i for i, file in enumerate(files)}
    table.rows.sort(key=lambda row: order[row[0]])
    return table


def remote_rows(url: str, files: list[Path], batch_size: int) -> Table:
    """The same rows from a running ``transferkit serve`` (its batch endpoint, ``batch_size`` files a call)."""
    from transferkit.serving.client import ServingClient

    with ServingClient(url) as client:
        info = client.model()
        table = Table(info["classes"], DECISION_OUTPUT in info.get("outputs", []), [])
        for chunk in batches_of(files, batch_size):
            for file, entry in zip(chunk, client.predict_batch(chunk), strict=True):
                # .get: a server older than the decision field still answers the rest
                values = (entry["label"] or "", entry["probabilities"], entry.get("decision"), entry["error"] or "")
                table.rows.append(table.row(file, *values))
    return table


def write_rows(handle: TextIO, table: Table) -> None:
    csv.writer(handle, lineterminator="\n").writerows([table.header(), *table.rows])
