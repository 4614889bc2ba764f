"""Helpers the tests share: the real params file shrunk for speed, a throw-away project copy, and
running the project's own command-line tools. Imported by tests and by conftest.py's fixtures.

Tests never invent a config: they load the project's params.yaml and shrink it (small images,
few epochs), as the lightning-hydra-template does.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from transferkit import orchestration
from transferkit.config import Params, parse_params, set_dotted

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
SUBSET_SIZE = 160

SHRINK: dict[str, Any] = {
    "data.image_size": 64,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.num_threads": 2,
    "gate.min_accuracy": 0.0,
    "gate.min_macro_f1": 0.0,
    "gate.max_slice_gap": 1.0,
}


def shrunk_raw(**overrides: Any) -> dict[str, Any]:
    """The repository's params.yaml as a dict, shrunk, with dotted ``overrides`` (a__b -> a.b)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in {**SHRINK, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_dotted(raw, dotted, value)
    return raw


def shrunk_params(root: Path, **overrides: Any) -> Params:
    """Validated shrunk params whose paths all live under ``root``."""
    raw = shrunk_raw(**overrides)
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    raw["data"]["path"] = str(root / raw["data"]["path"])
    return parse_params(raw)


def tool_env() -> dict[str, str]:
    """The pipeline's subprocess environment, with unbuffered output for the logs."""
    return {**orchestration.tool_env(), "PYTHONUNBUFFERED": "1"}


def run_tool(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def make_project(tmp_path: Path, elpv_subset: Path) -> Path:
    """A throw-away copy of the project (git + DVC) with the ELPV subset and shrunk params."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "src"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):  # DVC's own ignores: .dvc/tmp (locks, run workspaces), cache
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    shutil.copytree(elpv_subset, root / "data" / "raw" / "elpv")
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_raw(), sort_keys=False))
    # the real repo's ignores (registry, feature cache, checkpoints); data belongs to DVC
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text() + "/data/raw/elpv\n")
    run_tool(["git", "init", "-q"], root)
    run_tool(["git", "add", "-A"], root)
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root)
    return root


def commit_tracked_data(root: Path) -> None:
    """`dvc add` the raw data and commit the pointer, as the README tells a user to."""
    run_tool(["dvc", "add", "data/raw/elpv"], root)
    run_tool(["git", "add", "-A"], root)
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "track data"], root)


def set_params(root: Path, **overrides: Any) -> None:
    """Edit the copied project's params.yaml in place (a__b -> a.b)."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key.replace("__", "."), value)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def module_file(name: str) -> Path | None:
    """The source file of a transferkit module or package (None for anything else)."""
    if name != "transferkit" and not name.startswith("transferkit."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path) -> set[str]:
    """Names of the modules ``file`` imports; ``from pkg import mod`` counts mod when it is a module."""
    package = ".".join(file.relative_to(SRC).with_suffix("").parts)
    if file.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(entry: str) -> set[Path]:
    """Every transferkit source file that importing ``entry`` loads, parent packages included."""
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            file = module_file(".".join(parts[:depth]))
            if file is not None and file not in seen:
                seen.add(file)
                pending.extend(imported_modules(file))
    return seen
