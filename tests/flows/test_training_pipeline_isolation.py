"""Flow runs cannot leak into each other: each trains the committed params in its own worktree.

Against a real Prefect server (the session's test harness) and real DVC, on the shrunk project.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import REPO, commit_tracked_data, make_project, run_tool, tool_env
from transferkit.registry import Registry
from transferkit.run_workspace import RUNS_DIR

pytestmark = pytest.mark.slow
REGISTRY = "isolated"


@pytest.fixture
def committed(tmp_path: Path, elpv_subset: Path, harness) -> Path:
    root = make_project(tmp_path, elpv_subset, shared_dvc_cache=True)
    commit_tracked_data(root)
    return root


def _run(root: Path, overrides: dict | None = None):
    from flows.training_pipeline import TrainingRequest, training_pipeline

    request = TrainingRequest(project_dir=str(root), registry=REGISTRY, overrides=overrides or {})
    return training_pipeline(request, return_state=True)


def _clean(root: Path) -> None:
    assert run_tool(["git", "status", "--porcelain"], root).stdout == ""
    assert not list((root / RUNS_DIR).glob("*")), "a run workspace was left behind"


def test_rejected_overrides_do_not_stick(committed: Path) -> None:
    params_before = (committed / "params.yaml").read_bytes()
    rejected = _run(committed, {"train.strategy": "linear", "train.epochs": 1, "gate.min_accuracy": 0.999})
    assert rejected.is_failed() and "min_accuracy" in str(rejected.message)
    assert (committed / "params.yaml").read_bytes() == params_before
    _clean(committed)

    accepted = _run(committed)
    assert accepted.is_completed()
    lineage = Registry(committed / "models/registry", REGISTRY).show(1)["lineage"]
    assert lineage["overrides"] == {}  # the next run trains the committed params, not the rejected ones
    assert lineage["params"]["train"]["strategy"] == "finetune" and lineage["params"]["train"]["epochs"] == 2
    assert lineage["params"]["gate"]["min_accuracy"] == 0.0
    assert lineage["git_commit"] == run_tool(["git", "rev-parse", "HEAD"], committed).stdout.strip()
    assert (committed / "params.yaml").read_bytes() == params_before
    _clean(committed)


def test_simultaneous_runs_keep_their_own_overrides(committed: Path) -> None:
    tolerant = {"gate.max_regression": 1.0}  # both candidates may replace the other
    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(_run, committed, {**tolerant, "train.epochs": 1})
        other = pool.submit(_run, committed, {**tolerant, "train.seed": 7})
        states = [one.result(), other.result()]
    assert all(state.is_completed() for state in states)
    registry = Registry(committed / "models/registry", REGISTRY)
    assert registry.versions() == [1, 2]
    seen = {}
    for version in registry.versions():
        lineage = registry.show(version)["lineage"]
        seen[tuple(sorted(lineage["overrides"]))] = lineage["params"]["train"]
    epochs_run, seed_run = seen[("gate.max_regression", "train.epochs")], seen[("gate.max_regression", "train.seed")]
    assert epochs_run["epochs"] == 1 and epochs_run["seed"] == 0
    assert seed_run["seed"] == 7 and seed_run["epochs"] == 2
    _clean(committed)


def test_killed_run_leaves_nothing_behind(committed: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    script = (
        "from flows.training_pipeline import TrainingRequest, training_pipeline\n"
        f"training_pipeline(TrainingRequest(project_dir={str(committed)!r}, registry={REGISTRY!r}, "
        "overrides={'train.epochs': 3}))\n"
    )
    env = {**tool_env(), "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, start_new_session=True)
    runs = committed / RUNS_DIR
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/data/prepared")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the flow process and its dvc children
    process.wait()
    assert list(runs.glob("*.lock")), "the killed run's workspace should still be there"

    params_before = (committed / "params.yaml").read_bytes()
    assert _run(committed).is_completed()
    assert (committed / "params.yaml").read_bytes() == params_before
    assert Registry(committed / "models/registry", REGISTRY).production() == 1
    _clean(committed)


def test_int8_variant_is_registered_beside_the_model_and_served(committed: Path) -> None:
    from flows.training_pipeline import TrainingRequest, training_pipeline

    from transferkit.contract import read_metadata
    from transferkit.errors import ModelError
    from transferkit.serving.model_source import load_model, source_from
    from transferkit.serving.settings import load_settings

    # 40 test images, a barely trained model: one flip is 2.5 points (see tests/export/test_quantize.py)
    request = TrainingRequest(
        project_dir=str(committed),
        registry=REGISTRY,
        variants=["int8"],
        overrides={"export.max_accuracy_drop": 0.25},
    )
    training_pipeline(request)
    registry = Registry(committed / "models/registry", REGISTRY)
    shown = registry.show(1)
    assert shown["variants"] == ["int8"] and shown["lineage"]["precision"] == "fp32"
    assert read_metadata(registry.model_path(1, "int8"))["precision"] == "int8"
    assert read_metadata(registry.model_path(1))["precision"] == "fp32"

    root = str(committed / "models/registry")
    settings = load_settings(model=f"registry:{REGISTRY}", registry_root=root, variant="int8", device="cpu")
    served = load_model(source_from(settings), settings)
    assert served.version == "v1" and served.classifier.metadata["precision"] == "int8"
    missing = load_settings(model=f"registry:{REGISTRY}", registry_root=root, variant="fp16", device="cpu")
    with pytest.raises(ModelError, match=r"no fp16 variant \(variants: int8\)"):
        load_model(source_from(missing), missing)
    _clean(committed)
