"""The prepared dataset: decoded, resized uint8 images in one ``.npy`` plus manifest and meta.

Training reads this instead of decoding PNGs every epoch. Grayscale datasets (ELPV) are stored
with one channel and expanded to RGB on load, which keeps the cache 3x smaller; the model input
contract stays uint8 RGB NCHW either way.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.errors import DataError
from transferkit.io import atomic_write, write_json

IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.csv"
META_FILE = "meta.json"
MANIFEST_COLUMNS = ("index", "file", "sha256", "label", "label_index", "group", "split")


def manifest_hash(rows: list[dict[str, Any]]) -> str:
    """Content hash of the labelled data: file hashes, labels, groups and splits."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update("|".join(str(row[c]) for c in MANIFEST_COLUMNS[1:]).encode() + b"\n")
    return digest.hexdigest()[:16]


def images_hash(images: np.ndarray) -> str:
    """Content hash of the decoded, resized pixels (shape included)."""
    digest = hashlib.sha256(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()[:16]


def write_prepared(root: Path, images: np.ndarray, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write images, manifest and meta; each file atomically, meta last (it marks completion)."""
    root.mkdir(parents=True, exist_ok=True)
    with atomic_write(root / IMAGES_FILE) as handle:
        np.save(handle, images)
    with atomic_write(root / MANIFEST_FILE, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_json(root / META_FILE, meta)


@dataclass
class PreparedData:
    root: Path
    meta: dict[str, Any]
    rows: list[dict[str, str]]

    @classmethod
    def load(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        if not (root / META_FILE).is_file():
            raise DataError(f"prepared data not found in {root}; run the prepare stage first (dvc repro prepare)")
        meta = json.loads((root / META_FILE).read_text())
        with (root / MANIFEST_FILE).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return cls(root=root, meta=meta, rows=rows)

    @cached_property
    def images(self) -> np.ndarray:
        """(N, H, W, C) uint8, memory-mapped: only the slices used are read."""
        return np.load(self.root / IMAGES_FILE, mmap_mode="r")

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def data_hash(self) -> str:
        return str(self.meta["data_hash"])

    @property
    def content_hash(self) -> str:
        """Hash of what the prepared images are: pixels (so size, resize and decoding code), labels, splits."""
        if "images_sha256" not in self.meta:
            raise DataError(f"{self.root} was prepared by an older transferkit; rerun the prepare stage (dvc repro)")
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]

    def indices(self, split: str) -> np.ndarray:
        return np.array([int(r["index"]) for r in self.rows if r["split"] == split], dtype=np.int64)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return np.array([int(self.rows[i]["label_index"]) for i in indices], dtype=np.int64)

    def groups(self, indices: np.ndarray) -> list[str]:
        return [self.rows[i]["group"] for i in indices]

    def files(self, indices: np.ndarray) -> list[str]:
        return [self.rows[i]["file"] for i in indices]

    def images_chw(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 RGB NCHW tensor of the given samples (grayscale expanded to three channels)."""
        batch = torch.from_numpy(np.ascontiguousarray(self.images[np.sort(indices)]))
        order = np.argsort(np.argsort(indices))  # back to the caller's order after the sorted read
        batch = batch[torch.from_numpy(order)].permute(0, 3, 1, 2)
        return batch.expand(-1, 3, -1, -1).contiguous() if batch.shape[1] == 1 else batch.contiguous()
