"""dvc.yaml cannot miss code: every transferkit module a stage imports, directly or not, is a dep.

The closure is computed from the source with ``ast`` (imports inside functions count too), so a
new import shows up here before it can leave ``dvc repro`` saying "up to date" after an edit.
"""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import REPO, closure

# Modules that only shape messages, never a stage's outputs; editing them must not retrain.
EXEMPT = {
    "src/transferkit/errors.py": "exception classes: the message text of a failure",
    "src/transferkit/reporting.py": "console and error printing",
}


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
    # train -> training.fit -> training.feature_cache -> onnx_graph / onnx_runtime (tracing, sessions)
    assert {"src/transferkit/onnx_graph.py", "src/transferkit/onnx_runtime.py"} <= files
    # the exporter sits above training: editing it must not retrain the model
    assert not any(file.startswith("src/transferkit/export/") for file in files)
    assert "src/transferkit/serving/app.py" not in files
