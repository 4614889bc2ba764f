"""The local model registry: versions, atomic production pointer, rollback, concurrent writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.helpers import run_tool
from transferkit.registry import Registry, RegistryError


def _candidate(tmp_path: Path, accuracy: float) -> dict[str, Path]:
    folder = tmp_path / f"candidate-{accuracy}"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(f"model {accuracy}".encode())
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": accuracy - 0.05}))
    return {"model.onnx": folder / "model.onnx", "metrics.json": folder / "metrics.json"}


def test_register_promote_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry", "cells")
    assert registry.versions() == [] and registry.production() is None
    v1 = registry.register(_candidate(tmp_path, 0.90), {"git_commit": "abc"})
    registry.promote(v1)
    v2 = registry.register(_candidate(tmp_path, 0.91), {"git_commit": "def"})
    assert (v1, v2) == (1, 2) and registry.production() == 1  # registering does not promote
    registry.promote(v2)
    assert registry.production_metrics()["accuracy"] == 0.91
    shown = registry.show(2)
    assert shown["production"] and shown["lineage"]["parent_version"] == 1 and shown["lineage"]["git_commit"] == "def"
    assert registry.rollback() == 1 and registry.production() == 1
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback()


def test_half_written_version_is_never_visible(tmp_path: Path) -> None:
    registry = Registry(tmp_path, "cells")
    registry.promote(registry.register(_candidate(tmp_path, 0.9), {}))
    (registry.path / "v2").mkdir()  # killed mid-copy: files but no lineage
    (registry.path / "v2" / "model.onnx").write_bytes(b"partial")
    assert registry.versions() == [1]
    with pytest.raises(RegistryError, match="has no version v2"):
        registry.promote(2)
    assert registry.register(_candidate(tmp_path, 0.95), {}) == 3  # the broken number is not reused
    assert registry.production() == 1


def test_missing_files_and_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="letters, digits"):
        Registry(tmp_path, "../escape")
    registry = Registry(tmp_path, "cells")
    with pytest.raises(RegistryError, match="run the pipeline first"):
        registry.register({"metrics.json": tmp_path / "nope.json"}, {})


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path, "cells")
    candidates = [_candidate(tmp_path, 0.80 + i / 100) for i in range(6)]
    threads = [threading.Thread(target=registry.register, args=(c, {})) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.versions() == [1, 2, 3, 4, 5, 6]


def test_registry_cli(tmp_path: Path) -> None:
    registry = Registry(tmp_path, "cells")
    for accuracy in (0.9, 0.92):
        registry.promote(registry.register(_candidate(tmp_path, accuracy), {"git_commit": "0123456789abcdef"}))
    base = ["transferkit", "registry"]
    options = ["--name", "cells", "--root", str(tmp_path)]
    listing = run_tool([*base, "list", *options], tmp_path).stderr
    assert "* v2" in listing and "  v1" in listing
    assert "production is now v1" in run_tool([*base, "rollback", *options], tmp_path).stderr
    assert '"production": true' in run_tool([*base, "show", "1", *options], tmp_path).stdout
    failed = run_tool([*base, "promote", "7", *options], tmp_path, check=False)
    assert failed.returncode == 2 and "has no version v7" in failed.stderr
