"""prepare on user data (ImageFolder) with corrupt and empty files, end to end, and a class with none readable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import shrunk_params
from transferkit.data.sources import list_samples
from transferkit.errors import DataError
from transferkit.stages import evaluate, export, gate, prepare, train

pytestmark = pytest.mark.slow


def _image_folder(root: Path, elpv: Path, per_class: int = 40) -> Path:
    """A real ImageFolder tree built from ELPV cells: <root>/<class>/<file>."""
    from transferkit.config import DataParams

    samples, _ = list_samples(DataParams(path=str(elpv)))
    for label in ("functional", "defective"):
        (root / label).mkdir(parents=True)
        for sample in [s for s in samples if s.label == label][:per_class]:
            shutil.copy(elpv / sample.file, root / label / Path(sample.file).name)
    return root


def test_image_folder_with_corrupt_and_empty_images_runs_end_to_end(tmp_path: Path, elpv_subset: Path) -> None:
    data = _image_folder(tmp_path / "raw", elpv_subset)
    good = next((data / "defective").iterdir()).read_bytes()
    (data / "defective" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "functional" / "empty.png").write_bytes(b"")
    (data / "functional" / "not_an_image.jpg").write_bytes(b"hello, I am text")
    params = shrunk_params(tmp_path, data__source="imagefolder", data__path=str(data), train__epochs=1)

    report = prepare.run(params)
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in report["skipped"]}
    assert set(reasons) == {"truncated.png", "empty.png", "not_an_image.jpg"}
    assert "0 bytes" in reasons["empty.png"] and "corrupt" in reasons["truncated.png"]
    assert report["total"] == 80 and set(report["counts"]["train"]) == {"defective", "functional"}

    train.run(params)
    metrics = evaluate.run(params)
    assert set(metrics["slices"]) == {"all"}
    gate.run(params)
    assert export.run(params)["parity"]["passed"]


def test_class_without_readable_images_is_an_error(tmp_path: Path, elpv_subset: Path) -> None:
    data = _image_folder(tmp_path / "raw", elpv_subset, per_class=5)
    (data / "broken").mkdir()
    (data / "broken" / "x.png").write_bytes(b"\x89PNG garbage")
    params = shrunk_params(tmp_path, data__source="imagefolder", data__path=str(data))
    with pytest.raises(DataError, match=r"\['broken'\] have no readable images"):
        prepare.run(params)
    assert not (tmp_path / "data" / "prepared").exists()  # nothing half-written
