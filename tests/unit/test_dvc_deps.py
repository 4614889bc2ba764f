"""dvc.yaml cannot miss code: every transferkit module a stage imports, directly or not, is a dep.

The closure is computed from the source with ``ast`` (imports inside functions count too), so a
new import shows up here before it can leave ``dvc repro`` saying "up to date" after an edit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
# Modules that only shape messages, never a stage's outputs; editing them must not retrain.
EXEMPT = {
    "src/transferkit/errors.py": "exception classes: the message text of a failure",
    "src/transferkit/reporting.py": "console and error printing",
}


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


def stage_commands() -> dict[str, str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage["cmd"].split("-m", 1)[1].strip() for name, stage in stages.items()}


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_stage_deps_cover_every_imported_module(stage: str) -> None:
    deps = [REPO / dep for dep in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]]
    files = closure(stage_commands()[stage])
    assert files, f"{stage}: no transferkit module found for its command"
    missing = sorted(
        path
        for file in files
        if (path := str(file.relative_to(REPO))) not in EXEMPT and not any(file.is_relative_to(dep) for dep in deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} imports these modules but does not list them in deps: {missing}"


def test_closure_follows_indirect_and_function_level_imports() -> None:
    files = {str(f.relative_to(REPO)) for f in closure("transferkit.stages.train")}
    # train -> training.feature_cache -> onnx_runtime (the ONNX Runtime session helper)
    assert "src/transferkit/onnx_runtime.py" in files
    assert "src/transferkit/export/onnx_export.py" in files
    assert "src/transferkit/serving/app.py" not in files
