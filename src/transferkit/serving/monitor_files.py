"""The monitor's two files: a rotated prediction log and a capped review queue of images.

Both are written by the monitor's one thread (serving/monitor.py), never by a request, and both
are bounded: in bytes (and images), and by a free-disk margin below which nothing is written, so
monitoring can never be what fills a disk. A failed write raises; the monitor counts and logs it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from PIL import Image

from transferkit.io import atomic_write

LOG_BACKUPS = 2  # predictions.jsonl plus .1 and .2: the cap is shared by the three
SIDECAR = ".json"
LABELLED = "labelled"  # review/labelled/: entries the review page labelled, kept so an undo can bring them back
UNDO_DEPTH = 100  # labelled entries kept, newest first


def check_free_space(folder: Path, needed: int, margin: int) -> None:
    """Raise ENOSPC when writing ``needed`` bytes would leave under ``margin`` free on ``folder``'s disk."""
    free = shutil.disk_usage(folder).free
    if free - needed < margin:
        raise OSError(errno.ENOSPC, f"{free:,} bytes free, keeping {margin:,} free (monitor_min_free_bytes)")


class _RaisingRotatingHandler(RotatingFileHandler):
    """logging's handlers print their own failures to stderr and carry on; the monitor must count a
    failed write, so this one lets the error out of ``emit``."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # called inside emit's except block: re-raises the write's error


class PredictionLog:
    """JSON lines, one per classified image, rotated by the standard library's RotatingFileHandler:
    the current file plus ``LOG_BACKUPS`` old ones, each at most a third of ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, min_free_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._file_bytes = max_bytes // (LOG_BACKUPS + 1)
        self._handler: _RaisingRotatingHandler | None = None  # opened on the first write (may fail, counted)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"))
        if len(line) + 1 > self._file_bytes:
            raise ValueError(f"a {len(line):,}-byte log line is over the per-file cap of {self._file_bytes:,} bytes")
        if self._handler is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = _RaisingRotatingHandler(
                self.path, maxBytes=self._file_bytes, backupCount=LOG_BACKUPS, encoding="utf-8", delay=True
            )
        check_free_space(self.path.parent, len(line) + 1, self.min_free_bytes)
        self._handler.emit(logging.makeLogRecord({"msg": line}))

    def files(self) -> list[Path]:
        return [self.path, *(self.path.with_name(f"{self.path.name}.{n}") for n in range(1, LOG_BACKUPS + 1))]

    def size(self) -> int:
        """Bytes on disk, rotated files included."""
        return sum(path.stat().st_size for path in self.files() if path.is_file())

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()


@dataclass(frozen=True)
class _Entry:
    stem: str
    files: tuple[Path, ...]
    size: int


