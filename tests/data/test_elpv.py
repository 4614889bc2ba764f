"""The embedded ELPV source: binary labels from the defect probability, and stratified subsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferkit.config import DataParams
from transferkit.data.elpv import materialize_elpv
from transferkit.data.sources import list_samples
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
