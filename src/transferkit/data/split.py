"""Deterministic stratified train/val/test split.

Strata are label x group (for ELPV: defect class x mono/poly, the protocol of Deitsch et al.);
when a stratum is too small to be split (tiny datasets), it falls back to label-only strata.
The test split is carved first, so changing ``val`` never moves an image into or out of test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from transferkit.config import SplitParams
from transferkit.errors import DataError

SPLITS = ("train", "val", "test")


def _carve(indices: np.ndarray, strata: list[np.ndarray], size: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split ``indices`` with the first stratification that sklearn can satisfy."""
    for stratum in strata:
        try:
            return tuple(train_test_split(indices, test_size=size, stratify=stratum[indices], random_state=seed))
        except ValueError:
            continue
    raise DataError(
        f"cannot split {len(indices)} images into a {size:.0%} part with every class present; "
        "add images to the smallest class or change data.split"
    )


def assign_splits(labels: Sequence[str], groups: Sequence[str], fractions: SplitParams, seed: int) -> list[str]:
    """Return the split name of each sample, in input order."""
    label_arr = np.asarray(labels)
    strata = [np.char.add(np.char.add(label_arr, "|"), np.asarray(groups)), label_arr]
    everything = np.arange(len(label_arr))
    rest, test = _carve(everything, strata, fractions.test, seed)
    train, val = _carve(rest, strata, fractions.val / (fractions.train + fractions.val), seed)
    names = np.empty(len(label_arr), dtype=object)
    names[train], names[val], names[test] = "train", "val", "test"
    return names.tolist()