def _extension(payload: bytes) -> str:
    """The image's own format as a file extension (the bytes are kept as they came)."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            kind = (image.format or "bin").lower()
    except Exception:  # PIL raises several kinds for what it cannot identify
        kind = "bin"
    return {"jpeg": "jpg", "tiff": "tif"}.get(kind, kind)


class ReviewQueue:
    """A folder of images a person should look at: ``<stem>.<ext>`` (the bytes as sent) and
    ``<stem>.json`` (the model's outputs), ``stem`` = UTC time + content hash, so names sort
    oldest first and never collide. Over ``max_images`` or ``max_bytes`` the oldest go first.

    The sidecar is written after its image, each atomically, so a sidecar always has its image;
    an image left without one (a crash between the two) is removed on the next start.

    The monitor thread adds and the review page (serving/review.py) takes: a labelled entry moves
    to ``labelled/`` (the last ``UNDO_DEPTH`` stay there, so an undo can put one back). One lock
    keeps the two apart.
    """

    def __init__(self, folder: Path, max_images: int, max_bytes: int, min_free_bytes: int) -> None:
        self.folder = folder
        self.labelled = folder / LABELLED
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._entries: deque[_Entry] = deque()
        self.bytes = 0
        self._scanned = False
        self._last_us = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._entries)

    def _scan(self) -> None:
        """Take over what an earlier run left (oldest first), dropping incomplete entries and temp files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries.clear()
        self.bytes = 0
        groups: dict[str, list[Path]] = {}
        for path in self.folder.iterdir():
            if path.name.startswith("."):  # an atomic write's temp file, left by a kill
                path.unlink(missing_ok=True)
            elif path.is_file():
                groups.setdefault(path.name.split(".", 1)[0], []).append(path)
        for stem in sorted(groups):
            files = tuple(sorted(groups[stem]))
            if not any(path.suffix == SIDECAR for path in files) or len(files) != 2:
                for path in files:
                    path.unlink(missing_ok=True)
                continue
            self._entries.append(_Entry(stem, files, sum(path.stat().st_size for path in files)))
            self.bytes += self._entries[-1].size
        self._scanned = True
        self._evict(0)

    def _evict(self, incoming: int) -> None:
        """Drop the oldest until one more entry of ``incoming`` bytes fits both caps."""
        while self._entries and (
            len(self._entries) + (incoming > 0) > self.max_images or self.bytes + incoming > self.max_bytes
        ):
            oldest = self._entries.popleft()
            self.bytes -= oldest.size
            for path in oldest.files:
                path.unlink(missing_ok=True)

    def _stem(self, digest: str) -> str:
        micros = max(time.time_ns() // 1000, self._last_us + 1)  # strictly increasing: names sort in order
        self._last_us = micros
        stamp = datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y%m%dT%H%M%S_%fZ")
        return f"{stamp}-{digest[:16]}"

    def add(self, payload: bytes, outputs: dict[str, Any]) -> Path:
        """Queue one image with its outputs (the sidecar); the path of the saved image."""
        with self._lock:
            if not self._scanned:
                self._scan()
            digest = hashlib.sha256(payload).hexdigest()
            stem = self._stem(digest)
            image = self.folder / f"{stem}.{_extension(payload)}"
            sidecar_bytes = json.dumps({**outputs, "image": image.name, "sha256": digest}, indent=1).encode()
            size = len(payload) + len(sidecar_bytes)
            if size > self.max_bytes:
                raise ValueError(f"a {size:,}-byte entry is over the review queue's {self.max_bytes:,}-byte cap")
            self._evict(size)
            check_free_space(self.folder, size, self.min_free_bytes)
            sidecar = self.folder / f"{stem}{SIDECAR}"
            try:
                with atomic_write(image) as handle:
                    handle.write(payload)
                with atomic_write(sidecar) as handle:
                    handle.write(sidecar_bytes)
            except BaseException:
                image.unlink(missing_ok=True)
                raise
            self._entries.append(_Entry(stem, (image, sidecar), size))
            self.bytes += size
            return image

    # The review page's side ------------------------------------------------------------------

    def _ready(self) -> None:
        """Raise FileNotFoundError when the folder is gone (deleted under the server): the entries are
        forgotten then, and the next image sent to review makes the folder again."""
        if self._scanned and not self.folder.is_dir():
            self._entries.clear()
            self.bytes = 0
            self._scanned = False
            raise FileNotFoundError(errno.ENOENT, "the review queue folder is gone", str(self.folder))
        if not self._scanned:
            self._scan()

    def remaining(self) -> int:
        """Entries waiting for a person (FileNotFoundError when the folder is gone)."""
        with self._lock:
            self._ready()
            return self.count

    def next_after(self, after: str | None) -> tuple[str, bytes, dict[str, Any]] | None:
        """The oldest entry whose stem sorts after ``after`` (None: the oldest): its stem, image bytes
        and sidecar. An entry whose files vanished is forgotten on the way."""
        with self._lock:
            self._ready()
            for entry in list(self._entries):
                if after is not None and entry.stem <= after:
                    continue
                read = self._read(entry)
                if read is not None:
                    return entry.stem, *read
        return None

    def get(self, stem: str) -> tuple[bytes, dict[str, Any]] | None:
        """The queued entry ``stem``'s image bytes and sidecar (None: not in the queue)."""
        with self._lock:
            self._ready()
            entry = next((entry for entry in self._entries if entry.stem == stem), None)
            return None if entry is None else self._read(entry)

    def labelled_sidecar(self, stem: str) -> dict[str, Any] | None:
        """The sidecar of ``stem`` if the review page labelled it recently (kept for undo), else None."""
        path = self.labelled / f"{stem}{SIDECAR}"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def take(self, stem: str) -> bool:
        """Move a labelled entry out of the queue into ``labelled/``; False when it is no longer queued
        (taken already, or evicted)."""
        with self._lock:
            self._ready()
            entry = next((entry for entry in self._entries if entry.stem == stem), None)
            if entry is None:
                return False
            self.labelled.mkdir(exist_ok=True)
            for path in sorted(entry.files, key=lambda path: path.suffix != SIDECAR):  # sidecar first
                moved = self.labelled / path.name
                os.replace(path, moved)
                os.utime(moved)  # labelled/ is pruned by when entries arrived there
            self._entries.remove(entry)
            self.bytes -= entry.size
            self._prune_labelled()
            return True

    def put_back(self, stem: str) -> bool:
        """Return an entry from ``labelled/`` to the queue (an undo); False when it is not there."""
        with self._lock:
            self._ready()
            files = sorted(self.labelled.glob(f"{stem}.*"), key=lambda path: path.suffix == SIDECAR)  # image first
            if len(files) != 2:
                return False
            restored = tuple(self.folder / path.name for path in files)
            for path, target in zip(files, restored, strict=True):
                os.replace(path, target)
            entry = _Entry(stem, tuple(sorted(restored)), sum(path.stat().st_size for path in restored))
            ordered = sorted([*self._entries, entry], key=lambda queued: queued.stem)
            self._entries = deque(ordered)
            self.bytes += entry.size
            self._evict(0)
            return True

    def _read(self, entry: _Entry) -> tuple[bytes, dict[str, Any]] | None:
        image = next(path for path in entry.files if path.suffix != SIDECAR)
        try:
            sidecar = json.loads((self.folder / f"{entry.stem}{SIDECAR}").read_text())
            return image.read_bytes(), sidecar
        except FileNotFoundError:  # removed by hand: forget it
            self._entries.remove(entry)
            self.bytes -= entry.size
            return None

    def _prune_labelled(self) -> None:
        sidecars = sorted(self.labelled.glob(f"*{SIDECAR}"), key=lambda path: path.stat().st_mtime_ns, reverse=True)
        for sidecar in sidecars[UNDO_DEPTH:]:
            for path in self.labelled.glob(f"{sidecar.stem}.*"):
                path.unlink(missing_ok=True)
