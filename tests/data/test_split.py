"""The deterministic stratified split: seeds, fractions, strata, a fixed test split, duplicates together."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from transferkit.config import SplitParams
from transferkit.data.split import assign_splits
from transferkit.errors import DataError


def _synthetic(n: int = 400) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    labels = rng.choice(["ok", "defect"], size=n, p=[0.7, 0.3]).tolist()
    groups = rng.choice(["mono", "poly"], size=n).tolist()
    return labels, groups


def distinct(items) -> list[str]:
    """One content key per sample: no duplicates."""
    return [str(i) for i, _ in enumerate(items)]


def test_split_is_deterministic_and_seed_dependent() -> None:
    labels, groups = _synthetic()
    first = assign_splits(labels, groups, distinct(labels), SplitParams(), seed=1)
    assert first == assign_splits(labels, groups, distinct(labels), SplitParams(), seed=1)
    assert first != assign_splits(labels, groups, distinct(labels), SplitParams(), seed=2)


def test_split_sizes_and_strata_follow_the_fractions() -> None:
    labels, groups = _synthetic()
    splits = assign_splits(labels, groups, distinct(labels), SplitParams(train=0.65, val=0.10, test=0.25), seed=0)
    counts = Counter(splits)
    assert counts["test"] == 100 and counts["val"] == 40 and counts["train"] == 260
    for stratum in {(lab, grp) for lab, grp in zip(labels, groups, strict=True)}:
        members = [s for s, lab, grp in zip(splits, labels, groups, strict=True) if (lab, grp) == stratum]
        assert abs(members.count("test") / len(members) - 0.25) < 0.05


def test_test_split_does_not_move_when_val_changes() -> None:
    labels, groups = _synthetic()
    a = assign_splits(labels, groups, distinct(labels), SplitParams(train=0.65, val=0.10, test=0.25), seed=0)
    b = assign_splits(labels, groups, distinct(labels), SplitParams(train=0.55, val=0.20, test=0.25), seed=0)
    assert [i for i, s in enumerate(a) if s == "test"] == [i for i, s in enumerate(b) if s == "test"]


def test_split_falls_back_to_label_strata_for_rare_groups() -> None:
    labels = ["a"] * 20 + ["b"] * 20
    groups = ["g1"] * 39 + ["rare"]
    splits = assign_splits(labels, groups, distinct(labels), SplitParams(), seed=0)
    assert {"train", "val", "test"} == set(splits)


def test_split_fails_clearly_when_a_class_is_too_small() -> None:
    with pytest.raises(DataError, match="smallest class"):
        assign_splits(["a"] * 10 + ["b"], ["g"] * 11, distinct(range(11)), SplitParams(), seed=0)


def test_duplicates_share_a_split_and_unique_data_splits_as_before() -> None:
    labels, groups = _synthetic()
    unique = assign_splits(labels, groups, distinct(labels), SplitParams(), seed=0)
    # Every tenth file is a copy of the file before it (same content key).
    keys = [str(i - 1) if i % 10 == 9 else str(i) for i in range(len(labels))]
    with_copies = assign_splits(labels, groups, keys, SplitParams(), seed=0)
    assert all(with_copies[i] == with_copies[i - 1] for i in range(9, len(labels), 10))
    assert Counter(with_copies)["test"] > 80  # still about a quarter
    assert unique == assign_splits(labels, groups, distinct(labels), SplitParams(), seed=0)
