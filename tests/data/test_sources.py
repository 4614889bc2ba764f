"""ImageFolder sources: classes are the sorted folder names, and mistakes say what to do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from transferkit.config import DataParams
from transferkit.data.sources import list_samples
from transferkit.errors import DataError


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
