"""Images a person reviewed, as data: the drops that prepare adds to the dataset.

Every folder named ``<name>-reviewed`` in ``paths.reviewed`` (``data/raw``, beside the raw data)
is a drop in ImageFolder layout, ``<class>/<sha256>.<ext>``, as the review page writes them;
``dvc add data/raw/<name>-reviewed`` makes it a data version like any other. prepare depends on
the whole folder, so a new or changed drop reruns it and the next model's data hash names it.
Labels must be classes the dataset already has. What a drop changes:

- an image whose content is new goes to train or validation, never test: the test split stays
  the one every model was measured on. Which of the two is decided by its content hash, so a
  reviewed image never moves between runs;
- an image with the content of one already in the dataset (a training cell a person relabelled,
  say one cleanlab suspected) replaces that image's label where it is in train or validation,
  and is ignored (and counted) where it is in test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from transferkit.data.sources import IMAGE_SUFFIXES
from transferkit.errors import DataError

REVIEWED_GROUP = "reviewed"
DROP_SUFFIX = "-reviewed"


@dataclass(frozen=True)
class ReviewedImage:
    path: Path
    label: str
    drop: str


def _pointer_files(drop: Path) -> int | None:
    """How many files ``<drop>.dvc`` says the drop holds (None without a pointer)."""
    pointer = drop.with_name(drop.name + ".dvc")
    if not pointer.is_file():
        return None
    outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
    return int(outs[0].get("nfiles", 0))


def _drop_images(drop: Path, class_names: list[str]) -> list[ReviewedImage]:
    """One drop's images; what it holds must be what its pointer versions, in known classes."""
    found = []
    for class_dir in sorted(p for p in drop.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in class_names:
            raise DataError(
                f"reviewed drop {drop} has a class folder {class_dir.name!r} the dataset does not have "
                f"({', '.join(class_names)}); move its images to one of those or delete it, then `dvc add {drop}`"
            )
        images = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        found += [ReviewedImage(path, class_dir.name, drop.name) for path in images]
    expected, on_disk = _pointer_files(drop), sum(1 for p in drop.rglob("*") if p.is_file())
    if expected is not None and on_disk != expected:
        raise DataError(
            f"{drop} holds {on_disk} files but {drop}.dvc versions {expected}: run `dvc add {drop}` to version "
            f"what is there (or `dvc checkout {drop}` to go back to the versioned drop)"
        )
    return found


def list_reviewed(folder: Path, class_names: list[str]) -> list[ReviewedImage]:
    """Every reviewed image in the ``*-reviewed`` drops of ``folder``, drops and files in sorted order.

    A pointer whose drop is missing means the data was not pulled, a class folder the dataset
    lacks is a labelling mistake, files the pointer does not version were never `dvc add`ed:
    each stops prepare with what to do.
    """
    if not folder.is_dir():
        return []
    for pointer in sorted(folder.glob(f"*{DROP_SUFFIX}.dvc")):
        drop = pointer.with_suffix("")
        if not drop.is_dir() and _pointer_files(drop):
            raise DataError(f"{pointer} versions a drop that is missing; run `dvc pull {drop}`")
    drops = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith(DROP_SUFFIX))
    return [image for drop in drops for image in _drop_images(drop, class_names)]


def split_of_new(sha256: str, fractions: tuple[float, float]) -> str:
    """train or val for a new reviewed image, from its content hash in the train:val proportion."""
    train, val = fractions
    return "train" if int(sha256[:8], 16) / 16**8 < train / (train + val) else "val"
