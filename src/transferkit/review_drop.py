"""Where a person's labels land: an ImageFolder data drop plus an append-only manifest.

``<root>/<class>/<sha256>.<ext>`` holds each labelled image (its bytes as they came, named by
content, so the same image can never be two files) and ``<root>/manifest.jsonl`` one JSON line
per label: who, when, the model's version, decision and reason, where the label came from, and
the label it replaced. The folders are what training reads (DVC versions the whole root); the
manifest is the truth they are rebuilt from, so the history of every image survives a relabel.

The review page, ``transferkit review import`` and the label-issue finder all write here; the
retraining loop reads ``current()`` and ``count_since()``. Every step is safe to repeat: a
write is an atomic file, then one fsync'd manifest line (the commit point), then the old copy's
removal; opening the drop finishes or rolls back whatever a crash interrupted, and writing the
same label again is a no-op. So a server restarted in the middle of a review loses nothing and
duplicates nothing. Writers in several processes take an exclusive lock on the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from PIL import Image

from transferkit.errors import DataError
from transferkit.io import atomic_write, sha256_bytes, write_json

INVALID = "not a valid image"  # a label: the image is no cell at all; kept out of the class folders
UNLABELLED = "(unlabelled)"  # what an undo of an image's only label leaves (a manifest row, no file)
RESERVED = (INVALID, UNLABELLED)
MANIFEST = "manifest.jsonl"
INGESTED = "ingested.json"  # the retraining loop's marker: how many manifest rows a data version holds
INVALID_FOLDER = ".invalid"  # invalid images' bytes, so an undo can bring them back; ImageFolder skips dot folders
REVIEW_PAGE, LABEL_STUDIO, LABEL_SUSPECTED, UNDO = "review page", "label studio", "label suspected", "undo"
# Pillow's format name -> the extension the ImageFolder source reads (data/sources.py IMAGE_SUFFIXES).
FORMATS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp", "GIF": "gif"}


def utc_now() -> str:
    """A label's ``when``: ISO 8601 in UTC, to the microsecond."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Label:
    """One manifest row: ``label`` is a class name, ``INVALID`` or (after an undo) ``UNLABELLED``;
    ``previous`` is the label it replaced (the drop fills it in), None for an image's first."""

    image_sha256: str
    label: str
    who: str
    when: str
    model_version: str | None
    model_decision: str | None
    model_reason: str | None
    source: str
    previous: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Label:
        return cls(**json.loads(line))


