"""Labelled-image sources: the embedded ELPV dataset and any ImageFolder tree.

Both are read from a DVC-tracked raw-data directory, so the rest of the pipeline sees one shape:
a list of ``Sample`` (relative file, class name, group) plus the ordered class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferkit.config import DataParams
from transferkit.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
ELPV_LABELS_FILE = "labels.csv"
# Defect probabilities annotated in ELPV, mapped to the 4-class names in order.
ELPV_LEVELS = {0.0: "functional", 1 / 3: "possibly_defective", 2 / 3: "likely_defective", 1.0: "defective"}
ELPV_BINARY = ("functional", "defective")
DEFAULT_GROUP = "all"


@dataclass(frozen=True)
class Sample:
    file: str  # relative to the data root, POSIX separators
    label: str
    group: str


def list_samples(data: DataParams) -> tuple[list[Sample], list[str]]:
    """Samples sorted by file, and class names in label-index order."""
    root = Path(data.path)
    if not root.is_dir():
        hint = (
            "run `transferkit data elpv` to materialise the embedded dataset"
            if data.source == "elpv"
            else "point data.path at a folder with one sub-folder per class, then `dvc add` it"
        )
        raise DataError(f"data directory not found: {root}; {hint}")
    samples, classes = _elpv(root, data.classes) if data.source == "elpv" else _image_folder(root)
    if not samples:
        raise DataError(f"no images found under {root}")
    return sorted(samples, key=lambda s: s.file), classes


def _elpv_level(probability: float) -> str:
    for level, name in ELPV_LEVELS.items():
        if abs(probability - level) < 1e-3:
            return name
    raise DataError(f"unexpected ELPV defect probability {probability}; expected 0, 1/3, 2/3 or 1")


def _elpv(root: Path, classes: int) -> tuple[list[Sample], list[str]]:
    labels_file = root / ELPV_LABELS_FILE
    if not labels_file.is_file():
        raise DataError(f"{labels_file} is missing; re-run `transferkit data elpv --dest {root}`")
    samples = []
    for line_no, line in enumerate(labels_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise DataError(f"{labels_file}:{line_no}: expected 'path probability type', got {line!r}")
        file, probability, cell_type = fields[0], float(fields[1]), fields[2]
        label = ELPV_BINARY[int(probability >= 0.5)] if classes == 2 else _elpv_level(probability)
        samples.append(Sample(file=file, label=label, group=cell_type))
    names = list(ELPV_BINARY) if classes == 2 else list(ELPV_LEVELS.values())
    return samples, names


def _image_folder(root: Path) -> tuple[list[Sample], list[str]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(
            f"{root} needs at least two class sub-folders (ImageFolder layout: {root}/<class>/<image>), "
            f"found {len(class_dirs)}"
        )
    samples = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        samples += [Sample(p.relative_to(root).as_posix(), class_dir.name, DEFAULT_GROUP) for p in files]
    return samples, [d.name for d in class_dirs]
