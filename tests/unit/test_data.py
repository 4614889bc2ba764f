"""Label mapping, sources and the deterministic stratified split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from transferkit.config import DataParams, SplitParams
from transferkit.data.elpv import materialize_elpv
from transferkit.data.report import ImageInfo, build_report, render_markdown
from transferkit.data.sources import list_samples
from transferkit.data.split import SPLITS, assign_splits
from transferkit.errors import DataError


def _write_labels(root: Path, lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_elpv_binary_label_is_defective_from_probability_one_half(tmp_path: Path) -> None:
    _write_labels(
        tmp_path,
        [
            "images/a.png  0.0  mono",
            "images/b.png  0.3333333333333333  poly",
            "images/c.png  0.6666666666666666  mono",
            "images/d.png  1.0  poly",
        ],
    )
    samples, classes = list_samples(DataParams(path=str(tmp_path), classes=2))
    assert classes == ["functional", "defective"]
    assert [s.label for s in samples] == ["functional", "functional", "defective", "defective"]
    assert [s.group for s in samples] == ["mono", "poly", "mono", "poly"]

    samples4, classes4 = list_samples(DataParams(path=str(tmp_path), classes=4))
    assert [s.label for s in samples4] == classes4  # one sample per probability level, in order


def test_elpv_rejects_unknown_probability(tmp_path: Path) -> None:
    _write_labels(tmp_path, ["images/a.png 0.5 mono"])
    with pytest.raises(DataError, match=r"unexpected ELPV defect probability 0\.5"):
        list_samples(DataParams(path=str(tmp_path), classes=4))


def test_image_folder_classes_are_sorted_folder_names(tmp_path: Path) -> None:
    for name, count in (("good", 2), ("bad", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{i}.png").write_bytes(b"x")
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    samples, classes = list_samples(DataParams(source="imagefolder", path=str(tmp_path)))
    assert classes == ["bad", "good"]
    assert Counter(s.label for s in samples) == {"bad": 3, "good": 2}


def test_image_folder_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        list_samples(DataParams(source="imagefolder", path=str(tmp_path / "missing")))
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="at least two class sub-folders"):
        list_samples(DataParams(source="imagefolder", path=str(tmp_path)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "only" / "x.png").write_bytes(b"x")
    with pytest.raises(DataError, match="holds no images"):
        list_samples(DataParams(source="imagefolder", path=str(tmp_path)))


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


def test_materialize_subset_is_stratified_and_idempotent(tmp_path: Path) -> None:
    dest = tmp_path / "elpv"
    assert materialize_elpv(dest, limit=40, seed=0) == 40
    samples, _ = list_samples(DataParams(path=str(dest)))
    assert len(samples) == 40 and {s.label for s in samples} == {"functional", "defective"}
    assert {s.group for s in samples} == {"mono", "poly"}
    assert all((dest / s.file).is_file() for s in samples)
    before = sorted(p.name for p in dest.rglob("*"))
    assert materialize_elpv(dest, limit=40, seed=0) == 40
    assert sorted(p.name for p in dest.rglob("*")) == before


def test_duplicates_share_a_split_and_unique_data_splits_as_before() -> None:
    labels, groups = _synthetic()
    unique = assign_splits(labels, groups, distinct(labels), SplitParams(), seed=0)
    # Every tenth file is a copy of the file before it (same content key).
    keys = [str(i - 1) if i % 10 == 9 else str(i) for i in range(len(labels))]
    with_copies = assign_splits(labels, groups, keys, SplitParams(), seed=0)
    assert all(with_copies[i] == with_copies[i - 1] for i in range(9, len(labels), 10))
    assert Counter(with_copies)["test"] > 80  # still about a quarter
    assert unique == assign_splits(labels, groups, distinct(labels), SplitParams(), seed=0)


def test_data_report_warns_about_what_changes_results() -> None:
    images = (
        [ImageInfo(f"a/{i}.png", "a", "train", f"a{i}", 32, 32, "RGB") for i in range(220)]
        + [ImageInfo(f"b/{i}.png", "b", "train", f"b{i}", 40, 30, "L") for i in range(12)]
        + [ImageInfo("b/copy.png", "b", "test", "a0", 32, 32, "RGB")]  # a's image filed under b too
    )
    report = build_report(images, [{"file": "c/x.png", "reason": "empty file (0 bytes)"}], ["a", "b"], SPLITS)
    assert report["classes"] == {"a": 220, "b": 13} and report["imbalance_ratio"] == pytest.approx(16.92)
    assert report["colour_modes"] == {"RGB": 221, "L": 12}
    assert report["image_sizes"]["smallest"] == [32, 32] and report["image_sizes"]["largest"] == [40, 30]
    assert report["duplicates"]["groups"] == 1 and report["duplicates"]["conflicting_labels"] == 1
    text = " ".join(report["warnings"])
    for expected in ("fewer than 20 images: {'b': 13}", "16.92x", "2 files are exact duplicates", "different labels"):
        assert expected in text
    assert "1 files could not be read" in text
    assert "| b | 13 | 12 | 0 | 1 |" in render_markdown(report, SPLITS)
