"""Materialise the embedded ELPV dataset (PyPI package ``elpv-dataset``) as a raw-data directory.

The files are copied byte for byte (PNG cells and the package's own ``labels.csv`` lines), so the
directory hashes the same on every machine and the committed ``data/raw/elpv.dvc`` stays valid.
Images: CC BY-NC-SA 4.0 (Deitsch et al.); code: Apache-2.0.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sklearn.model_selection import train_test_split

from transferkit.data.sources import ELPV_LABELS_FILE
from transferkit.errors import DataError

LICENSE_NOTE = (
    "ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019), images CC BY-NC-SA 4.0, "
    "code Apache-2.0, from the PyPI package elpv-dataset."
)


def package_data_dir() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise DataError("the elpv-dataset package is not installed: pip install elpv-dataset") from None
    return Path(elpv_dataset.__file__).parent / "data"


def _select(lines: list[str], limit: int | None, seed: int) -> list[str]:
    """All lines, or a subset of ``limit`` stratified by defect probability and cell type."""
    if limit is None or limit >= len(lines):
        return lines
    strata = [" ".join(line.split()[1:]) for line in lines]
    chosen, _ = train_test_split(lines, train_size=limit, stratify=strata, random_state=seed)
    return sorted(chosen)


def materialize_elpv(dest: str | Path, limit: int | None = None, seed: int = 0) -> int:
    """Copy the dataset (or a stratified subset) to ``dest``; returns the image count.

    An existing complete directory is left as it is. The copy is built in a temp folder beside
    ``dest`` and renamed into place, so an interrupted run never leaves a partial dataset.
    """
    dest = Path(dest)
    if (dest / ELPV_LABELS_FILE).is_file():
        return sum(1 for line in (dest / ELPV_LABELS_FILE).read_text().splitlines() if line.strip())
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists but has no {ELPV_LABELS_FILE}; move it away and run again")
    source = package_data_dir()
    lines = [line for line in (source / ELPV_LABELS_FILE).read_text().splitlines() if line.strip()]
    selected = _select(lines, limit, seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        (staging / "images").mkdir()
        for line in selected:
            relative = line.split()[0]
            shutil.copyfile(source / relative, staging / relative)
        (staging / ELPV_LABELS_FILE).write_text("\n".join(selected) + "\n")
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(selected)
