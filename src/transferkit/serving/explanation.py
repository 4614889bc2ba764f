"""Heatmap overlays: what the server's ``?heatmap=png`` answers and ``transferkit explain`` writes.

The overlay is drawn over the image as it was given (its own size), not over the model's square,
resized input, so a person sees the cell they know. That takes a second decode of the original
next to the model's preprocessing; the preprocessing itself stays the one definition in
``transferkit.preprocessing`` instead of a copy that also keeps the decoded image. Explaining is a
diagnostic path, so it pays the decode; plain prediction does not.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.errors import DataError
from transferkit.inference import batches_of
from transferkit.io import atomic_write
from transferkit.preprocessing import decode_image
from transferkit.serving.batch_predict import read_chunk
from transferkit.serving.onnx_model import Evidence, OnnxClassifier, Prediction


def overlay_png(image: Image.Image, evidence_map: np.ndarray) -> bytes:
    """``image`` with ``evidence_map`` painted over it (``transferkit.heatmap.overlay``), as PNG bytes."""
    from transferkit.heatmap import overlay

    buffer = io.BytesIO()
    overlay(image, evidence_map).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_targets(files: list[Path], out: Path) -> dict[Path, Path]:
    """Where each file's overlay goes: its path below the files' common folder, under ``out``, as .png.

    Checked before anything is drawn, so nothing is lost: two inputs that would share an overlay
    (``a.jpg`` and ``a.png``), or an overlay that would replace one of the inputs (``--out`` the
    images' own folder), are refused with the names.
    """
    resolved = [file.resolve() for file in files]
    if not resolved:
        return {}
    root = Path(os.path.commonpath([file.parent for file in resolved]))
    targets = {
        file: out / source.relative_to(root).with_suffix(".png") for file, source in zip(files, resolved, strict=True)
    }
    claimed: dict[Path, Path] = {}  # overlay -> the input drawn there
    inputs = set(resolved)
    for file, target in targets.items():
        key = target.resolve()
        if key in inputs:
            raise DataError(f"the overlay of {file} would overwrite the image {key}; give --out another folder")
        if key in claimed and claimed[key].resolve() != file.resolve():  # the same file named twice is fine
            raise DataError(
                f"{claimed[key]} and {file} would both be drawn to {target}; rename one, or explain them separately"
            )
        claimed[key] = file
    return targets


@dataclass(frozen=True)
class Explained:
    """One file's outcome: its overlay and prediction, or (``error``) why it was skipped."""

    file: Path
    overlay: Path | None = None
    prediction: Prediction | None = None
    evidence: Evidence | None = None
    peak: tuple[int, int] | None = None  # (x, y) of the strongest evidence, in the image's own pixels
    error: str | None = None

    def describe(self) -> str:
        """The line ``transferkit explain`` prints for this file."""
        if self.prediction is None or self.evidence is None or self.peak is None:
            return f"skipped {self.file}: {self.error}"
        verdict = ", ".join(filter(None, [self.prediction.label, self.prediction.decision]))
        evidence_for = "+".join(self.evidence.classes)
        x, y = self.peak
        # The overlay's colours are relative; whether the strongest spot argues for the class at all is said here.
        strength = "peaks" if float(self.evidence.values.max()) > 0 else "is against it everywhere, least at"
        return f"{self.file} -> {self.overlay} ({verdict}; evidence for {evidence_for} {strength} x={x}, y={y})"


def explain_files(model: Path, files: list[Path], out: Path, device: str, batch_size: int) -> Iterator[Explained]:
    """Draw each file's overlay under ``out`` (atomically), in ``files`` order; an unreadable file is
    reported and skipped, the others go on. A model without a heatmap fails before any work."""
    from transferkit.heatmap import peak

    classifier = OnnxClassifier(model, device)
    classifier.require_heatmap()
    targets = overlay_targets(files, out)
    for chunk in batches_of(files, batch_size):
        images, readable, unreadable = read_chunk(classifier, chunk)
        results = {file: Explained(file, error=error) for file, error in unreadable}
        if images:
            outputs = classifier.run_all(np.stack(images))
            explained = zip(readable, classifier.labels(outputs), classifier.explain(outputs), strict=True)
            for file, prediction, evidence in explained:
                original = decode_image(file)
                with atomic_write(targets[file]) as handle:
                    handle.write(overlay_png(original, evidence.values))
                where = peak(evidence.values, original.size)
                results[file] = Explained(file, targets[file], prediction, evidence, where)
        yield from (results[file] for file in chunk)
