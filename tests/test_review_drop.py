"""The data drop people's labels land in: atomic, idempotent, a relabel keeps its history, undo is
a stack, a restart repairs whatever a crash interrupted, and concurrent writers keep every row.

Real files in a temp folder; crashes are made by hand (the files a kill between two steps leaves).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import png_bytes
from transferkit.data.sources import IMAGE_SUFFIXES
from transferkit.errors import DataError
from transferkit.io import sha256_bytes
from transferkit.review_drop import (
    FORMATS,
    INVALID,
    INVALID_FOLDER,
    LABEL_STUDIO,
    MANIFEST,
    REVIEW_PAGE,
    UNDO,
    UNLABELLED,
    DataDrop,
    Label,
)

CLASSES = ["functional", "defective"]


def label_for(image: bytes, label: str, who: str = "ann", source: str = REVIEW_PAGE) -> Label:
    return Label(sha256_bytes(image), label, who, "2026-12-04T00:00:00.000000+00:00", "sha256:v1", "review",
                 "near the threshold", source)  # fmt: skip


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]


def files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and path.name != MANIFEST)


@pytest.fixture
def drop(tmp_path: Path) -> DataDrop:
    return DataDrop(tmp_path / "elpv-reviewed", CLASSES)


def test_a_label_lands_as_a_file_and_one_manifest_row_and_repeating_it_changes_nothing(drop: DataDrop) -> None:
    image = png_bytes((40, 30))
    digest = sha256_bytes(image)
    path = drop.write(image, label_for(image, "defective"))
    assert path == drop.root / "defective" / f"{digest}.png" and path.read_bytes() == image
    [row] = manifest(drop.root)
    assert row == {
        "image_sha256": digest, "label": "defective", "who": "ann", "when": "2026-12-04T00:00:00.000000+00:00",
        "model_version": "sha256:v1", "model_decision": "review", "model_reason": "near the threshold",
        "source": REVIEW_PAGE, "previous": None,
    }  # fmt: skip
    # A stale page, a retry after a timeout, a restart: the same label again is no new row.
    assert drop.write(image, label_for(image, "defective", who="bob")) == path
    assert len(manifest(drop.root)) == 1 and drop.current() == {digest: "defective"}
    assert files(drop.root) == [f"defective/{digest}.png"]


def test_a_relabel_moves_the_file_and_keeps_the_history(drop: DataDrop) -> None:
    image, other = png_bytes((40, 30)), png_bytes((41, 30))
    digest = sha256_bytes(image)
    drop.write(other, label_for(other, "functional"))
    drop.write(image, label_for(image, "functional"))
    moved = drop.write(image, label_for(image, "defective", who="bob"))
    assert moved == drop.root / "defective" / f"{digest}.png"
    assert files(drop.root) == sorted([f"defective/{digest}.png", f"functional/{sha256_bytes(other)}.png"])
    rows = [row for row in manifest(drop.root) if row["image_sha256"] == digest]
    assert [(r["label"], r["previous"], r["who"]) for r in rows] == [
        ("functional", None, "ann"),
        ("defective", "functional", "bob"),
    ]
    drop.write(other, label_for(other, "defective"))  # the last functional image leaves: so does its folder
    assert not (drop.root / "functional").exists()  # the ImageFolder source refuses an empty class


def test_undo_takes_labels_back_one_at_a_time_as_new_rows(drop: DataDrop) -> None:
    image = png_bytes((40, 30))
    digest = sha256_bytes(image)
    drop.write(image, label_for(image, "functional"))
    drop.write(image, label_for(image, "defective"))
    first = drop.undo(digest, "carol")
    assert first is not None and (first.label, first.previous, first.source, first.who) == (
        "functional", "defective", UNDO, "carol",
    )  # fmt: skip
    assert files(drop.root) == [f"functional/{digest}.png"] and drop.current() == {digest: "functional"}
    second = drop.undo(digest, "carol")
    assert second is not None and (second.label, second.previous) == (UNLABELLED, "functional")
    assert files(drop.root) == [] and drop.current() == {} and drop.label_of(digest) is None
    assert drop.undo(digest, "carol") is None  # nothing left to take back
    assert [row["label"] for row in manifest(drop.root)] == ["functional", "defective", "functional", UNLABELLED]
    assert drop.undo("0" * 64, "carol") is None  # never labelled


def test_not_a_valid_image_leaves_the_class_folders_and_an_undo_brings_it_back(drop: DataDrop) -> None:
    image = png_bytes((40, 30))
    digest = sha256_bytes(image)
    drop.write(image, label_for(image, "defective"))
    assert drop.write(image, label_for(image, INVALID)) == drop.root / MANIFEST
    assert files(drop.root) == [f"{INVALID_FOLDER}/{digest}.png"]  # a dot folder: training never reads it
    assert drop.current() == {digest: INVALID}
    restored = drop.undo(digest, "ann")
    assert restored is not None and restored.label == "defective"
    assert files(drop.root) == [f"defective/{digest}.png"] and (drop.root / "defective" / f"{digest}.png").read_bytes()


def test_a_restart_repairs_what_a_crash_left_and_loses_no_acknowledged_label(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    drop = DataDrop(root, CLASSES)
    kept, relabelled, unacknowledged = png_bytes((40, 30)), png_bytes((41, 30)), png_bytes((42, 30))
    drop.write(kept, label_for(kept, "functional"))
    drop.write(relabelled, label_for(relabelled, "functional"))
    drop.write(relabelled, label_for(relabelled, "defective"))
    rows = manifest(root)
    # What kills between a write's steps leave: the old copy of a relabel (row written, old file not yet
    # removed), an image written before its row, an atomic write's temp file, a torn last line.
    (root / "functional" / f"{sha256_bytes(relabelled)}.png").write_bytes(relabelled)
    (root / "defective" / f"{sha256_bytes(unacknowledged)}.png").write_bytes(unacknowledged)
    (root / "defective" / ".x.png.tmp").write_bytes(b"half")
    with open(root / MANIFEST, "ab") as handle:
        handle.write(b'{"image_sha256": "ab')
    again = DataDrop(root, CLASSES)
    assert manifest(root) == rows and again.current() == drop.current()
    assert files(root) == sorted([f"functional/{sha256_bytes(kept)}.png", f"defective/{sha256_bytes(relabelled)}.png"])
    # The page shows the unacknowledged image again; labelling it now is one row, the others none.
    again.write(unacknowledged, label_for(unacknowledged, "defective"))
    again.write(kept, label_for(kept, "functional"))
    assert len(manifest(root)) == len(rows) + 1


def test_a_failed_write_leaves_neither_file_nor_row(drop: DataDrop, monkeypatch: pytest.MonkeyPatch) -> None:
    image = png_bytes((40, 30))

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        drop.write(image, label_for(image, "defective"))
    monkeypatch.undo()
    assert files(drop.root) == [] and (drop.root / MANIFEST).read_bytes() == b"" and drop.current() == {}


def test_count_since_counts_images_whose_label_changed_since_the_marker(drop: DataDrop) -> None:
    a, b, c = (png_bytes((40 + i, 30)) for i in range(3))
    assert drop.ingested() is None and drop.count_since(None) == 0
    drop.write(a, label_for(a, "functional"))
    drop.write(b, label_for(b, "defective"))
    drop.write(b, label_for(b, "functional"))  # a relabel before ingest: still one image
    assert drop.count_since(None) == 2
    marker = drop.mark_ingested()
    assert marker == "3" and drop.ingested() == "3" and drop.count_since(marker) == 0
    drop.write(c, label_for(c, INVALID, source=LABEL_STUDIO))
    drop.write(a, label_for(a, "defective"))
    drop.undo(sha256_bytes(a), "ann")  # taken back: no change since the marker
    assert drop.count_since(marker) == 1 and drop.count_since(None) == 3
    with pytest.raises(DataError, match="ingest marker '99'"):
        drop.count_since("99")


@pytest.mark.parametrize(
    ("image", "label", "message"),
    [
        (png_bytes(), "cracked", r"unknown label 'cracked': use one of the classes \['functional', 'defective'\]"),
        (b"not an image at all", "functional", "not a readable image"),
        (png_bytes()[:40], "functional", "not a readable image"),
    ],
    ids=["unknown-class", "not-an-image", "truncated"],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(drop: DataDrop, image: bytes, label: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        drop.write(image, label_for(image, label))
    assert files(drop.root) == [] and drop.rows() == []


def test_a_format_training_cannot_read_or_a_wrong_hash_is_refused(drop: DataDrop) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PPM")
    ppm = buffer.getvalue()
    with pytest.raises(DataError, match="PPM images are not read by training"):
        drop.write(ppm, label_for(ppm, "functional"))
    image = png_bytes()
    with pytest.raises(DataError, match="is not the image's sha256"):
        drop.write(image, label_for(png_bytes((9, 9)), "functional"))
    with pytest.raises(DataError, match="clash with the drop's reserved labels"):
        DataDrop(drop.root, ["functional", INVALID])
    assert {f".{extension}" for extension in FORMATS.values()} <= IMAGE_SUFFIXES


def test_writers_sharing_a_drop_keep_every_row_whole(tmp_path: Path) -> None:
    """Two drops on one folder (as two processes would: each its own file lock) and four threads each."""
    root = tmp_path / "drop"
    drops = [DataDrop(root, CLASSES), DataDrop(root, CLASSES)]
    images = [png_bytes((20 + i, 20)) for i in range(40)]

    def write(index: int) -> Path:
        image = images[index]
        return drops[index % 2].write(image, label_for(image, CLASSES[index % 2]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(len(images))))
    assert len(manifest(root)) == len(images)  # every line parses: none torn or interleaved
    assert DataDrop(root, CLASSES).current() == {sha256_bytes(image): CLASSES[i % 2] for i, image in enumerate(images)}
    assert drops[0].rows() == drops[1].rows()  # each reads what the other appended


def test_the_imagefolder_source_reads_the_drop_as_training_will(drop: DataDrop) -> None:
    """The layout is the data source's own: classes from the folders, invalid images and the manifest unseen."""
    from transferkit.config import DataParams
    from transferkit.data.sources import list_samples

    images = [png_bytes((40 + i, 30)) for i in range(3)]
    for image, name in zip(images, ["functional", "defective", INVALID], strict=True):
        drop.write(image, label_for(image, name))
    samples, classes = list_samples(DataParams(source="imagefolder", path=str(drop.root)))
    assert classes == ["defective", "functional"]
    assert [(sample.file, sample.label) for sample in samples] == sorted(
        [(f"{name}/{sha256_bytes(image)}.png", name) for image, name in zip(images[:2], classes[::-1], strict=True)]
    )
