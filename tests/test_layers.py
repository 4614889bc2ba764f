"""Imports point down the layers: a module imports its own layer or lower ones, never higher.

The order (docs/architecture.md): foundations -> core -> library -> export -> stages ->
services -> entry points. Computed from the source with ``ast`` (imports inside functions
count too), so an upward import fails here, named, before it couples a low layer to a high one
(and, through dvc.yaml's deps, retrains the model when the exporter's messages change).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, SRC, imported_modules

# Each layer: the first component of the module name under transferkit.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"__init__", "errors", "io", "reporting", "config", "review_drop"}),
    (
        "core",
        {
            "preprocessing",
            "models",
            "contract",
            "onnx_runtime",
            "onnx_graph",
            "views",
            "inference",
            "decision",
            "heatmap",
            "ood",
        },
    ),
    ("library", {"data", "training", "evaluation"}),
    ("export", {"export"}),
    ("stages", {"stages"}),
    (
        "services",
        {
            "orchestration",
            "run_workspace",
            "registry",
            "dask_runner",
            "monitoring_events",
            "study",
            "tuning",
            "serving",
            "label_studio",
        },
    ),
    ("entry points", {"cli"}),
]
RANK = {component: rank for rank, (_, components) in enumerate(LAYERS) for component in components}


def component(file_or_module: str) -> str:
    """``training`` for transferkit.training.fit or src/transferkit/training/fit.py; ``__init__`` for the package."""
    parts = file_or_module.removesuffix(".py").replace("/", ".").split(".")
    parts = parts[parts.index("transferkit") + 1 :]
    return parts[0] if parts else "__init__"


def sources() -> list[str]:
    return sorted(str(f.relative_to(SRC)) for f in (SRC / "transferkit").rglob("*.py"))


def violations(source: str, names: set[str]) -> list[str]:
    """The imports among ``names`` (dotted, as ``imported_modules`` gives them) that run up from ``source``."""
    own = RANK[component(source)]
    found = []
    for name in sorted(n for n in names if n == "transferkit" or n.startswith("transferkit.")):
        target = RANK.get(component(name), own)  # a name outside the layer table is reported by the test above
        if target > own:
            found.append(f"{source} ({LAYERS[own][0]}) imports {name} ({LAYERS[target][0]})")
    return found


def upward_imports() -> list[str]:
    return [found for source in sources() for found in violations(source, imported_modules(SRC / source))]


def test_every_module_has_a_layer() -> None:
    missing = sorted({component(s) for s in sources()} - RANK.keys())
    assert not missing, f"add these to a layer in tests/test_layers.py and docs/architecture.md: {missing}"


def test_imports_only_point_down() -> None:
    found = upward_imports()
    assert not found, "imports that run up the layers:\n" + "\n".join(found)


def test_the_rule_names_an_upward_import_and_allows_a_downward_one() -> None:
    up = violations("transferkit/training/feature_cache.py", {"transferkit.export.onnx_export.trace_to_onnx"})
    assert up == [
        "transferkit/training/feature_cache.py (library) imports transferkit.export.onnx_export.trace_to_onnx (export)"
    ]
    assert violations("transferkit/export/onnx_export.py", {"transferkit.onnx_graph", "transferkit.errors"}) == []


@pytest.mark.parametrize("module", ["transferkit.contract", "transferkit.serving.app", "transferkit.cli"])
def test_readers_of_the_contract_run_without_torch(module: str) -> None:
    """The server, the CLI's start and anything reading the contract load neither torch nor the exporter."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transferkit.export') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"{module} loads {result.stdout.strip()}"
