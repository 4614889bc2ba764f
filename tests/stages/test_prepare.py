"""prepare on user data (ImageFolder) with corrupt and empty files, end to end, and a class with none readable."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import shrunk_params
from transferkit.data.cache import PreparedData
from transferkit.data.sources import list_samples
from transferkit.errors import DataError
from transferkit.io import sha256_bytes
from transferkit.review_drop import DataDrop, Label, utc_now
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


def _label(image: bytes, label: str) -> Label:
    return Label(sha256_bytes(image), label, "inspector", utc_now(), "v1", "review", None, "review page", None)


def test_reviewed_drops_join_train_and_val_and_never_touch_test(tmp_path: Path, elpv_subset: Path) -> None:
    """A drop the review page wrote (real DataDrop): new images land in train or val by content,
    a relabelled training image takes its new label, a relabelled test image stays as it was, and
    files nobody `dvc add`ed, or a class the dataset lacks, stop prepare with what to do."""
    params = shrunk_params(tmp_path, data__path=str(elpv_subset))
    before = prepare.run(params)
    original = PreparedData.load(params.paths.prepared)
    by_split = {split: original.indices(split) for split in ("train", "test")}
    names = original.class_names
    drop = DataDrop(Path(params.paths.reviewed) / "line3-reviewed", names)
    new = [_image_folder_bytes(seed) for seed in range(6)]
    for index, image in enumerate(new):
        drop.write(image, _label(image, names[index % 2]))
    flip = {split: int(indices[0]) for split, indices in by_split.items()}
    for index in flip.values():
        image = (elpv_subset / original.files([index])[0]).read_bytes()
        drop.write(image, _label(image, names[1 - original.labels([index])[0]]))

    report = prepare.run(params)
    assert report["reviewed"] == {
        "drops": ["line3-reviewed"],
        "added": 6,
        "relabelled": 1,
        "in_test_ignored": 1,
        "unreadable": [],
    }
    merged = PreparedData.load(params.paths.prepared)
    assert merged.meta["count"] == original.meta["count"] + 6
    np.testing.assert_array_equal(merged.indices("test"), original.indices("test"))  # test untouched
    np.testing.assert_array_equal(merged.labels(merged.indices("test")), original.labels(original.indices("test")))
    assert merged.labels([flip["train"]])[0] == 1 - original.labels([flip["train"]])[0]
    added = np.flatnonzero(np.array(merged.groups(np.arange(merged.meta["count"]))) == "reviewed")
    assert len(added) == 6 and {merged.rows[i]["split"] for i in added} <= {"train", "val"}
    assert merged.meta["data_hash"] != before["data_hash"]

    (drop.root / names[0] / "stray.png").write_bytes(new[0])  # written by hand, next to a pointer
    (drop.root.parent / "line3-reviewed.dvc").write_text("outs:\n- path: line3-reviewed\n  nfiles: 9\n")
    with pytest.raises(DataError, match="dvc add"):
        prepare.run(params)
    (drop.root.parent / "line3-reviewed.dvc").unlink()
    (drop.root / "scratched").mkdir()
    (drop.root / "scratched" / "x.png").write_bytes(new[1])
    with pytest.raises(DataError, match="class folder 'scratched'"):
        prepare.run(params)


def _image_folder_bytes(seed: int) -> bytes:
    """A PNG of noise: content the dataset does not have."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
