"""Deterministic stratified train/val/test split.

Strata are label x group (for ELPV: defect class x mono/poly, the protocol of Deitsch et al.);
when a stratum is too small to be split (tiny datasets), it falls back to label-only strata.
The test split is carved first, so changing ``val`` never moves an image into or out of test.
Files with the same content (``keys``) always land in the same split: a duplicate on both sides
of the train/test line would be graded on an image the model was trained on.
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


def assign_splits(
    labels: Sequence[str], groups: Sequence[str], keys: Sequence[str], fractions: SplitParams, seed: int
) -> list[str]:
    """Return the split name of each sample, in input order; equal ``keys`` share a split.

    The split is drawn over the first sample of each key and copied to the others, so a dataset
    without duplicates is split exactly as if there were no keys.
    """
    first: dict[str, int] = {}
    representative = np.array([first.setdefault(key, i) for i, key in enumerate(keys)])
    unique = np.unique(representative)
    label_arr, group_arr = np.asarray(labels)[unique], np.asarray(groups)[unique]
    strata = [np.char.add(np.char.add(label_arr, "|"), group_arr), label_arr]
    everything = np.arange(len(unique))
    rest, test = _carve(everything, strata, fractions.test, seed)
    train, val = _carve(rest, strata, fractions.val / (fractions.train + fractions.val), seed)
    names = np.empty(len(unique), dtype=object)
    names[train], names[val], names[test] = "train", "val", "test"
    by_representative = dict(zip(unique.tolist(), names.tolist(), strict=True))
    return [by_representative[r] for r in representative.tolist()]
