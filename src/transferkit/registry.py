"""A model registry on local disk: numbered versions and an atomic production pointer.

    <root>/<name>/v<N>/        model.onnx, model_card.md, reliability.png, metrics.json, gate.json, lineage.json
    <root>/<name>/v<N>/<precision>/   model.onnx, model_card.md of a variant (e.g. int8), optional
    <root>/<name>/production.json   {"version": N, "history": [...]}  (written by rename)

A version directory appears only by renaming a fully written staging folder, and production
moves only by renaming a fully written pointer file, so a process killed mid-promotion never
leaves a half-written version visible as production. A file lock serialises writers (two flow
runs on one registry). The registry stays out of git (and out of DVC): every version's
lineage.json names the git commit, params and data hash that rebuild it, and `dvc add
models/registry && dvc push` backs it up where wanted.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from transferkit.errors import TransferkitError
from transferkit.io import read_json, write_json

VERSION_DIR = re.compile(r"^v(\d+)$")
POINTER = "production.json"
LINEAGE = "lineage.json"
METRICS = "metrics.json"
MODEL = "model.onnx"


class RegistryError(TransferkitError):
    """A registry operation cannot be done as asked."""


class Registry:
    def __init__(self, root: str | Path, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise RegistryError(f"registry name {name!r} must be letters, digits, '.', '_' or '-'")
        self.path = Path(root) / name
        self.name = name

    def _lock(self) -> FileLock:
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(self.path / ".lock", timeout=120)

    # --- reading ----------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Complete versions, oldest first (a version is complete once its lineage is written)."""
        if not self.path.is_dir():
            return []
        found = (VERSION_DIR.match(p.name) for p in self.path.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m and (self.path / m.group(0) / LINEAGE).is_file())

    def version_dir(self, version: int) -> Path:
        directory = self.path / f"v{version}"
        if version not in self.versions():
            known = ", ".join(f"v{v}" for v in self.versions()) or "none"
            raise RegistryError(f"{self.name} has no version v{version} (versions: {known})")
        return directory

    def _pointer(self) -> dict[str, Any]:
        file = self.path / POINTER
        return read_json(file) if file.is_file() else {"version": None, "history": []}

    def production(self) -> int | None:
        return self._pointer()["version"]

    def production_metrics(self) -> dict[str, Any] | None:
        version = self.production()
        return None if version is None else read_json(self.version_dir(version) / METRICS)

    def show(self, version: int) -> dict[str, Any]:
        directory = self.version_dir(version)
        return {
            "version": version,
            "production": version == self.production(),
            "path": str(directory),
            "lineage": read_json(directory / LINEAGE),
            "metrics": read_json(directory / METRICS),
            "variants": sorted(p.parent.name for p in directory.glob(f"*/{MODEL}")),
        }

    def model_path(self, version: int, variant: str | None = None) -> Path:
        """The version's model, or its ``variant`` (another precision of the same weights)."""
        directory = self.version_dir(version)
        path = directory / variant / MODEL if variant else directory / MODEL
        if not path.is_file():
            variants = ", ".join(self.show(version)["variants"]) or "none"
            raise RegistryError(f"{self.name} v{version} has no {variant} variant (variants: {variants})")
        return path

    # --- writing ----------------------------------------------------------------------------
    def register(self, files: dict[str, Path], lineage: dict[str, Any]) -> int:
        """Copy ``files`` (name in the version -> source) into a new version; returns its number.

        Names may hold one folder: ``int8/model.onnx`` is the version's int8 variant, the same
        weights at another precision, kept side by side with the main model.
        """
        if METRICS not in files:
            raise RegistryError(f"a version needs {METRICS}")
        missing = [str(p) for p in files.values() if not Path(p).is_file()]
        if missing:
            raise RegistryError(f"cannot register: missing {', '.join(missing)}; run the pipeline first")
        with self._lock():
            version = self._highest_dir() + 1
            staging = Path(tempfile.mkdtemp(dir=self.path, prefix=f".v{version}."))
            try:
                for name, source in files.items():
                    (staging / name).parent.mkdir(exist_ok=True)
                    shutil.copy2(source, staging / name)
                record = {
                    **lineage,
                    "version": version,
                    "parent_version": self.production(),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                write_json(staging / LINEAGE, record)
                staging.rename(self.path / f"v{version}")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return version

    def _highest_dir(self) -> int:
        """Highest v<N> folder, complete or not, so a number is never reused."""
        matches = (VERSION_DIR.match(p.name) for p in self.path.iterdir())
        return max((int(m.group(1)) for m in matches if m), default=0)

    def promote(self, version: int) -> None:
        with self._lock():
            self.version_dir(version)
            pointer = self._pointer()
            if pointer["version"] == version:
                return
            history = [*pointer["history"], version]
            write_json(self.path / POINTER, {"version": version, "history": history, "updated_at": _now()})

    def rollback(self) -> int:
        """Make the previous production version current again; returns it."""
        with self._lock():
            history = self._pointer()["history"]
            if len(history) < 2:
                raise RegistryError(f"{self.name} has no earlier production version to roll back to")
            previous = history[-2]
            self.version_dir(previous)
            write_json(self.path / POINTER, {"version": previous, "history": history[:-1], "updated_at": _now()})
        return previous


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