def image_extension(image: bytes) -> str:
    """The extension of ``image``'s own format; a DataError for bytes that are no readable image or
    a format the ImageFolder source would not read."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            kind = opened.format or ""
            opened.verify()
    except Exception:  # Pillow raises several kinds for what it cannot read
        raise DataError(
            f"these {len(image):,} bytes are not a readable image; label the image file itself (PNG, JPEG, ...)"
        ) from None
    if kind not in FORMATS:
        raise DataError(f"{kind} images are not read by training; convert to one of {', '.join(FORMATS)}")
    return FORMATS[kind]


class DataDrop:
    """The labels of ``root`` for a model with ``class_names``; safe to share between threads."""

    def __init__(self, root: Path, class_names: list[str]) -> None:
        clashing = sorted(set(class_names) & set(RESERVED))
        if clashing:
            raise DataError(f"class names {clashing} clash with the drop's reserved labels; rename the classes")
        if not class_names:
            raise DataError("a data drop needs the model's class names; none were given")
        self.root = root
        self.class_names = list(class_names)
        self.manifest = root / MANIFEST
        self._lock = threading.Lock()
        self._rows: list[Label] = []
        self._read = 0  # manifest bytes replayed into _rows
        with self._locked() as handle:
            self._drop_torn_tail(handle)
            self._refresh()
            self._reconcile()

    # Reading -----------------------------------------------------------------------------------

    def rows(self) -> list[Label]:
        """Every manifest row, oldest first (re-read if another process appended)."""
        with self._lock:
            self._refresh()
            return list(self._rows)

    def current(self) -> dict[str, str]:
        """sha256 -> its label now (a class name or INVALID), replaying the manifest."""
        return {sha: label for sha, label in _replay(self.rows()).items() if label != UNLABELLED}

    def label_of(self, image_sha256: str) -> Label | None:
        """The manifest row that gave the image its label now (None: never labelled, or undone to none)."""
        for row in reversed(self.rows()):
            if row.image_sha256 == image_sha256:
                return None if row.label == UNLABELLED else row
        return None

    def marker(self) -> str:
        """Where the manifest stands now, for ``count_since``: its row count."""
        return str(len(self.rows()))

    def count_since(self, marker: str | None) -> int:
        """How many images have a label now that differs from theirs at ``marker`` (None: the empty
        drop): new labels and relabels count once per image, a label undone again counts nothing."""
        rows = self.rows()
        start = _position(marker, len(rows))
        before, now = _replay(rows[:start]), _replay(rows)
        return sum(1 for sha, label in now.items() if before.get(sha, UNLABELLED) != label)

    def ingested(self) -> str | None:
        """The marker the retraining loop left with ``mark_ingested`` (None before the first ingest)."""
        try:
            return str(json.loads((self.root / INGESTED).read_text())["rows"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{self.root / INGESTED} is unreadable ({error}); delete it to count every label") from None

    def mark_ingested(self) -> str:
        """Record that a data version now holds every row so far (before ``dvc add``, so the version
        carries its own marker); the marker written."""
        marker = self.marker()
        write_json(self.root / INGESTED, {"rows": int(marker), "when": utc_now()})
        return marker

    # Writing -----------------------------------------------------------------------------------

    def write(self, image: bytes, label: Label) -> Path:
        """Give ``image`` the label ``label.label``: its file in that class's folder (INVALID: out of
        the class folders), one manifest row naming the label it replaced. The same label again is a
        no-op that only repairs the files. The image's path (INVALID: the manifest, where it now
        lives)."""
        self._check_label(label.label)
        digest = sha256_bytes(image)
        if label.image_sha256 != digest:
            raise DataError(f"label.image_sha256 {label.image_sha256[:16]}… is not the image's sha256 {digest[:16]}…")
        extension = image_extension(image)
        with self._locked():
            self._refresh()
            previous = _replay(self._rows).get(digest, UNLABELLED)
            target = self._place(digest, label.label, extension, image)
            if previous != label.label:
                self._append(dataclasses.replace(label, previous=None if previous == UNLABELLED else previous))
            self._remove_others(digest, target)
        return self.manifest if label.label == INVALID else target

    def undo(self, image_sha256: str, who: str) -> Label | None:
        """Take back the image's latest label: the one before it comes back (or none), as a new row
        (``source`` "undo", ``previous`` the label taken back). None when there is nothing to undo.
        Bringing back a class label needs the image's bytes in the drop: an image whose last label
        left it unlabelled has none, and is a DataError."""
        with self._locked():
            self._refresh()
            history = _stack(self._rows, image_sha256)
            if not history:
                return None
            undone, restored = history[-1], (history[-2] if len(history) > 1 else UNLABELLED)
            existing = next(iter(self._copies(image_sha256)), None)
            if restored != UNLABELLED and existing is None:
                raise DataError(f"cannot undo the label of {image_sha256[:16]}…: its image is no longer in {self.root}")
            latest = next(row for row in reversed(self._rows) if row.image_sha256 == image_sha256)
            row = dataclasses.replace(latest, label=restored, who=who, when=utc_now(), source=UNDO, previous=undone)
            target = None
            if existing is not None and restored != UNLABELLED:
                target = self._place(image_sha256, restored, existing.suffix[1:], existing.read_bytes())
            self._append(row)
            self._remove_others(image_sha256, target)
            return row

    # Inside the lock ---------------------------------------------------------------------------

    def _check_label(self, label: str) -> None:
        if label not in self.class_names and label != INVALID:
            raise DataError(f"unknown label {label!r}: use one of the classes {self.class_names} or {INVALID!r}")

    def _folder(self, label: str) -> Path:
        return self.root / (INVALID_FOLDER if label == INVALID else label)

    def _folders(self) -> list[Path]:
        """Every folder an image of the drop can lie in (the classes of the manifest included)."""
        labels = {row.label for row in self._rows} | set(self.class_names) | {INVALID}
        return [self._folder(label) for label in sorted(labels - {UNLABELLED})]

    def _copies(self, digest: str) -> list[Path]:
        """The image's files in the drop (one, or two between a relabel's steps): looked up by name,
        never by listing a folder, so a write costs the same in a drop of any size."""
        return [
            path
            for folder in self._folders()
            for extension in sorted(set(FORMATS.values()))
            if (path := folder / f"{digest}.{extension}").is_file()
        ]

    def _place(self, digest: str, label: str, extension: str, image: bytes) -> Path:
        target = self._folder(label) / f"{digest}.{extension}"
        if not (target.is_file() and target.stat().st_size == len(image)):
            with atomic_write(target) as handle:
                handle.write(image)
        return target

    def _remove_others(self, digest: str, keep: Path | None) -> None:
        """Every other copy of the image goes (the old class's), and so does a class folder it leaves
        empty: the ImageFolder source refuses an empty class."""
        for path in self._copies(digest):
            if path != keep:
                path.unlink()
                _remove_if_empty(path.parent)

    def _append(self, row: Label) -> None:
        with open(self.manifest, "ab") as handle:
            handle.write((row.to_json() + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        self._refresh()

    def _refresh(self) -> None:
        """Replay what was appended since the last read (by this process or another)."""
        try:
            with open(self.manifest, "rb") as handle:
                handle.seek(self._read)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line (a crash) waits for _drop_torn_tail
        for number, line in enumerate(complete.decode().splitlines(), start=len(self._rows) + 1):
            try:
                self._rows.append(Label.from_json(line))
            except (ValueError, TypeError) as error:
                message = f"{self.manifest} row {number} is not a label ({error}); restore the file from git/DVC"
                raise DataError(message) from None
        self._read += len(complete)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        """This thread alone, and this process alone among the drop's writers (flock on the manifest)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.manifest, "ab") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield handle
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _drop_torn_tail(self, handle: IO[bytes]) -> None:
        """A crash in the middle of an append leaves a line without its newline: cut it off, or the
        next row would be glued to it. Its label was never acknowledged, so nothing is lost."""
        data = self.manifest.read_bytes()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)

    def _reconcile(self) -> None:
        """Make the folders say what the manifest says: a crash between a write's steps can leave a
        temp file, an image written before its row, or the old class's copy after a relabel."""
        now = _replay(self._rows)
        for folder in self._folders():
            with contextlib.suppress(FileNotFoundError):
                for path in folder.iterdir():
                    label = now.get(path.name.split(".", 1)[0])
                    if path.name.startswith(".") or label in (None, UNLABELLED) or self._folder(label) != folder:
                        path.unlink()
            _remove_if_empty(folder)


def _replay(rows: list[Label]) -> dict[str, str]:
    """sha256 -> label after ``rows`` (UNLABELLED where an undo took every label back)."""
    return {row.image_sha256: row.label for row in rows}


def _stack(rows: list[Label], image_sha256: str) -> list[str]:
    """The image's labels that still stand, oldest first: a label pushes, an undo pops."""
    history: list[str] = []
    for row in rows:
        if row.image_sha256 != image_sha256:
            continue
        if row.source == UNDO:
            if history:
                history.pop()
        else:
            history.append(row.label)
    return history


def _position(marker: str | None, rows: int) -> int:
    if marker is None:
        return 0
    if not marker.isdigit() or int(marker) > rows:
        raise DataError(f"ingest marker {marker!r} is not a row count of this manifest (0..{rows}); re-ingest")
    return int(marker)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # missing, or not empty: it stays
        folder.rmdir()
